"""Unseen-client adaptation (``spire_pipeline.spire.adaptation``): what each method trains, what
its bundle stores, what stays bit-identical to the pretrained model, embedding inits, snapshots
(which the robustness sweep relies on) and a clear error when a base model is missing.

Everything runs on a tiny UNet (widths [8, 16], 16x16 images) pretrained for one round on two
clients, adapted for a few steps on one CPU thread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import spire_pipeline.spire.adaptation as adaptation_mod
from spire_pipeline.spire.adaptation import (
    BASE,
    LORA_TARGETS,
    Adapted,
    adapt,
    build_adapted,
    initial_embedding,
)
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import (
    ADAPTATION_METHODS,
    AdaptationConfig,
    PretrainingConfig,
)
from spire_pipeline.spire.federated import ClientData, derive_seed, pretrain
from spire_pipeline.spire.generate import generate_from
from spire_pipeline.spire.model import backbone_sha, build_backbone

SIZE = 16
WIDTHS = [8, 16]
CLIENT = "unseen_00"
STEPS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def pretraining_cfg() -> PretrainingConfig:
    return PretrainingConfig.model_validate(
        dict(
            seed=0,
            methods=["spire", "fedavg"],
            backbone=dict(block_out_channels=WIDTHS, norm_num_groups=4, image_size=SIZE),
            diffusion=dict(num_train_timesteps=100, sampler_steps=2),
            rounds=1,
            client_fraction=1.0,
            min_clients=1,
            local=dict(steps=1, batch_size=4),
        )
    )


def adaptation_cfg(**overrides) -> AdaptationConfig:
    params = dict(
        seed=0,
        embedding_init="mean_seen",
        local=dict(steps=STEPS, batch_size=4, lr=1e-2, embedding_lr=5e-2),
        lora_rank=2,
        lora_alpha=2.0,
    )
    params.update(overrides)
    return AdaptationConfig.model_validate(params)


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, SIZE, SIZE, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def pretrained() -> dict[str, ModelBundle]:
    """Tiny ``spire`` and ``fedavg`` bundles: one round on two seen clients."""
    seen = [ClientData(f"seen_{k:02d}", images(8, k)) for k in range(2)]
    cfg = pretraining_cfg()
    return {m: pretrain(m, cfg, seen, progress=False)[0] for m in ("spire", "fedavg")}


@pytest.fixture(scope="module")
def unseen() -> ClientData:
    return ClientData(CLIENT, images(12, 99))


@pytest.fixture(scope="module")
def adapted(pretrained, unseen) -> dict[str, Adapted]:
    """Every adaptation method, adapted once to the unseen client (the pretrained bundles are
    checked afterwards to be untouched)."""
    before = {m: {k: v.clone() for k, v in b.backbone.items()} for m, b in pretrained.items()}
    out = {m: adapt(m, pretrained, unseen, adaptation_cfg()) for m in ADAPTATION_METHODS}
    for m, b in pretrained.items():
        assert set(b.backbone) == set(before[m])
        assert all(torch.equal(v, before[m][k]) for k, v in b.backbone.items()), m
    return out


def round_trip(bundle: ModelBundle) -> ModelBundle:
    """What the pipeline stores and the KID evaluation loads (safetensors layout)."""
    tensors, meta = bundle.to_tensors()
    return ModelBundle.from_tensors(tensors, meta)


# ----------------------------------------------------------------------------- independent counts


def plain_model() -> nn.Module:
    return build_backbone(pretraining_cfg().backbone, seed=0)


def count_all() -> int:
    return sum(p.numel() for p in plain_model().parameters())


def count_biases() -> int:
    return sum(
        m.bias.numel()
        for m in plain_model().modules()
        if isinstance(getattr(m, "bias", None), nn.Parameter)
    )


def count_head() -> int:
    model = plain_model()
    return sum(p.numel() for p in model.conv_norm_out.parameters()) + sum(
        p.numel() for p in model.conv_out.parameters()
    )


def count_lora(rank: int) -> int:
    """peft's adapters: ``A`` (in -> r, the layer's kernel) and ``B`` (r -> out, 1x1), no bias."""
    total = 0
    for name, m in plain_model().named_modules():
        if name.rsplit(".", 1)[-1] not in LORA_TARGETS:
            continue
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += rank * (m.in_channels * kh * kw) + rank * m.out_channels
        elif isinstance(m, nn.Linear):
            total += rank * m.in_features + rank * m.out_features
        else:
            raise AssertionError(f"unexpected LoRA target {name}: {type(m)}")
    return total


def expected_count(method: str) -> int:
    return {
        "spire": 4 * WIDTHS[0],  # the embedding: as wide as the time embedding
        "full_finetune": count_all(),
        "scratch": count_all(),
        "bitfit": count_biases(),
        "head": count_head(),
        "lora": count_lora(adaptation_cfg().lora_rank),
    }[method]


def is_trained(method: str, name: str) -> bool:
    """Whether ``name`` (a parameter of the adapted model) is one ``method`` trains."""
    if method in ("full_finetune", "scratch"):
        return True
    if method == "bitfit":
        return name.endswith(".bias")
    if method == "head":
        return name.startswith(("conv_norm_out.", "conv_out."))
    if method == "lora":
        return ".lora_A." in name or ".lora_B." in name
    return False  # spire: no model weight


def test_methods_are_the_documented_ones() -> None:
    assert set(ADAPTATION_METHODS) == set(BASE)
    assert BASE["spire"] == "spire" and BASE["scratch"] is None
    assert {BASE[m] for m in ("full_finetune", "lora", "bitfit", "head")} == {"fedavg"}


@pytest.mark.parametrize("method", ADAPTATION_METHODS)
def test_trained_parameter_count_and_pct(method, adapted) -> None:
    a = adapted[method]
    assert a.trained_params == expected_count(method)
    assert a.total_params == count_all()
    assert a.trained_pct == pytest.approx(100.0 * a.trained_params / count_all(), rel=1e-12)
    if method in ("full_finetune", "scratch"):
        assert a.trained_pct == pytest.approx(100.0)
    else:
        assert 0 < a.trained_pct < 100
    assert len(a.result.losses) == STEPS and np.isfinite(a.result.losses).all()
    assert a.seconds > 0


@pytest.mark.parametrize("method", ADAPTATION_METHODS)
def test_bundle_stores_only_what_was_trained(method, adapted) -> None:
    a = adapted[method]
    tensors, _ = a.bundle.to_tensors()
    assert a.bundle.method == method and a.bundle.info["base"] == BASE[method]
    assert a.bundle.backbone == {} and a.bundle.heads == {}
    if method == "spire":
        assert set(tensors) == {f"embedding/{CLIENT}"}
        assert tensors[f"embedding/{CLIENT}"].shape == (4 * WIDTHS[0],)
        assert a.bundle.info["embedding_init"] == "mean_seen"
    else:
        assert a.bundle.embeddings == {}
        prefix = f"local/{CLIENT}/"
        assert all(k.startswith(prefix) for k in tensors)
        names = [k.removeprefix(prefix) for k in tensors]
        assert all(is_trained(method, n) for n in names), names
        assert sum(v.numel() for v in tensors.values()) == expected_count(method)
        assert a.bundle.info["embedding_init"] is None
    assert all(torch.isfinite(v).all() for v in tensors.values())


@pytest.mark.parametrize("method", ADAPTATION_METHODS)
def test_everything_not_trained_is_the_base_model_bit_for_bit(method, adapted, pretrained) -> None:
    bundle = round_trip(adapted[method].bundle)
    model, emb = build_adapted(bundle, pretrained, CLIENT)
    state = model.state_dict()
    base = pretrained[BASE[method]].backbone if BASE[method] else {}
    trained = {n for n in state if is_trained(method, n)}
    untrained = set(state) - trained
    stored = bundle.local.get(CLIENT, {})
    assert set(stored) == trained
    for name in trained:  # loaded from the bundle
        assert torch.equal(state[name], stored[name]), name
    # peft renames the wrapped layers' own weights ``<layer>.base_layer.<weight>``
    base_names = {n.replace(".base_layer.", "."): n for n in untrained}
    assert len(base_names) == len(untrained)
    if method == "lora":  # adapters on top of every base weight
        assert set(base_names) == set(base)
    elif BASE[method] is not None:
        assert set(base_names) | trained == set(base)
    for base_name, name in base_names.items():
        assert torch.equal(state[name], base[base_name]), name
    if method == "spire":
        assert trained == set()
        assert torch.equal(emb, adapted[method].bundle.embeddings[CLIENT])
    else:
        assert emb is None
    if method not in ("scratch", "spire"):  # training moved what it trained
        assert any(
            not torch.equal(stored[n], base.get(n, torch.zeros_like(stored[n]))) for n in stored
        )


def test_spire_backbone_unchanged(adapted, pretrained) -> None:
    bundle = adapted["spire"].bundle
    sha = backbone_sha(pretrained["spire"].backbone)
    assert bundle.info["backbone_sha"] == sha
    model, _ = build_adapted(bundle, pretrained, CLIENT)
    assert backbone_sha(model.state_dict()) == sha
    assert not torch.equal(  # while the embedding did learn
        bundle.embeddings[CLIENT],
        initial_embedding("mean_seen", pretrained["spire"], 4 * WIDTHS[0], 0),
    )
    for method in ADAPTATION_METHODS:
        if method != "spire":
            assert adapted[method].bundle.info["backbone_sha"] is None


@pytest.mark.parametrize("method", ADAPTATION_METHODS)
def test_adapted_model_generates_images(method, adapted, pretrained) -> None:
    bundle = round_trip(adapted[method].bundle)
    model, emb = build_adapted(bundle, pretrained, CLIENT)
    out = generate_from(model, emb, bundle.backbone_cfg, bundle.diffusion_cfg, 3, seed=1, steps=2)
    assert out.shape == (3, SIZE, SIZE) and out.dtype == np.uint8


# ----------------------------------------------------------------------------- embedding inits


def test_initial_embedding_inits(pretrained) -> None:
    spire = pretrained["spire"]
    table = torch.stack([spire.embeddings[c] for c in sorted(spire.embeddings)])
    dim = table.shape[1]
    assert torch.equal(initial_embedding("zeros", spire, dim, 0), torch.zeros(dim))
    torch.testing.assert_close(initial_embedding("mean_seen", spire, dim, 0), table.mean(0))
    assert torch.equal(  # a subset of seen clients
        initial_embedding("mean_seen", spire, dim, 0, seen=["seen_01"]), spire.embeddings["seen_01"]
    )
    r = initial_embedding("random", spire, dim, 3)
    assert r.shape == (dim,)
    assert torch.equal(r, initial_embedding("random", spire, dim, 3))  # seeded
    assert not torch.equal(r, initial_embedding("random", spire, dim, 4))
    # N(0, s^2), s the seen embeddings' RMS: check the scale on a long draw
    rms = float(table.pow(2).mean().sqrt())
    long = initial_embedding("random", spire, 20_000, 0)
    assert float(long.std()) == pytest.approx(rms, rel=0.05)
    assert abs(float(long.mean())) < 0.05 * rms
    with pytest.raises(ValueError, match="unknown embedding init"):
        initial_embedding("ones", spire, dim, 0)


@pytest.mark.parametrize("how", ["zeros", "mean_seen", "random"])
def test_adapt_starts_spire_from_the_configured_init(how, pretrained, unseen, monkeypatch) -> None:
    starts = []
    original = adaptation_mod.local_train

    def spy(denoise, groups, *args, **kwargs):
        starts.append({k: v.clone() for g in groups for k, v in g.params.items()})
        return original(denoise, groups, *args, **kwargs)

    monkeypatch.setattr(adaptation_mod, "local_train", spy)
    cfg = adaptation_cfg(embedding_init=how, local=dict(steps=1, batch_size=4))
    a = adapt("spire", pretrained, unseen, cfg)
    (start,) = starts
    assert set(start) == {"embedding"}
    dim = 4 * WIDTHS[0]
    seed = derive_seed(cfg.seed, "adapt", "spire", CLIENT)
    assert torch.equal(start["embedding"], initial_embedding(how, pretrained["spire"], dim, seed))
    assert a.bundle.info["embedding_init"] == how
    assert not torch.equal(a.bundle.embeddings[CLIENT], start["embedding"])


# ----------------------------------------------------------------------------- snapshots


def bundle_tensors(b: ModelBundle) -> dict[str, torch.Tensor]:
    return b.to_tensors()[0]


@pytest.mark.parametrize("method", ADAPTATION_METHODS)
def test_snapshot_equals_a_separate_shorter_run(method, pretrained, unseen) -> None:
    cfg = adaptation_cfg()
    long = adapt(
        method,
        pretrained,
        unseen,
        cfg,
        local=cfg.local.model_copy(update={"steps": 3}),
        snapshot_steps=[1, 3],
    )
    assert sorted(long.snapshots) == [1, 3]
    short = adapt(method, pretrained, unseen, cfg, local=cfg.local.model_copy(update={"steps": 1}))
    for step, ref in ((1, short.bundle), (3, long.bundle)):
        snap = long.snapshots[step]
        assert snap.info["steps"] == step
        got, want = bundle_tensors(snap), bundle_tensors(ref)
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), f"{method}: {k} at step {step}"
        assert snap.info["backbone_sha"] == long.bundle.info["backbone_sha"]
    # snapshots are copies, not views of tensors that kept training
    assert any(
        not torch.equal(v, bundle_tensors(long.bundle)[k])
        for k, v in bundle_tensors(long.snapshots[1]).items()
    )


def test_same_seed_same_adaptation_bitwise(pretrained, unseen) -> None:
    cfg = adaptation_cfg()
    for method in ("lora", "scratch", "spire"):
        a = bundle_tensors(adapt(method, pretrained, unseen, cfg).bundle)
        torch.manual_seed(12345)  # the global RNG state must not matter
        b = bundle_tensors(adapt(method, pretrained, unseen, cfg).bundle)
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a), method


# ----------------------------------------------------------------------------- missing base models


@pytest.mark.parametrize("method", ["full_finetune", "lora", "bitfit", "head"])
def test_missing_fedavg_model_names_the_method_to_add(method, pretrained, unseen) -> None:
    only_spire = {"spire": pretrained["spire"]}
    with pytest.raises(
        KeyError,
        match=r"needs the pretrained 'fedavg' model.*add 'fedavg' to "
        r"federated_pretraining\.methods",
    ):
        adapt(method, only_spire, unseen, adaptation_cfg())


def test_missing_spire_model_names_the_method_to_add(pretrained, unseen) -> None:
    with pytest.raises(KeyError, match=r"'spire'.*add 'spire' to federated_pretraining\.methods"):
        adapt("spire", {"fedavg": pretrained["fedavg"]}, unseen, adaptation_cfg())


def test_scratch_needs_no_base_model(pretrained, unseen) -> None:
    a = adapt(
        "scratch",
        {"spire": pretrained["spire"]},
        unseen,
        adaptation_cfg(local=dict(steps=1, batch_size=4)),
    )
    assert a.bundle.info["base"] is None and a.trained_params == count_all()


def test_unknown_method_is_rejected(pretrained, unseen) -> None:
    with pytest.raises(KeyError):
        adapt("prompt", pretrained, unseen, adaptation_cfg())
    with pytest.raises(ValueError):
        AdaptationConfig.model_validate({"methods": ["prompt"]})
