"""Personalisation guidance (``eps = eps_null + w (eps_e - eps_null)``): w = 1 is plain
conditional sampling and w = 0 the null (zero-embedding) model, bit for bit, same seed; and the
embedding dropout in training that gives the null embedding its meaning."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from spire_pipeline.spire.config import BackboneConfig, DiffusionConfig
from spire_pipeline.spire.generate import generate_from
from spire_pipeline.spire.model import build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONE = BackboneConfig(block_out_channels=[8, 16], norm_num_groups=4, image_size=16)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_guidance_one_is_conditional_and_zero_is_the_null_model(sampler) -> None:
    diffusion = DiffusionConfig(num_train_timesteps=50, sampler=sampler, sampler_steps=4)
    model = build_backbone(BACKBONE, seed=0).eval()
    emb = 3.0 * torch.randn(32, generator=torch.Generator().manual_seed(1))

    def draw(e, w):
        return generate_from(model, e, BACKBONE, diffusion, 6, seed=5, guidance=w)

    plain = draw(emb, 1.0)
    np.testing.assert_array_equal(draw(emb, 1.0), plain)
    null = draw(torch.zeros(32), 1.0)
    np.testing.assert_array_equal(draw(emb, 0.0), null)
    stronger = draw(emb, 3.0)
    assert not np.array_equal(stronger, plain) and not np.array_equal(plain, null)


def _train(p: float, emb: torch.Tensor | None):
    """Train a tiny backbone (and ``emb`` when given) for 4 steps with embedding dropout p."""
    from spire_pipeline.spire.config import LocalTrainConfig
    from spire_pipeline.spire.diffusion import make_scheduler
    from spire_pipeline.spire.training import ParamGroup, local_train

    model = build_backbone(BACKBONE, seed=0)
    images = torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    groups = [ParamGroup(dict(model.named_parameters()), 1e-3)]
    if emb is not None:
        emb = emb.clone()
        groups.append(ParamGroup({"embedding": emb}, 0.1))
    cfg = LocalTrainConfig(steps=4, batch_size=8, embedding_dropout=p)
    zero = torch.zeros(1, 32)

    def denoise(x, t, c):
        return model(x, t, class_labels=zero.expand(len(x), -1) if c is None else c).sample

    sched = make_scheduler(DiffusionConfig(num_train_timesteps=50))
    res = local_train(denoise, groups, images, cfg, sched, seed=3, cond=emb)
    return res.params, res.losses


def test_embedding_dropout_trains_on_the_null_embedding_with_probability_p() -> None:
    emb = 3.0 * torch.randn(32, generator=torch.Generator().manual_seed(1))
    always, _ = _train(1.0, emb)  # every image sees the null embedding ...
    null, _ = _train(0.0, None)  # ... which is training without a condition, bit for bit
    for k, v in null.items():
        assert torch.equal(always[k], v), k
    assert torch.equal(always["embedding"], emb)  # and the embedding gets no gradient
    plain, plain_losses = _train(0.0, emb)
    again, again_losses = _train(0.0, emb)
    assert plain_losses == again_losses
    half, _ = _train(0.5, emb)
    assert not torch.equal(half["embedding"], plain["embedding"])
    assert not torch.equal(half["embedding"], emb)


def test_default_dropout_keeps_the_pretraining_fingerprint() -> None:
    """Checkpoints written before the option existed are still resumed (same fingerprint)."""
    from spire_pipeline.spire.config import PretrainingConfig
    from spire_pipeline.spire.federated import CHECKPOINT_FORMAT, ClientData, config_fingerprint

    clients = [ClientData("seen_00", torch.zeros(2, 1, 16, 16))]
    cfg = PretrainingConfig()
    dumped = cfg.model_dump_json()
    assert '"embedding_dropout":0.0' in dumped
    with_dropout = cfg.model_copy(
        update={"local": cfg.local.model_copy(update={"embedding_dropout": 0.1})}
    )
    assert config_fingerprint("spire", cfg, clients) != config_fingerprint(
        "spire", with_dropout, clients
    )
    # the default's fingerprint is that of the configuration without the key
    h = hashlib.sha256(f"spire/checkpoint-format-{CHECKPOINT_FORMAT}".encode())
    unrelated = {"resume", "checkpoint_dir", "threads", "methods", "engine", "flower"}
    unrelated |= {"grid_samples_per_client", "method_local_steps"}  # neither existed then
    old = cfg.model_dump(exclude=unrelated)
    del old["local"]["embedding_dropout"]
    h.update(json.dumps(old, separators=(",", ":")).encode())
    h.update(b"seen_00")
    h.update(clients[0].images.numpy().tobytes())
    assert config_fingerprint("spire", cfg, clients) == h.hexdigest()[:16]
