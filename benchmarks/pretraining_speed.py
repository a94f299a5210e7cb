"""Seconds per local training step and per sampling pass, for backbone sizes and batch sizes.

Prints a table; used to size conf/base (see README, "Sizing the default configuration").
Usage: python benchmarks/pretraining_speed.py [--steps 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from spire_pipeline.spire.config import BackboneConfig, DiffusionConfig, LocalTrainConfig
from spire_pipeline.spire.diffusion import make_sampler, make_scheduler, sample
from spire_pipeline.spire.model import build_backbone, count_parameters
from spire_pipeline.spire.training import ParamGroup, local_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dcfg = DiffusionConfig()
    sched = make_scheduler(dcfg)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{'channels':>10} {'params':>8} {'batch':>5} {'s/step':>7} {'s/100 samples (25 DDIM)':>24}"
    )
    for channels in ([16, 32], [32, 64]):
        bcfg = BackboneConfig(block_out_channels=channels)
        model = build_backbone(bcfg, seed=0).requires_grad_(False)
        dim = 4 * channels[0]
        emb = torch.randn(dim)

        def denoise(x, t, c, model=model):
            return model(x, t, class_labels=c).sample

        images = torch.rand(512, 1, 28, 28) * 2 - 1
        for batch in (16, 32, 64):
            cfg = LocalTrainConfig(steps=args.steps + 2, batch_size=batch)
            groups = [
                ParamGroup(dict(model.named_parameters()), 1e-3),
                ParamGroup({"e": emb.clone()}, 1e-2),
            ]
            res = local_train(
                denoise, groups, images, cfg, sched, seed=0, cond=groups[1].params["e"]
            )
            per_step = res.seconds / cfg.steps
            t0 = time.perf_counter()
            sample(denoise, make_sampler(sched, dcfg), 100, (1, 28, 28), emb, seed=0)
            samp = time.perf_counter() - t0 if batch == 32 else float("nan")
            print(
                f"{str(channels):>10} {count_parameters(model):>8} {batch:>5} {per_step:>7.3f} "
                f"{samp:>24.2f}"
            )


if __name__ == "__main__":
    main()
