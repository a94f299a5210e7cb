"""Per-client KID evaluation (``spire_pipeline.spire.evaluation``): which (client, method, phase)
jobs are made, shared samples generated once, the KID table's columns, the summary table, the
real-feature cache, determinism, and KID on real Fashion-MNIST clients. Forgetting is tested in
``test_forgetting.py``.

The feature extractor and the KID estimator themselves are tested in ``test_features_kid.py``
(including KID on hand-picked Fashion-MNIST classes); here the "clients" of the KID check are
made by the project's own ``partition()``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import spire_pipeline.spire.evaluation as evaluation_mod
from spire_pipeline.spire.adaptation import adapt
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import (
    ADAPTATION_METHODS,
    AdaptationConfig,
    BackboneConfig,
    DiffusionConfig,
    KIDConfig,
    PartitionConfig,
    PretrainingConfig,
)
from spire_pipeline.spire.evaluation import (
    adapted_jobs,
    cached_features,
    evaluate,
    features_key,
    kid_summary,
    pretrained_jobs,
)
from spire_pipeline.spire.features import build_feature_extractor
from spire_pipeline.spire.federated import ClientData, derive_seed, pretrain
from spire_pipeline.spire.kid import kid
from spire_pipeline.spire.partition import partition

SIZE = 16
SEEN = ["seen_00", "seen_01"]
UNSEEN = ["unseen_00", "unseen_01"]
ROLES = {**{c: "seen" for c in SEEN}, **{c: "unseen" for c in UNSEEN}}
COLUMNS = [
    "client",
    "role",
    "method",
    "phase",
    "kid_mean",
    "kid_std",
    "n_generated",
    "n_real",
    "extractor",
]


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- jobs


def fake_bundle(method: str, **personal) -> ModelBundle:
    """A bundle with placeholder tensors: enough for job planning, never built."""
    return ModelBundle(
        method, BackboneConfig(), DiffusionConfig(), backbone={"w": torch.zeros(2)}, **personal
    )


def per_seen(value) -> dict:
    return {c: value for c in SEEN}


@pytest.fixture
def fake_pretrained() -> dict[str, ModelBundle]:
    return {
        "spire": fake_bundle("spire", embeddings=per_seen(torch.zeros(4))),
        "centralized": fake_bundle("centralized", embeddings=per_seen(torch.zeros(4))),
        "fedper": fake_bundle("fedper", heads=per_seen({"h": torch.zeros(1)})),
        "local": fake_bundle("local", local=per_seen({"w": torch.zeros(2)})),
        "fedavg": fake_bundle("fedavg"),
    }


def rows(jobs) -> set[tuple]:
    return {(j.client, j.role, j.method, j.phase, j.source, j.condition) for j in jobs}


def test_pretrained_jobs(fake_pretrained) -> None:
    jobs = pretrained_jobs(fake_pretrained, ROLES)
    expected = {
        (c, "seen", m, "pretrained", f"pretrained/{m}", c)
        for m in ("spire", "centralized", "fedper", "local")
        for c in SEEN
    } | {  # the unconditional model, for every client, seen or not
        (c, ROLES[c], "fedavg", "pretrained", "pretrained/fedavg", None) for c in ROLES
    }
    assert rows(jobs) == expected
    assert len(jobs) == len(expected)
    # all fedavg jobs share one sample set; personal ones have one each
    assert len({j.sample_key for j in jobs}) == 4 * len(SEEN) + 1


def adapted_fakes() -> dict[str, ModelBundle]:
    return {f"{m}__{u}": fake_bundle(m) for m in ADAPTATION_METHODS for u in UNSEEN}


def test_adapted_jobs(fake_pretrained) -> None:
    jobs = adapted_jobs(adapted_fakes(), fake_pretrained, ROLES)
    adapted = {
        (u, "unseen", m, "adapted", f"adapted/{m}/{u}", u if m == "spire" else None)
        for m in ADAPTATION_METHODS
        for u in UNSEEN
    }
    assert rows(jobs) == adapted
    assert len(jobs) == len(adapted)


# ----------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def tiny_models() -> tuple[dict[str, ModelBundle], dict[str, ModelBundle], dict[str, str]]:
    """Tiny pretrained spire and fedavg bundles, spire and bitfit adapted to one unseen client."""
    g = torch.Generator().manual_seed(0)
    seen = [ClientData(c, torch.rand(8, 1, SIZE, SIZE, generator=g) * 2 - 1) for c in SEEN]
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
    pretrained = {m: pretrain(m, cfg, seen, progress=False)[0] for m in ("spire", "fedavg")}
    unseen = ClientData("unseen_00", torch.rand(8, 1, SIZE, SIZE, generator=g) * 2 - 1)
    acfg = AdaptationConfig.model_validate({"local": {"steps": 1, "batch_size": 4}})
    adapted = {
        f"{m}__unseen_00": adapt(m, pretrained, unseen, acfg).bundle for m in ("spire", "bitfit")
    }
    roles = {**{c: "seen" for c in SEEN}, "unseen_00": "unseen"}
    return pretrained, adapted, roles


def pooled_features(images: np.ndarray) -> np.ndarray:
    """A cheap deterministic stand-in for a network: 4x4 average pooling, 16 features."""
    x = np.asarray(images, dtype=np.float64)
    n, h, w = x.shape
    return x.reshape(n, 4, h // 4, 4, w // 4).mean(axis=(2, 4)).reshape(n, 16) / 255.0


def fake_images(num: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(num, SIZE, SIZE), dtype=np.uint8)


def real_feats(clients) -> dict[str, np.ndarray]:
    return {c: pooled_features(fake_images(12, k)) for k, c in enumerate(sorted(clients))}


KID_CFG = KIDConfig(
    num_generated=10,
    num_subsets=5,
    max_subset_size=6,
    sampler_steps=2,
    grid_samples=3,
    batch_size=10,
    cache_dir=None,
)


def test_shared_sample_sets_are_generated_once(tiny_models, monkeypatch) -> None:
    pretrained, adapted, roles = tiny_models
    calls = []

    def counting_generate(model, emb, backbone_cfg, diffusion_cfg, num, seed, **kwargs):
        calls.append((None if emb is None else emb.clone(), seed))
        return fake_images(num, seed)

    monkeypatch.setattr(evaluation_mod, "generate_from", counting_generate)
    jobs = pretrained_jobs(pretrained, roles) + adapted_jobs(adapted, pretrained, roles)
    keys = {j.sample_key for j in jobs}
    table, grids = evaluate(
        jobs, real_feats(roles), pooled_features, "pool4x4", KID_CFG, progress=False
    )
    assert len(calls) == len(keys) < len(jobs)
    # noise seeds depend only on the condition: unconditional models share theirs
    assert {s for _, s in calls} == {
        derive_seed(KID_CFG.seed, "kid", c or "-") for c in {k[1] for k in keys}
    }

    assert set(COLUMNS) <= set(table.columns)
    assert len(table) == len(jobs)
    assert np.isfinite(table[["kid_mean", "kid_std"]].to_numpy()).all()
    assert (table["n_generated"] == KID_CFG.num_generated).all()
    assert (table["n_real"] == 12).all()
    assert (table["extractor"] == "pool4x4").all()
    got = set(zip(table["client"], table["method"], table["phase"]))
    assert got == {(j.client, j.method, j.phase) for j in jobs}
    # sample grids for every (client, method, phase)
    assert set(grids) == {(j.client, j.method, j.phase) for j in jobs}
    assert all(g.shape == (KID_CFG.grid_samples, SIZE, SIZE) for g in grids.values())


def test_same_seed_same_kid_table(tiny_models) -> None:
    pretrained, adapted, roles = tiny_models
    extractor = build_feature_extractor("efficientnet_lite0", image_size=32, batch_size=32)
    real = {c: extractor(fake_images(8, k)) for k, c in enumerate(sorted(roles))}
    cfg = KID_CFG.model_copy(update={"num_generated": 6, "max_subset_size": 4})
    jobs = pretrained_jobs(pretrained, roles) + adapted_jobs(adapted, pretrained, roles)

    def run(seed: int) -> pd.DataFrame:
        c = cfg.model_copy(update={"seed": seed})
        return evaluate(jobs, real, extractor, "lite0_32px", c, progress=False)[0]

    first = run(0)
    pd.testing.assert_frame_equal(first, run(0))
    assert not np.array_equal(first["kid_mean"].to_numpy(), run(1)["kid_mean"].to_numpy())


# ----------------------------------------------------------------------------- tables


def long_table() -> pd.DataFrame:
    """A hand-made KID table: two seen clients, spire and bitfit adapted to two unseen ones."""
    r = []

    def add(client, role, method, phase, value):
        r.append(
            dict(
                client=client,
                role=role,
                method=method,
                phase=phase,
                kid_mean=value,
                kid_std=0.01,
                extractor="ext_64px",
            )
        )

    for c, s, f in (("seen_00", 0.10, 0.30), ("seen_01", 0.20, 0.50)):
        add(c, "seen", "spire", "pretrained", s)
        add(c, "seen", "fedavg", "pretrained", f)
    add("unseen_00", "unseen", "fedavg", "pretrained", 9.0)
    add("unseen_01", "unseen", "fedavg", "pretrained", 7.0)
    for u in UNSEEN:
        add(u, "unseen", "spire", "adapted", 0.4)
        add(u, "unseen", "bitfit", "adapted", 0.8 if u == "unseen_00" else 0.6)
    return pd.DataFrame(r)


def test_kid_summary() -> None:
    s = kid_summary(long_table()).set_index(["phase", "role", "method"])
    pre = s.loc[("pretrained", "seen", "fedavg")]
    assert pre["clients"] == 2
    assert pre["kid_median"] == pytest.approx(0.40)
    assert pre["kid_mean"] == pytest.approx(0.40)
    assert pre["kid_worst"] == pytest.approx(0.50)
    unseen = s.loc[("pretrained", "unseen", "fedavg")]
    assert unseen["clients"] == 2 and unseen["kid_median"] == pytest.approx(8.0)
    bitfit = s.loc[("adapted", "unseen", "bitfit")]
    assert bitfit["kid_median"] == pytest.approx(0.7) and bitfit["kid_worst"] == pytest.approx(0.8)
    assert (s["extractor"] == "ext_64px").all()
    assert len(s) == 5


# ----------------------------------------------------------------------------- feature cache


def test_cached_features_computes_once_then_reuses(tmp_path) -> None:
    images = {"b": fake_images(5, 1), "a": fake_images(4, 0)}
    calls = []

    def extractor(x):
        calls.append(len(x))
        return pooled_features(x)

    first = cached_features(images, extractor, "pool", 16, tmp_path)
    assert sorted(calls) == [4, 5]
    (cached,) = tmp_path.iterdir()
    key = features_key([images["a"], images["b"]], "pool", 16)
    assert cached.name == f"pool-16-{key}.npz"
    again = cached_features(images, extractor, "pool", 16, tmp_path)
    assert len(calls) == 2  # read from the cache
    assert set(again) == set(first) == {"a", "b"}
    for c in first:
        np.testing.assert_array_equal(again[c], first[c])
        np.testing.assert_array_equal(first[c], pooled_features(images[c]))

    changed = {**images, "a": images["a"].copy()}
    changed["a"][0, 0, 0] ^= 1  # one pixel
    cached_features(changed, extractor, "pool", 16, tmp_path)
    assert len(calls) == 4
    cached_features(images, extractor, "pool", 32, tmp_path)  # another input size
    assert len(calls) == 6
    cached_features(images, extractor, "other", 16, tmp_path)  # another extractor
    assert len(calls) == 8
    assert len(list(tmp_path.glob("*.npz"))) == 4
    assert not list(tmp_path.glob("*.tmp*"))
    cached_features(images, extractor, "pool", 16, tmp_path)
    assert len(calls) == 8
    cached_features(images, extractor, "pool", 16, None)  # no cache: always computed
    cached_features(images, extractor, "pool", 16, None)
    assert len(calls) == 12


# ----------------------------------------------------------------------------- real clients


def test_kid_separates_real_clients_of_the_partition(fashion_mnist) -> None:
    """KID issue, "done when", on clients made by ``partition()`` from real Fashion-MNIST:
    two halves of one client's test split are within two standard deviations of zero; a
    client with disjoint classes is far larger; noise larger still."""
    cfg = PartitionConfig(
        scheme="shards",
        classes_per_client=2,
        num_seen_clients=5,
        num_unseen_clients=0,
        seen_client_size=400,
        test_fraction=0.5,
        min_test_size=200,
        seed=0,
    )
    splits = {
        s.client: s for s in partition(fashion_mnist.test_images, fashion_mnist.test_labels, cfg)
    }
    a = splits["seen_00"]
    classes_a = set(np.unique(a.test_labels).tolist())
    assert len(classes_a) == 2
    other = next(
        s
        for c, s in sorted(splits.items())
        if c != a.client and not classes_a & set(np.unique(s.test_labels).tolist())
    )
    assert len(a.test_images) == 200 and len(other.test_images) == 200
    noise = np.random.default_rng(0).integers(0, 256, size=(100, 28, 28), dtype=np.uint8)
    extractor = build_feature_extractor("efficientnet_lite0", image_size=64, batch_size=100)
    f = extractor(np.concatenate([a.test_images, other.test_images[:100], noise]))
    half_a, half_b, f_other, f_noise = f[:100], f[100:200], f[200:300], f[300:]

    kw = {"num_subsets": 50, "max_subset_size": 50, "seed": 0}
    same_mean, same_std = kid(half_a, half_b, **kw)
    other_mean, _ = kid(half_a, f_other, **kw)
    noise_mean, _ = kid(half_a, f_noise, **kw)
    print(
        f"\nKID {a.client} {sorted(classes_a)} halves {same_mean:.4f} +- {same_std:.4f}; "
        f"vs {other.client} {sorted(set(other.test_labels.tolist()))} {other_mean:.4f}; "
        f"vs noise {noise_mean:.4f}"
    )
    assert same_std > 0
    assert abs(same_mean) < 2 * same_std
    assert other_mean > same_mean + 10 * same_std
    assert noise_mean > other_mean
