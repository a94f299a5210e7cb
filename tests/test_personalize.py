"""Personalisation, serving a named client, and the diffusers export (issue 17), in-process on
a tiny random backbone: the mechanics that must hold on any model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from spire_pipeline.spire.adaptation import adapt
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import (
    AdaptationConfig,
    BackboneConfig,
    DiffusionConfig,
    GenerateConfig,
    LocalTrainConfig,
    PersonalizeConfig,
)
from spire_pipeline.spire.diffusion import to_model_space, to_uint8
from spire_pipeline.spire.export import load_export, save_export, to_diffusers
from spire_pipeline.spire.federated import ClientData
from spire_pipeline.spire.generate import generate_from
from spire_pipeline.spire.model import backbone_sha, build_backbone, embedding_dim, state_of
from spire_pipeline.spire.personalize import (
    Settings,
    chosen_settings,
    model_sha,
    personalize,
    split_indices,
    validation_loss,
)
from spire_pipeline.spire.serving import (
    UnknownClientError,
    model_for_client,
    sample_client,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONE = BackboneConfig(block_out_channels=[8, 16], norm_num_groups=4, image_size=28)
DIFFUSION = DiffusionConfig(num_train_timesteps=100, sampler="ddim", sampler_steps=4)


def pretrained(method: str, seed: int, clients: int = 3) -> ModelBundle:
    model = build_backbone(BACKBONE, seed=seed)
    g = torch.Generator().manual_seed(seed)
    dim = embedding_dim(model)
    embeddings = {f"seen_{k:02d}": torch.randn(dim, generator=g) for k in range(clients)}
    return ModelBundle(method, BACKBONE, DIFFUSION, backbone=state_of(model), embeddings=embeddings)


@pytest.fixture(scope="module")
def models() -> dict[str, ModelBundle]:
    fedavg = pretrained("fedavg", seed=1)
    fedavg.embeddings = {}
    return {"spire": pretrained("spire", seed=0), "fedavg": fedavg}


@pytest.fixture(scope="module")
def images(fashion_mnist) -> np.ndarray:
    labels = fashion_mnist.test_labels
    idx = np.concatenate([np.flatnonzero(labels == 1)[:15], np.flatnonzero(labels == 7)[:15]])
    return fashion_mnist.test_images[idx]


def settings(steps: int = 6, init: str = "mean_seen") -> Settings:
    cfg = AdaptationConfig(
        embedding_init=init, local=LocalTrainConfig(steps=steps, batch_size=8), device="cpu"
    )
    return Settings(cfg, "test")


@pytest.fixture(scope="module")
def personal(models, images):
    return personalize(models["spire"], images, "mine", settings(), validation_every=2)


def test_settings_come_from_the_tuning_choice_else_client_adaptation() -> None:
    adaptation = AdaptationConfig(local=LocalTrainConfig(steps=100, embedding_lr=0.05))
    cfg = PersonalizeConfig()
    fallback = chosen_settings(adaptation, None, cfg)
    assert fallback.adaptation.local.steps == 100 and fallback.adaptation.local.embedding_lr == 0.05
    assert fallback.source == "client_adaptation parameters"
    choices = pd.DataFrame(
        {
            "method": ["lora", "spire"],
            "lr": [1e-3, 0.2],
            "steps": [10, 40],
            "embedding_init": [None, "zeros"],
            "tuning_score": [5.0, 6.0],
        }
    )
    chosen = chosen_settings(adaptation, choices, cfg)
    assert chosen.source == "adaptation_choices"
    local = chosen.adaptation.local
    assert (local.embedding_lr, local.steps, chosen.adaptation.embedding_init) == (0.2, 40, "zeros")
    assert local.lr == adaptation.local.lr  # the weights' rate is not the embedding's
    no_row = chosen_settings(adaptation, choices[choices.method != "spire"], cfg)
    assert no_row.source == "client_adaptation parameters"
    by_epochs = choices.drop(columns="steps").assign(epochs=[1, 3])
    assert chosen_settings(adaptation, by_epochs, cfg).adaptation.local.epochs == 3
    mine = PersonalizeConfig(steps=7, lr=0.01, seed=5, device="cpu")
    over = chosen_settings(adaptation, choices, mine)
    assert over.adaptation.local.steps == 7 and over.adaptation.local.embedding_lr == 0.01
    assert over.adaptation.seed == 5 and "steps, lr from personalize" in over.source


def test_personalize_trains_only_a_new_embedding_and_leaves_the_backbone(
    models, images, personal
) -> None:
    spire = models["spire"]
    dim = embedding_dim(build_backbone(BACKBONE))
    bundle = personal.bundle
    assert set(bundle.embeddings) == {"mine"} and not bundle.backbone and not bundle.local
    assert personal.trained_params == dim and personal.embedding.shape == (dim,)
    assert bundle.info["base"] == "spire" and bundle.info["backbone_sha"] == model_sha(spire)
    assert (personal.num_train, personal.num_val) == (24, 6)
    # the initial embedding is the mean of the seen ones (mean_seen), and training moved it
    mean_seen = torch.stack(list(spire.embeddings.values())).mean(0)
    torch.testing.assert_close(personal.initial, mean_seen)
    assert not torch.equal(personal.embedding, personal.initial)
    tensors, meta = bundle.to_tensors()
    assert len(safetensors_bytes(tensors, metadata=meta)) < 4096


def test_the_validation_curve_uses_fixed_noise(models, images, personal) -> None:
    curve = personal.validation
    assert curve["step"].tolist() == [0, 2, 4, 6]
    _, val_idx = split_indices(len(images), 0.2, 0)
    x = to_model_space(images[val_idx])
    again = validation_loss(
        models["spire"],
        {0: personal.initial, 6: personal.embedding},
        x,
        seed=_validation_seed(),
        repeats=4,
        device=torch.device("cpu"),
    )
    # the same noise and timesteps for every embedding: the curve's points are these losses
    np.testing.assert_allclose(again["val_loss"], curve["val_loss"].iloc[[0, -1]], rtol=1e-6)
    other_seed = validation_loss(
        models["spire"], {0: personal.initial}, x, 123, 4, torch.device("cpu")
    )
    assert other_seed["val_loss"].iloc[0] != curve["val_loss"].iloc[0]


def _validation_seed() -> int:
    from spire_pipeline.spire.federated import derive_seed

    return derive_seed(0, "validation", "mine")


def test_personalize_is_reproducible(models, images, personal) -> None:
    again = personalize(models["spire"], images, "mine", settings(), validation_every=2)
    assert torch.equal(again.embedding, personal.embedding)
    pd.testing.assert_frame_equal(again.validation, personal.validation)


def test_a_seen_client_name_is_refused(models, images) -> None:
    with pytest.raises(ValueError, match="'seen_00' is already a client"):
        personalize(models["spire"], images, "seen_00", settings(steps=1))


def test_split_indices_hold_out_a_seeded_share() -> None:
    train, val = split_indices(50, 0.2, 0)
    assert len(val) == 10 and len(train) == 40 and not set(train) & set(val)
    assert np.array_equal(split_indices(50, 0.2, 0)[1], val)
    assert not np.array_equal(split_indices(50, 0.2, 1)[1], val)
    assert [len(s) for s in split_indices(2, 0.9, 0)] == [1, 1]


def test_each_kind_of_client_is_served(models, images, personal) -> None:
    spire = models["spire"]
    unseen = ClientData("unseen_00", to_model_space(images[:16]))
    cfg = AdaptationConfig(local=LocalTrainConfig(steps=1, batch_size=8), device="cpu")
    adapted = {f"{m}__unseen_00": adapt(m, models, unseen, cfg).bundle for m in ("spire", "bitfit")}
    mine = {"mine": personal.bundle}

    seen = model_for_client("seen_01", "spire", models, adapted, mine)
    assert seen.kind == "seen" and torch.equal(seen.embedding, spire.embeddings["seen_01"])
    unseen_served = model_for_client("unseen_00", "spire", models, adapted, mine)
    assert unseen_served.kind == "adapted"
    assert torch.equal(unseen_served.embedding, adapted["spire__unseen_00"].embeddings["unseen_00"])
    assert model_for_client("unseen_00", "bitfit", models, adapted, mine).kind == "adapted"
    own = model_for_client("mine", "spire", models, adapted, mine)
    assert own.kind == "personal" and torch.equal(own.embedding, personal.embedding)
    assert backbone_sha(state_of(own.model)) == personal.bundle.info["backbone_sha"]
    shared = model_for_client("anyone", "fedavg", models, adapted, mine)
    assert shared.kind == "shared" and shared.embedding is None

    with pytest.raises(UnknownClientError) as err:
        model_for_client("nobody", "spire", models, adapted, mine)
    assert str(err.value) == (
        "no spire model for client 'nobody'; known clients: mine (personal), seen_00 (seen), "
        "seen_01 (seen), seen_02 (seen), unseen_00 (adapted)"
    )
    retrained = {**models, "spire": pretrained("spire", seed=9)}
    with pytest.raises(ValueError, match="trained on backbone .* personalise 'mine' again"):
        model_for_client("mine", "spire", retrained, adapted, mine)


def test_same_seed_same_images(models, personal) -> None:
    served = model_for_client("mine", "spire", models, {}, {"mine": personal.bundle})
    cfg = GenerateConfig(client="mine", num=6, seed=3, device="cpu")
    first = sample_client(served, cfg)
    assert first.shape == (6, 28, 28) and first.dtype == np.uint8
    np.testing.assert_array_equal(sample_client(served, cfg), first)
    assert not np.array_equal(sample_client(served, cfg.model_copy(update={"seed": 4})), first)
    ddpm = cfg.model_copy(update={"sampler": "ddpm", "steps": 3})
    assert not np.array_equal(sample_client(served, ddpm), first)
    with pytest.raises(ValueError, match="at most the 100 timesteps"):
        sample_client(served, cfg.model_copy(update={"steps": 101}))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmsolver++"])
def test_the_diffusers_export_samples_like_the_project(tmp_path, models, personal, sampler) -> None:
    spire = models["spire"]
    spire = ModelBundle(
        "spire",
        spire.backbone_cfg,
        spire.diffusion_cfg.model_copy(update={"sampler": sampler}),
        backbone=spire.backbone,
        embeddings=spire.embeddings,
    )
    elsewhere = personal.bundle.embeddings["mine"].clone()
    stale = ModelBundle(
        "spire", BACKBONE, DIFFUSION, embeddings={"old": elsewhere}, info={"base": "spire"}
    )
    stale.info["backbone_sha"] = "0123456789abcdef"
    export = to_diffusers(spire, {"mine": personal.bundle, "old": stale})
    assert export.info["clients"] == {
        "seen_00": "seen",
        "seen_01": "seen",
        "seen_02": "seen",
        "mine": "personal",
    }
    save_export(export, tmp_path / "export")
    loaded = load_export(tmp_path / "export")
    assert type(loaded.sampler).__name__ == export.info["sampler_class"]
    emb = loaded.embeddings["mine"]
    torch.testing.assert_close(emb, personal.embedding, rtol=0, atol=0)

    n, seed = 5, 11
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 28, 28), generator=g)
    with torch.inference_mode():
        for t in loaded.sampler.timesteps:
            eps = loaded.unet(x, t.expand(n), class_labels=emb.expand(n, -1)).sample
            x = loaded.sampler.step(eps, t, x, generator=g).prev_sample
    model, _ = spire.build(None)
    ours = generate_from(model, personal.embedding, BACKBONE, spire.diffusion_cfg, n, seed)
    np.testing.assert_array_equal(to_uint8(x), ours)


def test_only_a_client_conditioned_backbone_is_exported(models) -> None:
    with pytest.raises(ValueError, match="the 'fedavg' model is not one"):
        to_diffusers(models["fedavg"])
