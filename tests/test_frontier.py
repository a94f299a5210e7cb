"""The unseen-client frontier (``spire.frontier``, the ``personalization_frontier`` pipeline):
the grid, pretraining snapshots that equal shorter runs, the per-setting verdicts, and the quick
pipeline's table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from spire_pipeline.spire.config import FrontierConfig, PretrainingConfig
from spire_pipeline.spire.federated import ClientData, pretrain
from spire_pipeline.spire.frontier import TABLE_COLUMNS, frontier_table, grid, pretrain_snapshots
from spire_pipeline.spire.methods import PROPOSED

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]

#: the columns the issue asks for (docs/frontier.md)
REQUIRED = [
    "setting",
    "scheme",
    "alpha",
    "unseen_train_size",
    "num_seen_clients",
    "variant",
    "gap",
    "ci_low",
    "ci_high",
    "verdict",
    "specificity",
]


def test_grid_is_one_factor_at_a_time_around_the_centre() -> None:
    cfg = FrontierConfig.model_validate(
        {
            "partitions": [
                {"scheme": "dirichlet", "alpha": 0.3, "all_shots": True},
                {"scheme": "shards", "all_shots": True},
                {"scheme": "dirichlet", "alpha": 0.1},
            ],
            "unseen_train_sizes": [10, 100],
            "centre_train_size": 100,
            "compute": [1, 4],
            "num_seen_clients": [10, 30],
            "variants": ["plain", "guidance"],
        }
    )
    settings = grid(cfg)
    names = [s.name for s in settings]
    assert len(names) == len(set(names))
    by_factor = pd.Series([s.factor for s in settings]).value_counts().to_dict()
    # centre partition: 2 shots x 2 variants (one is the centre); shards x 2 shots; alpha 0.1;
    # 4x compute; 30 seen clients
    assert by_factor == {"shots": 3, "centre": 1, "scheme": 3, "compute": 1, "num_seen_clients": 1}
    (centre,) = [s for s in settings if s.factor == "centre"]
    assert (centre.scheme, centre.alpha, centre.unseen_train_size) == ("dirichlet", 0.3, 100)
    assert (centre.num_seen_clients, centre.compute, centre.variant) == (10, 1, "plain")
    for s in settings:  # every non-centre setting differs from the centre in one factor only,
        # but for shots x variant and shots x scheme, which are crossed
        moved = [
            s.partition_key[:2] != centre.partition_key[:2],
            s.unseen_train_size != centre.unseen_train_size,
            s.num_seen_clients != centre.num_seen_clients,
            s.compute != centre.compute,
            s.variant != centre.variant,
        ]
        if s.factor in ("compute", "num_seen_clients"):
            assert sum(moved) == 1, s.name
    assert len(grid(FrontierConfig())) == 4 * 3 + 2 + 2  # defaults: one partition


def test_shipped_base_grid_has_the_documented_22_settings() -> None:
    path = REPO / "conf/base/parameters_personalization_frontier.yml"
    params = yaml.safe_load(path.read_text())
    settings = grid(FrontierConfig.model_validate(params["personalization_frontier"]))
    assert len(settings) == 22
    assert sum(s.dropout for s in settings) == 4


def test_frontier_config_rejects_a_centre_outside_the_shots() -> None:
    with pytest.raises(ValueError, match="centre_train_size"):
        FrontierConfig(unseen_train_sizes=[10, 30], centre_train_size=100)
    with pytest.raises(ValueError, match="evaluation_clients"):
        FrontierConfig.model_validate({"evaluation_clients": 4})


def _flat(n: int, level: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (level + 0.1 * torch.randn(n, 1, 16, 16, generator=g)).clamp(-1, 1)


TINY = PretrainingConfig.model_validate(
    dict(
        backbone=dict(block_out_channels=[8, 16], norm_num_groups=4, image_size=16),
        diffusion=dict(num_train_timesteps=50, sampler="ddim", sampler_steps=3),
        rounds=2,
        client_fraction=0.67,
        min_clients=1,
        local=dict(steps=2, batch_size=8, lr=5e-3, embedding_lr=0.1),
    )
)


def test_snapshots_equal_shorter_runs_and_are_cached(tmp_path) -> None:
    clients = [ClientData(f"seen_{k:02d}", _flat(16, v, k)) for k, v in enumerate((-0.5, 0, 0.5))]
    snaps = pretrain_snapshots("spire", TINY, clients, [1, 3], tmp_path, progress=False)
    assert sorted(snaps) == [1, 3] and len(list(tmp_path.glob("*.safetensors"))) == 2
    short, _ = pretrain("spire", TINY, clients, progress=False)  # 2 rounds = compute 1x
    for k, v in short.backbone.items():
        assert torch.equal(snaps[1].backbone[k], v), k
    for c, e in short.embeddings.items():
        assert torch.equal(snaps[1].embeddings[c], e), c
    assert not torch.equal(snaps[3].embeddings["seen_00"], short.embeddings["seen_00"])
    again = pretrain_snapshots("spire", TINY, clients, [1, 3], tmp_path, progress=False)
    for c in (1, 3):
        for k, v in snaps[c].backbone.items():
            assert torch.equal(again[c].backbone[k], v), (c, k)


def _kid_rows(setting: str, offsets: dict[str, float], n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    base = rng.uniform(4, 8, n)
    rows = []
    for method, off in offsets.items():
        for k in range(n):
            rows.append(
                {
                    "setting": setting,
                    "scheme": "dirichlet",
                    "alpha": 0.3,
                    "unseen_train_size": 100,
                    "num_seen_clients": 10,
                    "compute": 1,
                    "variant": "plain",
                    "factor": "centre",
                    "client": f"unseen_{k:02d}",
                    "method": method,
                    "kid_mean": base[k] + off + 0.01 * k,
                    "guidance": 1.0,
                    "tv_distance": 0.2 if method == PROPOSED else 0.6,
                }
            )
    return pd.DataFrame(rows)


def test_frontier_table_decides_each_setting_against_its_toughest_baseline() -> None:
    kid = pd.concat(
        [
            _kid_rows("wins", {PROPOSED: 0.0, "lora": 1.0, "bitfit": 2.0}),
            _kid_rows("loses", {PROPOSED: 1.0, "lora": 0.0, "bitfit": 2.0}),
            _kid_rows("few", {PROPOSED: 0.0, "lora": 1.0}, n=4),
        ]
    )
    table = frontier_table(kid, bootstrap=2000).set_index("setting")
    assert list(table.reset_index().columns) == TABLE_COLUMNS
    assert table.loc["wins", "verdict"] == "holds" and table.loc["wins", "baseline"] == "lora"
    assert table.loc["wins", "gap"] == pytest.approx(-1.0)
    assert table.loc["wins", "ci_high"] < 0
    assert table.loc["loses", "verdict"] == "fails" and table.loc["loses", "baseline"] == "lora"
    assert table.loc["loses", "gap"] == pytest.approx(1.0) and table.loc["loses", "ci_low"] > 0
    assert table.loc["few", "verdict"] == "inconclusive"  # 4 clients: no interval
    assert np.isinf(table.loc["few", "ci_low"]) and table.loc["few", "n_clients"] == 4
    assert table.loc["wins", "specificity"] == pytest.approx(0.8)
    assert table.loc["wins", "specificity_baseline"] == pytest.approx(0.4)


class _Pooled:
    """A cheap stand-in feature extractor: 4 x 4 average pooling (16 features)."""

    name, image_size = "pool4x4", 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float64)
        n, h, w = x.shape
        return x.reshape(n, 4, h // 4, 4, w // 4).mean(axis=(2, 4)).reshape(n, 16) / 255.0


def test_run_frontier_in_process(fashion_mnist, tmp_path) -> None:
    """Every variant on real images: evaluation clients scored, the guidance scale chosen on
    tuning clients, retrieval used where asked, the baselines shared between variants."""
    from spire_pipeline.spire.config import AdaptationConfig, KIDConfig, PartitionConfig
    from spire_pipeline.spire.frontier import run_frontier
    from spire_pipeline.spire.tuning import config_choices

    train, test = fashion_mnist.train_slice(6000), fashion_mnist.test_slice(1000)
    images = np.concatenate([train["images"], test["images"]])
    labels = np.concatenate([train["labels"], test["labels"]])
    cfg = FrontierConfig.model_validate(
        dict(
            partitions=[{"scheme": "dirichlet", "alpha": 0.3}],
            unseen_train_sizes=[8, 16],
            centre_train_size=16,
            compute=[1, 2],
            num_seen_clients=[3],
            variants=["plain", "guidance", "retrieval"],
            rounds=1,
            clients_per_round=2,
            seen_images=600,
            tuning_clients=2,
            embedding_dropout=0.3,
            guidance_scales=[1.0, 2.0],
            methods=["spire", "bitfit", "head"],
            num_generated=8,
            bootstrap_samples=500,
            cache_dir=str(tmp_path / "models"),
        )
    )
    partition = PartitionConfig(min_test_size=24, unseen_train_size=16, seen_client_size=200)
    pretraining = TINY.model_copy(
        update={"backbone": TINY.backbone.model_copy(update={"image_size": 28})}
    )
    adaptation = AdaptationConfig.model_validate(
        {"methods": ["spire", "bitfit", "head"], "local": {"steps": 2, "batch_size": 8}}
    )
    kid_cfg = KIDConfig.model_validate(
        dict(
            num_subsets=4,
            max_subset_size=6,
            sampler_steps=2,
            batch_size=16,
            cache_dir=None,
            conditioning={"max_images": 300, "epochs": 1},
        )
    )
    choices = config_choices(adaptation)
    result = run_frontier(
        images, labels, cfg, partition, pretraining, adaptation, choices, kid_cfg, _Pooled(),
        "pool4x4", progress=False,
    )  # fmt: skip
    kid = result.kid
    assert kid["setting"].nunique() == len(grid(cfg)) == 7
    assert set(kid["client"]) == {f"unseen_{k:02d}" for k in range(6)}
    assert kid["tv_distance"].between(0, 1).all() and kid["kid_mean"].notna().all()
    spire = kid[kid["method"] == PROPOSED].set_index(["variant", "unseen_train_size"])
    assert (spire.loc[("retrieval", 16), "embedding_init"] == "retrieval").all()
    assert (spire.loc[("plain", 16), "embedding_init"] == adaptation.embedding_init).all()
    chosen = result.guidance.loc[result.guidance["chosen"], "guidance"].unique()
    assert len(chosen) == 1 and (spire.loc[("guidance", 16), "guidance"] == chosen[0]).all()
    assert set(result.guidance["client"]) == {"tuning_00", "tuning_01"}
    # the baselines do not depend on the variant; SPIRE does
    base = kid[kid["method"] != PROPOSED].set_index(["setting", "client", "method"])["kid_mean"]
    for variant in ("guidance", "retrieval"):
        other = f"dirichlet-0.3/shots-16/seen-3/compute-1x/{variant}"
        plain = base.loc["dirichlet-0.3/shots-16/seen-3/compute-1x/plain"]
        np.testing.assert_array_equal(base.loc[other].to_numpy(), plain.to_numpy())
    table = frontier_table(kid, bootstrap=500)
    assert list(table.columns) == TABLE_COLUMNS and len(table) == 7
    assert table["n_clients"].eq(6).all()
    # the evidence a default is chosen on: the same grid on the tuning clients only (their
    # pretrained models from the cache)
    tuned = run_frontier(
        images, labels, cfg.model_copy(update={"compute": [1]}), partition, pretraining,
        adaptation, choices, kid_cfg, _Pooled(), "pool4x4", progress=False, score_on="tuning",
    ).kid  # fmt: skip
    assert set(tuned["client"]) == {"tuning_00", "tuning_01"} and set(tuned["role"]) == {"tuning"}


# --------------------------------------------------------------------------- the pipeline


def _write_choices(project) -> None:
    """The main job's adaptation_choices, as it would have written them on conf/quick."""
    from spire_pipeline.spire.config import AdaptationConfig
    from spire_pipeline.spire.tuning import config_choices

    params = yaml.safe_load((project / "conf/quick/parameters_client_adaptation.yml").read_text())
    choices = config_choices(AdaptationConfig.model_validate(params["client_adaptation"]))
    folder = project / "data/06_models/adaptation_choices.csv/2026-01-01T00.00.00.000Z"
    folder.mkdir(parents=True)
    choices.to_csv(folder / "adaptation_choices.csv", index=False)


def _newest(folder) -> pd.DataFrame:
    (path,) = sorted(folder.glob("*/*.csv"))[-1:]
    return pd.read_csv(path)


@pytest.mark.slow
def test_quick_frontier_writes_the_table_and_figure(make_project_copy, run_kedro) -> None:
    project = make_project_copy("frontier")
    _write_choices(project)
    result = run_kedro(
        project, "--pipeline", "personalization_frontier", "--env", "quick", timeout=300
    )
    assert "Pipeline execution completed" in result.output, result.tail()
    table = _newest(project / "data/08_reporting/frontier_table.csv")
    assert list(table.columns[: len(REQUIRED)]) == REQUIRED
    assert len(table) == 3 and set(table["variant"]) == {"plain", "guidance", "retrieval"}
    assert set(table["verdict"]) <= {"holds", "fails", "inconclusive"}
    assert table["n_clients"].eq(6).all() and np.isfinite(table["ci_low"]).all()
    assert table["specificity"].between(0, 1).all()
    kid = _newest(project / "data/07_model_output/frontier_kid.csv")
    assert kid.groupby("setting")["method"].nunique().eq(3).all()
    assert not kid["client"].str.startswith(("seen", "tuning")).any()  # evaluation clients only
    guidance = _newest(project / "data/07_model_output/frontier_guidance.csv")
    assert set(guidance["guidance"]) == {1.0, 2.0} and guidance["chosen"].any()
    assert guidance["client"].str.startswith("tuning").all()
    (figure,) = (project / "data/08_reporting/frontier.png").glob("*/frontier.png")
    assert figure.stat().st_size > 10_000
    # the pretrained models are cached for the next run (reuse: test_snapshots_...)
    assert len(list((project / "data/06_models/frontier").glob("*.safetensors"))) == 3
