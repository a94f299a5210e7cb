"""Forgetting (``spire_pipeline.spire.forgetting``): the population KID before and after adapting,
the noise band from independent redraws, and a measure that flags a changed backbone."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from spire_pipeline.spire.adaptation import adapt
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.claims import claim_forgetting
from spire_pipeline.spire.config import AdaptationConfig, KIDConfig, PretrainingConfig
from spire_pipeline.spire.federated import ClientData, pretrain
from spire_pipeline.spire.forgetting import forgetting_kid, forgetting_summary

SIZE = 16
SEEN = ["seen_00", "seen_01", "seen_02"]
UNSEEN = ["unseen_00", "unseen_01", "unseen_02"]

pytestmark = pytest.mark.usefixtures("one_thread")


def pooled_features(images: np.ndarray) -> np.ndarray:
    """A cheap deterministic stand-in for a network: 4x4 average pooling, 16 features."""
    x = np.asarray(images, dtype=np.float64)
    n, h, w = x.shape
    return x.reshape(n, 4, h // 4, 4, w // 4).mean(axis=(2, 4)).reshape(n, 16) / 255.0


def blobs(n: int, seed: int, level: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (level + 0.3 * torch.randn(n, 1, SIZE, SIZE, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def models() -> tuple[dict[str, ModelBundle], dict[str, ModelBundle], np.ndarray]:
    """Tiny spire and fedavg models trained for a few rounds, spire and bitfit adapted to three
    unseen clients, and the seen clients' pooled "test" features."""
    seen = [ClientData(c, blobs(16, k, -0.5 + 0.5 * k)) for k, c in enumerate(SEEN)]
    cfg = PretrainingConfig.model_validate(
        dict(
            backbone=dict(block_out_channels=[8, 16], norm_num_groups=4, image_size=SIZE),
            diffusion=dict(num_train_timesteps=50, sampler="ddim", sampler_steps=4),
            rounds=3,
            client_fraction=1.0,
            min_clients=1,
            local=dict(steps=4, batch_size=8, lr=5e-3),
        )
    )
    pretrained = {m: pretrain(m, cfg, seen, progress=False)[0] for m in ("spire", "fedavg")}
    acfg = AdaptationConfig.model_validate({"local": {"steps": 8, "batch_size": 8, "lr": 0.05}})
    adapted = {}
    for k, u in enumerate(UNSEEN):
        client = ClientData(u, blobs(16, 10 + k, 0.9))
        for m in ("spire", "bitfit"):
            adapted[f"{m}__{u}"] = adapt(m, pretrained, client, acfg).bundle
    real = np.concatenate(
        [
            pooled_features(((blobs(40, 20 + k, -0.5 + 0.5 * k) + 1) * 127.5).byte()[:, 0].numpy())
            for k in range(len(SEEN))
        ]
    )
    return pretrained, adapted, real


KID = KIDConfig(num_generated=24, num_subsets=20, max_subset_size=12, batch_size=24, cache_dir=None)


def run(models, **kwargs) -> pd.DataFrame:
    pretrained, adapted, real = models
    return forgetting_kid(
        adapted,
        pretrained,
        SEEN,
        real,
        pooled_features,
        "pool4x4",
        KID,
        adapted_clients=UNSEEN,
        draws=3,
        progress=False,
        **kwargs,
    )


def test_table_before_draws_and_after_each_adaptation(models) -> None:
    table = run(models)
    before = table[table["phase"] == "before"]
    assert sorted(zip(before["base"], before["draw"])) == [
        (b, r) for b in ("fedavg", "spire") for r in range(3)
    ]
    after = table[table["phase"] == "after"]
    assert sorted(zip(after["method"], after["adapted_to"])) == [
        (m, u) for m in ("bitfit", "spire") for u in UNSEEN
    ]
    assert (table["n_generated"] == KID.num_generated).all()
    assert np.isfinite(table["kid_mean"]).all()
    # spire's seen clients are sampled afresh after each adaptation: no value is reused
    spire = table[(table["base"] == "spire")]["kid_mean"]
    assert spire.nunique() == len(spire)
    assert after[after["method"] == "spire"]["backbone_unchanged"].astype(bool).all()
    # same seed, same numbers
    pd.testing.assert_frame_equal(table, run(models))


def test_a_perturbed_backbone_is_reported_as_forgetting(models) -> None:
    """The backbone SPIRE serves the seen clients with is changed after adaptation: the measure
    (not only the hash check) reports it, and claim 3 fails."""
    pretrained, _, _ = models
    spire = pretrained["spire"]
    # a changed shared weight: the output layer's bias shifts every predicted noise
    noisy = {**spire.backbone, "conv_out.bias": spire.backbone["conv_out.bias"] + 0.5}
    perturbed = {**pretrained, "spire": ModelBundle(**{**vars(spire), "backbone": noisy})}
    # three adapted clients: 70 % intervals (95 % needs six, stats.min_clients)
    intact = forgetting_summary(run(models), confidence=0.7).set_index("method")
    changed_table = run(models, pretrained_after=perturbed)
    changed = forgetting_summary(changed_table, confidence=0.7).set_index("method")
    after = changed_table[changed_table["phase"] == "after"]
    assert not after[after["method"] == "spire"]["backbone_unchanged"].astype(bool).any()
    assert not intact.loc["spire", "beyond_noise"]
    assert changed.loc["spire", "beyond_noise"], changed.loc["spire"]
    assert changed.loc["spire", "change"] > intact.loc["spire", "change"]
    assert claim_forgetting(changed.reset_index())["verdict"] == "fails"


def summary_table() -> pd.DataFrame:
    rows = [
        {"base": "spire", "phase": "before", "draw": r, "kid_mean": v}
        for r, v in enumerate([1.0, 1.2, 0.8])
    ] + [
        {"base": "fedavg", "phase": "before", "draw": r, "kid_mean": v}
        for r, v in enumerate([2.0, 2.2, 1.8])
    ]
    # six adapted clients (the fewest a 95 % interval needs)
    after = {"spire": [1.1, 0.9] * 3, "bitfit": [3.0, 3.2] * 3, "head": [2.1, 1.9] * 3}
    for method, values in after.items():
        base = "spire" if method == "spire" else "fedavg"
        rows += [
            {"method": method, "base": base, "phase": "after", "adapted_to": f"u{k}", "kid_mean": v}
            for k, v in enumerate(values)
        ]
    return pd.DataFrame(rows).assign(extractor="ext")


def test_forgetting_summary_by_hand() -> None:
    s = forgetting_summary(summary_table()).set_index("method")
    band = 2 * 0.2 * math.sqrt(1 + 1 / 3)  # both bases: sd 0.2 over 3 draws
    assert s["noise_sd"].to_numpy() == pytest.approx([0.2] * 3)
    assert s["noise_band"].to_numpy() == pytest.approx([band] * 3)
    # spire: changes +0.1, -0.1 (x3) -> median 0, exact bootstrap CI [-0.1, +0.1]: within noise
    assert s.loc["spire", "seen_kid_before"] == pytest.approx(1.0)
    assert s.loc["spire", ["change", "ci_low", "ci_high"]].tolist() == pytest.approx([0, -0.1, 0.1])
    assert s.loc["spire", "within_noise"] and not s.loc["spire", "beyond_noise"]
    # bitfit: +1.0, +1.2 (x3) -> beyond the band; head: +0.1, -0.1 (x3) -> within
    assert s.loc["bitfit", ["change", "ci_low", "ci_high"]].tolist() == pytest.approx(
        [1.1, 1.0, 1.2]
    )
    assert s.loc["bitfit", "beyond_noise"] and not s.loc["head", "beyond_noise"]
    claim = claim_forgetting(s.reset_index())
    assert claim["verdict"] == "holds" and "bitfit" in claim["note"]


def test_no_forgetting_to_mitigate_is_not_a_hold() -> None:
    t = summary_table()
    t = t[t["method"] != "bitfit"]
    claim = claim_forgetting(forgetting_summary(t))
    assert claim["verdict"] == "inconclusive"
    assert claim["note"].startswith("no forgetting to mitigate at this budget")


def test_too_few_adapted_clients_cannot_decide() -> None:
    """Two adapted clients whose changes agree are no evidence at 95 %: inconclusive."""
    t = summary_table()
    t = t[(t["phase"] == "before") | t["adapted_to"].isin(["u0", "u1"])]
    s = forgetting_summary(t).set_index("method")
    assert np.isinf(s.loc["bitfit", "ci_high"]) and not s.loc["bitfit", "beyond_noise"]
    assert claim_forgetting(s.reset_index())["verdict"] == "inconclusive"
