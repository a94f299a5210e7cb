"""The compute-precision option: bf16 autocast in training and sampling, float32 state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spire_pipeline.spire import precision as prec
from spire_pipeline.spire.config import (
    BackboneConfig,
    DiffusionConfig,
    KIDConfig,
    LocalTrainConfig,
)
from spire_pipeline.spire.diffusion import make_sampler, make_scheduler, sample
from spire_pipeline.spire.model import build_backbone
from spire_pipeline.spire.training import ParamGroup, _optimizer, local_train
from spire_pipeline.spire.validation import ParameterError, validate_params

pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONE = BackboneConfig(block_out_channels=[8, 16], norm_num_groups=4)


def test_compute_dtype() -> None:
    assert prec.compute_dtype("fp32", "cpu") is None
    assert prec.compute_dtype("bf16", "cpu") is torch.bfloat16
    native = prec.cpu_has_native_bf16()
    assert (prec.compute_dtype("auto", "cpu") is torch.bfloat16) == native
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        prec.compute_dtype("fp8", "cpu")


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_follows_bf16_support(monkeypatch, supported) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert (prec.compute_dtype("auto", "cuda") is torch.bfloat16) == supported


def test_precision_is_validated() -> None:
    with pytest.raises(ParameterError, match=r"local\.precision = 'half'"):
        validate_params(LocalTrainConfig, {"precision": "half"}, "local")
    assert KIDConfig(precision="bf16").precision == "bf16"


def test_in_precision_runs_the_network_in_bf16_and_returns_fp32() -> None:
    lin = torch.nn.Linear(4, 4)
    seen = []

    def fn(x):
        out = lin(x)
        seen.append(out.dtype)
        return out

    out = prec.in_precision(fn, "bf16", "cpu")(torch.ones(2, 4))
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert prec.in_precision(fn, "fp32", "cpu") is fn


def _train(precision: str):
    model = build_backbone(BACKBONE, seed=0).requires_grad_(False)
    emb = torch.zeros(32)
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cfg = LocalTrainConfig(steps=6, batch_size=16, precision=precision)
    groups = [
        ParamGroup(dict(model.named_parameters()), cfg.lr),
        ParamGroup({"embedding": emb}, cfg.embedding_lr),
    ]

    def denoise(x, t, c):
        return model(x, t, class_labels=c).sample

    return local_train(
        denoise, groups, images, cfg, make_scheduler(DiffusionConfig()), seed=3, cond=emb
    )


def test_bf16_training_is_reproducible_and_keeps_fp32_weights() -> None:
    a, b = _train("bf16"), _train("bf16")
    assert a.losses == b.losses
    for k in a.params:
        assert a.params[k].dtype == torch.float32
        assert torch.equal(a.params[k], b.params[k]), k


def test_bf16_training_differs_from_fp32_but_stays_close() -> None:
    fp32, bf16 = _train("fp32"), _train("bf16")
    assert fp32.losses != bf16.losses  # autocast did act
    assert np.allclose(fp32.losses[0], bf16.losses[0], rtol=0.05)


def _sample(precision: str) -> np.ndarray:
    model = build_backbone(BACKBONE, seed=0).eval().requires_grad_(False)
    dcfg = DiffusionConfig(sampler="ddim", sampler_steps=4)

    def denoise(x, t, c):
        return model(x, t, class_labels=c).sample

    sampler = make_sampler(make_scheduler(dcfg), dcfg)
    return sample(denoise, sampler, 6, (1, 28, 28), torch.ones(32), seed=5, precision=precision)


def test_bf16_sampling_is_reproducible() -> None:
    a, b = _sample("bf16"), _sample("bf16")
    assert a.dtype == np.uint8 and a.shape == (6, 28, 28)
    assert np.array_equal(a, b)
    diff = np.abs(a.astype(int) - _sample("fp32").astype(int))
    assert diff.max() > 0 and diff.mean() < 20


def test_optimizer_is_fused_for_float32_tensors() -> None:
    w = torch.zeros(3, requires_grad=True)
    for name in ("adam", "adamw", "sgd"):
        opt = _optimizer(LocalTrainConfig(optimizer=name), [ParamGroup({"w": w}, 0.1)])
        assert opt.defaults["fused"] is True, name
    half = torch.zeros(3, dtype=torch.float16, requires_grad=True)
    opt = _optimizer(LocalTrainConfig(), [ParamGroup({"w": half}, 0.1)])
    assert not opt.defaults["fused"]
