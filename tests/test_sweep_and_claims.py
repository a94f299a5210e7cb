"""The learning-rate x epochs grid's jobs, cells and summary (``spire_pipeline.spire.sweep``),
and the markdown tables of the report. The claims are tested in ``test_claims.py``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import spire_pipeline.spire.sweep as sweep_mod
from spire_pipeline.spire.adaptation import adapt
from spire_pipeline.spire.claims import markdown_table
from spire_pipeline.spire.config import AdaptationConfig, PretrainingConfig, SweepConfig
from spire_pipeline.spire.federated import ClientData, pretrain
from spire_pipeline.spire.sweep import cell_table, choose, sweep_jobs, sweep_summary
from spire_pipeline.spire.training import ClientTrainingError

SIZE = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def pretrained():
    cfg = PretrainingConfig.model_validate(
        dict(
            backbone=dict(block_out_channels=[8, 16], norm_num_groups=4, image_size=SIZE),
            diffusion=dict(num_train_timesteps=100, sampler_steps=2),
            rounds=1,
            client_fraction=1.0,
            min_clients=1,
            local=dict(steps=1, batch_size=4),
        )
    )
    seen = [ClientData(f"seen_{k:02d}", images(8, k)) for k in range(2)]
    return {m: pretrain(m, cfg, seen, progress=False)[0] for m in ("spire", "fedavg")}


# ----------------------------------------------------------------------------- sweep_jobs


def test_sweep_jobs_one_per_cell_one_adaptation_per_lr(pretrained, monkeypatch) -> None:
    clients = [ClientData("unseen_00", images(10, 10)), ClientData("unseen_01", images(4, 11))]
    sweep = SweepConfig(methods=["spire", "bitfit"], learning_rates=[1e-3, 1e-2], epochs=[1, 2])
    adaptation = AdaptationConfig.model_validate({"local": {"steps": 50, "batch_size": 4}})
    calls = []

    def spy(method, pre, client, cfg, local=None, snapshot_steps=()):
        calls.append((method, client.client, local, list(snapshot_steps)))
        return adapt(method, pre, client, cfg, local=local, snapshot_steps=snapshot_steps)

    monkeypatch.setattr(sweep_mod, "adapt", spy)
    jobs, diverged = sweep_jobs(pretrained, clients, sweep, adaptation)
    assert diverged == []

    per_epoch = {c.client: math.ceil(c.num_samples / 4) for c in clients}  # 3 and 1
    # one adaptation per (method, client, lr), run to the largest epoch count
    assert len(calls) == 2 * 2 * 2
    for _method, client, local, snaps in calls:
        assert local.steps == 2 * per_epoch[client] and local.epochs is None
        assert local.lr == local.embedding_lr in sweep.learning_rates
        assert local.batch_size == 4
        assert snaps == [per_epoch[client], 2 * per_epoch[client]]
    # one job per (method, client, lr, epochs)
    cells = {(j.method, j.client, j.extra["lr"], j.extra["epochs"]) for j in jobs}
    assert len(jobs) == len(cells) == 2 * 2 * 2 * 2
    for j in jobs:
        lr, epochs = j.extra["lr"], j.extra["epochs"]
        assert j.phase == "sweep" and j.role == "unseen"
        assert j.extra["steps"] == epochs * per_epoch[j.client]
        assert j.source == f"sweep/{j.method}/{j.client}/{lr:g}/{epochs}"
        assert j.condition == (j.client if j.method == "spire" else None)
        assert np.isfinite(j.extra["final_loss"])
        assert j.bundle.info["steps"] == j.extra["steps"]
    assert len({j.sample_key for j in jobs}) == len(jobs)

    # a cell is exactly a run of that many epochs at that learning rate
    for method in ("spire", "bitfit"):
        (cell,) = [
            j
            for j in jobs
            if j.method == method
            and j.client == "unseen_00"
            and j.extra["lr"] == 1e-2
            and j.extra["epochs"] == 1
        ]
        local = adaptation.local.model_copy(update={"steps": 3, "lr": 1e-2, "embedding_lr": 1e-2})
        ref = adapt(method, pretrained, clients[0], adaptation, local=local).bundle.to_tensors()[0]
        got = cell.bundle.to_tensors()[0]
        assert set(got) == set(ref)
        assert all(torch.equal(got[k], ref[k]) for k in ref), method
        model, emb = cell.build()
        assert (emb is not None) == (method == "spire")


def test_sweep_survives_a_diverged_run_and_keeps_its_earlier_cells(pretrained, monkeypatch) -> None:
    clients = [ClientData("unseen_00", images(12, 10))]  # 3 steps per epoch at batch 4
    sweep = SweepConfig(methods=["bitfit"], learning_rates=[1e-3, 1e-2], epochs=[1, 2, 4])
    adaptation = AdaptationConfig.model_validate({"local": {"steps": 50, "batch_size": 4}})
    calls = []

    def diverge_at_lr_1e2(method, pre, client, cfg, local=None, snapshot_steps=()):
        calls.append((local.lr, local.steps, list(snapshot_steps)))
        if local.lr == 1e-2 and local.steps > 6:  # NaN at step 7: steps 0..6 completed
            raise ClientTrainingError(f"client {client.client}: loss is nan at local step 7", 7)
        return adapt(method, pre, client, cfg, local=local, snapshot_steps=snapshot_steps)

    monkeypatch.setattr(sweep_mod, "adapt", diverge_at_lr_1e2)
    jobs, diverged = sweep_jobs(pretrained, clients, sweep, adaptation)
    # the failed run is repeated up to its last snapshot before the failing step
    assert calls == [(1e-3, 12, [3, 6, 12]), (1e-2, 12, [3, 6, 12]), (1e-2, 6, [3, 6])]
    cells = sorted((j.extra["lr"], j.extra["epochs"]) for j in jobs)
    assert cells == [(1e-3, 1), (1e-3, 2), (1e-3, 4), (1e-2, 1), (1e-2, 2)]
    assert [(d["lr"], d["epochs"], d["steps"]) for d in diverged] == [(1e-2, 4, 12)]
    assert "nan" in diverged[0]["error"]
    # the kept cell is the model a plain run of that length gives
    (cell,) = [j for j in jobs if j.extra["lr"] == 1e-2 and j.extra["epochs"] == 2]
    local = adaptation.local.model_copy(update={"steps": 6, "lr": 1e-2, "embedding_lr": 1e-2})
    ref = adapt("bitfit", pretrained, clients[0], adaptation, local=local).bundle.to_tensors()[0]
    got = cell.bundle.to_tensors()[0]
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_a_cell_where_one_client_diverged_is_a_diverged_cell() -> None:
    """One of two clients diverged at bitfit 1e-3 x 2: the cell shows no KID, says "1/2
    diverged", is counted, and is never chosen (though its other client's KID is the best)."""
    table = sweep_table()
    one = (
        (table["method"] == "bitfit")
        & (table["lr"] == 1e-3)
        & (table["epochs"] == 2)
        & (table["client"] == "unseen_00")
    )
    table.loc[one, "kid_mean"] = np.nan
    table.loc[
        (table["method"] == "bitfit") & (table["lr"] == 1e-3) & (table["epochs"] == 2) & ~one,
        "kid_mean",
    ] = 0.01
    cells = cell_table(table).set_index(["method", "lr", "epochs"])
    cell = cells.loc[("bitfit", 1e-3, 2)]
    assert np.isnan(cell["kid_mean"]) and cell["status"] == "1/2 diverged"
    assert cell["diverged_clients"] == 1 and cell["clients"] == 2
    assert (cells.drop(index=("bitfit", 1e-3, 2))["status"] == "ok").all()
    s = sweep_summary(table).set_index("method")
    assert s.loc["bitfit", "diverged_cells"] == 1 and s.loc["spire", "diverged_cells"] == 0
    best = choose(cell_table(table)).set_index("method")
    assert (best.loc["bitfit", "lr"], best.loc["bitfit", "epochs"]) == (1e-2, 1)


def test_sweep_summary_counts_diverged_cells() -> None:
    table = sweep_table()
    table.loc[
        (table["method"] == "bitfit") & (table["lr"] == 1e-2) & (table["epochs"] == 2), "kid_mean"
    ] = np.nan
    s = sweep_summary(table).set_index("method")
    assert s.loc["bitfit", "diverged_cells"] == 1 and s.loc["spire", "diverged_cells"] == 0
    # bitfit's finite cell medians: 1.1, 0.9, 0.6
    assert s.loc["bitfit", "kid_worst"] == pytest.approx(1.1)
    assert s.loc["bitfit", "kid_median"] == pytest.approx(0.9)


# ----------------------------------------------------------------------------- sweep_summary


def sweep_table() -> pd.DataFrame:
    cells = {  # (method, lr, epochs): KID per client
        ("spire", 1e-3, 1): [0.10, 0.20],
        ("spire", 1e-3, 2): [0.12, 0.14],
        ("spire", 1e-2, 1): [0.20, 0.30],
        ("spire", 1e-2, 2): [0.18, 0.22],
        ("bitfit", 1e-3, 1): [1.0, 1.2],
        ("bitfit", 1e-3, 2): [0.8, 1.0],
        ("bitfit", 1e-2, 1): [0.5, 0.7],
        ("bitfit", 1e-2, 2): [2.0, 4.0],
    }
    return pd.DataFrame(
        [
            {"method": m, "lr": lr, "epochs": e, "client": f"unseen_{k:02d}", "kid_mean": v}
            for (m, lr, e), values in cells.items()
            for k, v in enumerate(values)
        ]
    )


def test_sweep_summary() -> None:
    s = sweep_summary(sweep_table())
    assert list(s["method"]) == ["spire", "bitfit"]  # by median KID
    s = s.set_index("method")
    # spire's cell medians: 0.15, 0.13, 0.25, 0.20
    assert s.loc["spire", "kid_median"] == pytest.approx(0.175)
    assert s.loc["spire", "kid_best"] == pytest.approx(0.13)
    assert s.loc["spire", "kid_worst"] == pytest.approx(0.25)
    assert s.loc["spire", "spread"] == pytest.approx(0.25 / 0.13)
    assert (s.loc["spire", "best_lr"], s.loc["spire", "best_epochs"]) == (1e-3, 2)
    # bitfit's: 1.1, 0.9, 0.6, 3.0
    assert s.loc["bitfit", "kid_median"] == pytest.approx(1.0)
    assert s.loc["bitfit", "kid_best"] == pytest.approx(0.6)
    assert s.loc["bitfit", "kid_worst"] == pytest.approx(3.0)
    assert s.loc["bitfit", "spread"] == pytest.approx(5.0)
    assert (s.loc["bitfit", "best_lr"], s.loc["bitfit", "best_epochs"]) == (1e-2, 1)


# ----------------------------------------------------------------------------- markdown_table


def test_markdown_table() -> None:
    df = pd.DataFrame(
        {
            "method": ["spire", "a|b"],
            "kid": [0.123456, 2.0],
            "params": [32, 5],
            "holds": [True, False],
        }
    )
    assert markdown_table(df) == (
        "| method | kid | params | holds |\n"
        "|---|---|---|---|\n"
        "| spire | 0.1235 | 32 | True |\n"
        "| a\\|b | 2 | 5 | False |"
    )
    assert markdown_table(df[["kid"]], floatfmt="{:.2f}") == "| kid |\n|---|\n| 0.12 |\n| 2.00 |"
    assert markdown_table(pd.DataFrame({"x": [float("nan")]})) == "| x |\n|---|\n| nan |"
    assert markdown_table(df.iloc[:0]) == "| method | kid | params | holds |\n|---|---|---|---|"


def test_sweep_heat_maps_share_one_colour_scale_and_mark_diverged_cells() -> None:
    from spire_pipeline.pipelines.robustness_sweep.nodes import plot_sweep_heatmaps

    table = sweep_table().assign(extractor="efficientnet_lite0_64px")
    table.loc[
        (table["method"] == "bitfit") & (table["lr"] == 1e-2) & (table["epochs"] == 2), "kid_mean"
    ] = np.nan
    figs = plot_sweep_heatmaps(table)
    assert set(figs) == {"spire", "bitfit"}
    scales = {m: f.axes[0].images[0].get_clim() for m, f in figs.items()}
    # one scale over both methods: min 0.13 (spire 1e-3 x 2), max 1.1 (bitfit 1e-3 x 1)
    for clim in scales.values():
        assert clim == pytest.approx((0.13, 1.1))
    assert "2/2 diverged" in {t.get_text() for t in figs["bitfit"].axes[0].texts}
    assert not any("diverged" in t.get_text() for t in figs["spire"].axes[0].texts)
