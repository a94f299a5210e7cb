"""Adaptation hyperparameters chosen on the tuning clients (``spire.tuning`` and the
``client_adaptation`` nodes): evaluation clients' test splits are never read, the choices are
what the evaluation clients are adapted with, and a retrieval initialisation finds the seen
embedding of matching data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from spire_pipeline.pipelines.client_adaptation.nodes import adapt_unseen_clients, tune_adaptation
from spire_pipeline.spire.adaptation import initial_embedding
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.diffusion import heldout_losses, make_scheduler, to_uint8
from spire_pipeline.spire.federated import ClientData, pretrain
from spire_pipeline.spire.partition import ClientSplit
from spire_pipeline.spire.tuning import chosen_settings, config_choices

SIZE = 16
LEVELS = {"seen_00": -0.8, "seen_01": 0.0, "seen_02": 0.8}

pytestmark = pytest.mark.usefixtures("one_thread")


def flat(n: int, level: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (level + 0.1 * torch.randn(n, 1, SIZE, SIZE, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def pretrained():
    """Tiny spire and fedavg models on three seen clients of very different brightness."""
    seen = [ClientData(c, flat(32, v, k)) for k, (c, v) in enumerate(LEVELS.items())]
    cfg = PretrainingConfig.model_validate(
        dict(
            backbone=dict(block_out_channels=[8, 16], norm_num_groups=4, image_size=SIZE),
            diffusion=dict(num_train_timesteps=50, sampler="ddim", sampler_steps=3),
            rounds=12,
            client_fraction=1.0,
            min_clients=1,
            local=dict(steps=3, batch_size=16, lr=5e-3, embedding_lr=0.1),
            embedding_init_scale=3.0,
        )
    )
    return {m: pretrain(m, cfg, seen, progress=False)[0] for m in ("spire", "fedavg")}


def split(client: str, role: str, level: float, seed: int) -> dict[str, np.ndarray]:
    train, test = flat(12, level, seed), flat(8, level, seed + 100)
    return ClientSplit(
        client,
        role,
        to_uint8(train),
        np.zeros(12, np.int64),
        to_uint8(test),
        np.zeros(8, np.int64),
        np.arange(12),
        np.arange(12, 20),
    ).to_arrays()


def client_splits(poison_evaluation_tests: bool) -> dict[str, dict[str, np.ndarray]]:
    splits = {
        "tuning_00": split("tuning_00", "tuning", 0.7, 1),
        "tuning_01": split("tuning_01", "tuning", -0.7, 2),
        "unseen_00": split("unseen_00", "unseen", 0.1, 3),
        "unseen_01": split("unseen_01", "unseen", -0.1, 4),
    }
    if poison_evaluation_tests:  # unusable as images: any use would raise
        for c in ("unseen_00", "unseen_01"):
            splits[c] = {**splits[c], "test_images": np.array(["poison"]), "test_labels": None}
    return splits


ADAPTATION = {
    "methods": ["spire", "bitfit"],
    "local": {"steps": 2, "batch_size": 4},
    "cache_dir": None,  # nothing written to the working tree
    "tuning": {
        "learning_rates": [1e-3, 1e-1],
        "epochs": [1, 2],
        "embedding_inits": ["zeros", "mean_seen", "retrieval"],
        "num_generated": 6,
    },
}
KID = {
    "extractor": "efficientnet_lite0",
    "image_size": 32,
    "num_subsets": 5,
    "max_subset_size": 4,
    "batch_size": 16,
    "cache_dir": None,
}


def test_tuning_never_reads_an_evaluation_clients_test_split(pretrained) -> None:
    clean = tune_adaptation(client_splits(False), pretrained, ADAPTATION, KID)
    poisoned = tune_adaptation(client_splits(True), pretrained, ADAPTATION, KID)
    for a, b in zip(clean[:3], poisoned[:3]):
        pd.testing.assert_frame_equal(a, b)
    choices, grid, inits, _ = clean
    assert set(grid["client"]) == set(inits["client"]) == {"tuning_00", "tuning_01"}
    assert set(grid["role"]) == {"tuning"}
    # the same cells for every method
    cells = grid.groupby("method").apply(lambda g: sorted(set(zip(g["lr"], g["epochs"]))))
    assert cells["spire"] == cells["bitfit"] == [(1e-3, 1), (1e-3, 2), (1e-1, 1), (1e-1, 2)]
    assert list(choices["method"]) == ["spire", "bitfit"]
    assert set(choices["source"]) == {"tuning"}
    for r in choices.itertuples():  # each choice is its method's best cell
        sub = grid[grid["method"] == r.method].groupby(["lr", "epochs"])["kid_mean"].median()
        assert r.tuning_score == pytest.approx(sub.min())
        assert sub[(r.lr, r.epochs)] == pytest.approx(sub.min())
    assert choices.set_index("method").loc["spire", "embedding_init"] in {
        "zeros",
        "mean_seen",
        "retrieval",
    }


def test_evaluation_clients_are_adapted_with_the_chosen_values(pretrained) -> None:
    choices = pd.DataFrame(
        [
            {
                "method": "spire",
                "lr": 0.05,
                "epochs": 2,
                "steps": np.nan,
                "embedding_init": "zeros",
            },
            {"method": "bitfit", "lr": 0.002, "epochs": 1, "steps": np.nan, "embedding_init": ""},
        ]
    )
    adapted, table, _ = adapt_unseen_clients(client_splits(True), pretrained, choices, ADAPTATION)
    per_epoch = math.ceil(12 / 4)
    t = table.set_index(["method", "client"])
    assert t.loc[("spire", "unseen_00"), "steps"] == 2 * per_epoch
    assert t.loc[("bitfit", "unseen_01"), "steps"] == per_epoch
    assert t.loc[("spire", "unseen_01"), "lr"] == 0.05
    assert adapted["spire__unseen_00"].info["embedding_init"] == "zeros"
    assert set(table["client"]) == {"unseen_00", "unseen_01"}  # never a tuning client


def test_without_tuning_clients_the_configured_values_are_used(pretrained) -> None:
    splits = {k: v for k, v in client_splits(False).items() if not k.startswith("tuning")}
    choices, grid, inits, metrics = tune_adaptation(splits, pretrained, ADAPTATION, KID)
    assert list(choices["source"].unique()) == ["config (no tuning clients)"]
    assert grid.empty and inits.empty and metrics == {}
    from spire_pipeline.spire.config import AdaptationConfig

    cfg = AdaptationConfig.model_validate(ADAPTATION)
    pd.testing.assert_frame_equal(choices, config_choices(cfg))
    run_cfg, local = chosen_settings(cfg, choices, "spire")
    assert local.lr == cfg.local.embedding_lr and local.steps == 2 and local.epochs is None
    assert run_cfg.embedding_init == cfg.embedding_init


def test_retrieval_picks_the_seen_embedding_of_the_same_data(pretrained) -> None:
    """A new client whose data is a seen client's own starts from that client's embedding."""
    spire = pretrained["spire"]
    model, _ = spire.build(None)
    scheduler = make_scheduler(spire.diffusion_cfg)

    def denoise(x, t, c):
        return model(x, t, class_labels=c).sample

    for k, (client, level) in enumerate(LEVELS.items()):
        images = flat(32, level, k)  # that client's own training images

        def score(table, images=images):
            return heldout_losses(denoise, scheduler, images, table, seed=7)

        got = initial_embedding("retrieval", spire, 32, seed=0, score=score)
        assert torch.equal(got, spire.embeddings[client]), client


def test_guidance_scale_is_chosen_at_the_chosen_cell_and_leaves_the_grid_alone(pretrained) -> None:
    from spire_pipeline.pipelines.client_adaptation.nodes import tuning_data
    from spire_pipeline.spire.config import AdaptationConfig, KIDConfig
    from spire_pipeline.spire.evaluation import adapted_jobs, pretrained_jobs
    from spire_pipeline.spire.tuning import chosen_guidance, tune

    plain = tune_adaptation(client_splits(False), pretrained, ADAPTATION, KID)
    guided_params = {**ADAPTATION, "tuning": {**ADAPTATION["tuning"], "guidance_scales": [1, 3]}}
    cfg = AdaptationConfig.model_validate(guided_params)
    kid_cfg = KIDConfig.model_validate(KID)
    clients, features, extractor, label = tuning_data(client_splits(False), kid_cfg)
    result = tune(pretrained, clients, features, extractor, label, cfg, kid_cfg)
    # the lr x epochs grid (claim 4's spreads) and the cells chosen are those of a run without
    pd.testing.assert_frame_equal(result.grid, plain[1])
    cols = ["method", "lr", "epochs", "embedding_init"]
    pd.testing.assert_frame_equal(result.choices[cols], plain[0][cols])
    # both scales scored on every tuning client, spire only; the lowest median wins
    g = result.guidance
    assert set(g["method"]) == {"spire"} and len(g) == 2 * len(clients)
    medians = g.groupby("guidance")["kid_mean"].median()
    row = result.choices.set_index("method")
    assert row.loc["spire", "guidance"] == medians.idxmin()
    assert row.loc["spire", "tuning_score"] == pytest.approx(medians.min())
    assert row.loc["bitfit", "guidance"] == 1.0
    # at scale 1 the samples are the grid's own at the chosen cell
    chosen = plain[1].query("method == 'spire'").set_index(["lr", "epochs"])
    at_one = g[g["guidance"] == 1].set_index("client")["kid_mean"]
    cell = chosen.loc[(row.loc["spire", "lr"], row.loc["spire", "epochs"])].set_index("client")
    pd.testing.assert_series_equal(at_one.sort_index(), cell["kid_mean"].sort_index())
    # the main job's KID then samples spire (and its pretrained model) with the chosen scale
    w = {"spire": 3.0}
    assert chosen_guidance(result.choices.assign(guidance=[3.0, 1.0])) == w
    roles = {"seen_00": "seen", "unseen_00": "unseen"}
    jobs = pretrained_jobs(pretrained, roles, w)
    assert {(j.method, j.guidance) for j in jobs} == {("spire", 3.0), ("fedavg", 1.0)}
    adapted = {"spire__unseen_00": pretrained["spire"], "bitfit__unseen_00": pretrained["fedavg"]}
    assert {(j.method, j.guidance) for j in adapted_jobs(adapted, pretrained, roles, w)} == {
        ("spire", 3.0),
        ("bitfit", 1.0),
    }
    assert (
        chosen_guidance(plain[0]) == {} and chosen_guidance(plain[0].drop(columns="guidance")) == {}
    )
