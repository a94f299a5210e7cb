"""Personalisation guidance (``eps = eps_null + w (eps_e - eps_null)``): w = 1 is plain
conditional sampling and w = 0 the null (zero-embedding) model, bit for bit, same seed."""

from __future__ import annotations

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
