"""Does the same seed give the same numbers with another torch thread count?

Runs ``local_train`` (the one training function of every method) from the same weights, images
and seed with 1 and with N torch threads, in fp32 and bf16, on the quick and base backbones, and
prints whether the losses and the trained weights are bit-identical, and if not, how far apart
they are (largest absolute difference; norm of the difference over the weights' norm). Then the
same for sampling (DDIM, uint8 images) from the 1-thread model.

Usage: python benchmarks/thread_determinism.py [--threads 2] [--steps 20] [--envs quick base]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _suite_common import load_parameters, random_images

from spire_pipeline.spire.config import DiffusionConfig, LocalTrainConfig, PretrainingConfig
from spire_pipeline.spire.diffusion import make_sampler, make_scheduler, sample
from spire_pipeline.spire.model import build_backbone, embedding_dim
from spire_pipeline.spire.training import ParamGroup, local_train


def train(pcfg: PretrainingConfig, precision: str, steps: int, threads: int):
    torch.set_num_threads(threads)
    model = build_backbone(pcfg.backbone, seed=0).requires_grad_(False)
    emb = torch.zeros(embedding_dim(model))
    bb = pcfg.backbone
    images = random_images(4 * pcfg.local.batch_size, bb.image_size, bb.channels, seed=1)
    cfg = LocalTrainConfig(steps=steps, batch_size=pcfg.local.batch_size, precision=precision)

    def denoise(x, t, c):
        return model(x, t, class_labels=c).sample

    groups = [
        ParamGroup(dict(model.named_parameters()), cfg.lr),
        ParamGroup({"embedding": emb}, cfg.embedding_lr),
    ]
    res = local_train(denoise, groups, images, cfg, make_scheduler(pcfg.diffusion), 3, cond=emb)
    weights = torch.cat([v.reshape(-1) for v in res.params.values()])
    return np.array(res.losses), weights, model, emb


def draw(model, emb, pcfg: PretrainingConfig, precision: str, threads: int) -> np.ndarray:
    torch.set_num_threads(threads)
    dcfg = DiffusionConfig(sampler="ddim", sampler_steps=10)
    sampler = make_sampler(make_scheduler(dcfg), dcfg)
    bb = pcfg.backbone
    shape = (bb.channels, bb.image_size, bb.image_size)
    return sample(model_fn(model), sampler, 32, shape, emb, seed=5, precision=precision)


def model_fn(model):
    def denoise(x, t, c):
        return model(x, t, class_labels=c).sample

    return denoise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--envs", nargs="+", default=["quick", "base"])
    args = parser.parse_args()
    n = args.threads
    print(f"torch {torch.__version__}; 1 vs {n} threads; {args.steps} local steps")
    print(
        "| env | precision | losses identical | max loss diff | weights identical "
        "| max weight diff (diff norm / norm) | samples identical | pixels differing (max diff) |"
    )
    print("|---|---|---|---:|---|---:|---|---:|")
    for env in args.envs:
        pcfg = PretrainingConfig.model_validate(load_parameters(env)["federated_pretraining"])
        for precision in ("fp32", "bf16"):
            l1, w1, m1, e1 = train(pcfg, precision, args.steps, 1)
            ln, wn, _, _ = train(pcfg, precision, args.steps, n)
            dw = (w1 - wn).abs()
            rel = float(dw.norm() / w1.norm())  # the difference against the weights' size
            s1 = draw(m1, e1, pcfg, precision, 1)
            sn = draw(m1, e1, pcfg, precision, n)
            ds = np.abs(s1.astype(int) - sn.astype(int))
            print(
                f"| {env} | {precision} | {np.array_equal(l1, ln)} | {np.abs(l1 - ln).max():.2e} "
                f"| {torch.equal(w1, wn)} | {float(dw.max()):.2e} ({rel:.1e}) "
                f"| {np.array_equal(s1, sn)} | {(ds > 0).mean():.2%} ({ds.max()}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
