"""The resource check's memory estimate (``spire/resources.py``) against the measured peak.

For each env's backbone, precision and batch size, one fresh process builds the backbone and
runs ``local_train`` (two steps: the second holds weights, Adam's moments, gradients and the
batch's activations at once), and one draws a batch of samples (two DDIM steps). Each is
measured from its own baseline: a warm-up of the same job first (torch's lazy set-up), then the
peak resident set size is reset (``/proc/self/clear_refs``) and the job's peak above that
baseline is what it needed. Large blocks go to mmap (``MALLOC_MMAP_THRESHOLD_``), so freed
tensors leave the resident set. CPU only; weights and images are random (memory does not
depend on their values).

Usage: python benchmarks/memory_estimate.py [--envs quick base] [--batches 16 128]
       [--precisions fp32 bf16] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

from _suite_common import MMAP_THRESHOLD, ROOT, load_parameters

from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.resources import backbone_cost, sampling_bytes, training_bytes

MIB = 2**20


def worker(job: dict) -> dict:
    """Peak memory (MiB above the baseline) of one training or sampling job."""
    import torch
    from _suite_common import peak_rss_mib, random_images, reset_peak_rss

    from spire_pipeline.spire.config import BackboneConfig, DiffusionConfig, LocalTrainConfig
    from spire_pipeline.spire.diffusion import make_sampler, make_scheduler, sample
    from spire_pipeline.spire.model import build_backbone, embedding_dim
    from spire_pipeline.spire.training import ParamGroup, local_train

    torch.set_num_threads(job["threads"])
    bb = BackboneConfig(**job["backbone"])
    batch, precision = job["batch"], job["precision"]
    images = random_images(batch, bb.image_size, bb.channels, seed=0)
    dcfg = DiffusionConfig(sampler="ddim", sampler_steps=2)
    scheduler = make_scheduler(dcfg)

    def run() -> None:
        model = build_backbone(bb, seed=0).requires_grad_(False)
        emb = torch.zeros(embedding_dim(model))

        def denoise(x, t, c):
            return model(x, t, class_labels=c).sample

        if job["kind"] == "train":
            cfg = LocalTrainConfig(steps=2, batch_size=batch, precision=precision)
            groups = [
                ParamGroup(dict(model.named_parameters()), cfg.lr),
                ParamGroup({"embedding": emb}, cfg.embedding_lr),
            ]
            local_train(denoise, groups, images, cfg, scheduler, seed=0, cond=emb)
        else:
            sampler = make_sampler(scheduler, dcfg)
            shape = (bb.channels, bb.image_size, bb.image_size)
            sample(denoise, sampler, batch, shape, emb, 0, batch_size=batch, precision=precision)

    run()  # warm-up
    gc.collect()
    base = reset_peak_rss()
    run()
    return {"peak_mib": peak_rss_mib() - base}


def measure(job: dict) -> float:
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["quick", "base"])
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 128])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    print(f"{args.threads} torch thread(s); MiB above the job's baseline")
    print("| env | backbone (weights) | step | precision | batch | estimate | measured | ratio |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for env in args.envs:
        pcfg = PretrainingConfig.model_validate(load_parameters(env)["federated_pretraining"])
        cost = backbone_cost(pcfg.backbone)
        for kind in ("train", "sample"):
            for precision in args.precisions:
                for batch in args.batches:
                    if kind == "train":
                        fixed, per = training_bytes(cost, precision)
                    else:
                        fixed, per = sampling_bytes(cost, precision)
                    estimate = (fixed + per * batch) / MIB
                    job = {
                        "kind": kind,
                        "backbone": pcfg.backbone.model_dump(),
                        "batch": batch,
                        "precision": precision,
                        "threads": args.threads,
                    }
                    measured = measure(job)
                    print(
                        f"| {env} | {pcfg.backbone.block_out_channels} ({cost.params:,}) "
                        f"| {'local_train' if kind == 'train' else 'sampling'} | {precision} "
                        f"| {batch} | {estimate:.1f} | {measured:.1f} "
                        f"| {estimate / measured:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
