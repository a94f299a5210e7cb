"""What personalising one client costs on a CPU: SPIRE's new embedding against fine-tuning
every weight of the ``fedavg`` model, on the same images, steps and batch size.

Writes ``--images`` Fashion-MNIST test images of two classes as PNG files, reads them as
``personalize`` does, holds out the same 20 %, and trains each method with the core's
``adapt`` (what ``personalize`` and ``client_adaptation`` call) in a fresh child process
limited to ``--threads`` threads, so that its time and peak resident memory (RSS) are its own.
``spire`` uses the method's chosen settings (``adaptation_choices``, else ``client_adaptation``);
``full_finetune`` the ``client_adaptation`` learning rate for weights. The models are the
newest pretrained ones when they have the env's backbone, else (or with ``--random-weights``)
models of that architecture with random weights: time and memory do not depend on the values.
Prints a table: trained parameters, seconds, peak RSS and its rise over the RSS before
training, and the bytes the client keeps.
Usage: python benchmarks/personalize_cost.py [--env ENV] [--threads 2] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _personal import project_config, two_class_folder

METHODS = ("spire", "full_finetune")


def rss_mib() -> float:
    """The current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """Train one method and print what it cost as one JSON line."""
    import torch
    from safetensors.torch import save as safetensors_bytes

    torch.set_num_threads(args.threads)
    from spire_pipeline.datasets.partitions import resolve
    from spire_pipeline.spire.adaptation import adapt
    from spire_pipeline.spire.bundle import ModelBundle
    from spire_pipeline.spire.client_images import fit_images, read_images
    from spire_pipeline.spire.config import AdaptationConfig, PersonalizeConfig, PretrainingConfig
    from spire_pipeline.spire.diffusion import to_model_space
    from spire_pipeline.spire.federated import ClientData
    from spire_pipeline.spire.model import build_backbone, embedding_dim, state_of
    from spire_pipeline.spire.personalize import chosen_settings, split_indices

    catalog, params = project_config(args.env)
    pre_cfg = PretrainingConfig(**params["federated_pretraining"])
    adaptation = AdaptationConfig(**params["client_adaptation"])
    pretrained = {} if args.random_weights else resolve(catalog.load("pretrained_models"))
    weights = "pretrained"
    if any(
        m not in pretrained or pretrained[m].backbone_cfg != pre_cfg.backbone
        for m in ("spire", "fedavg")
    ):
        weights = "random"
        model = build_backbone(pre_cfg.backbone, seed=0)
        g = torch.Generator().manual_seed(0)
        seen = {f"seen_{k:02d}": torch.randn(embedding_dim(model), generator=g) for k in range(4)}
        pretrained = {
            m: ModelBundle(
                m, pre_cfg.backbone, pre_cfg.diffusion, backbone=state_of(model), embeddings=e
            )
            for m, e in (("spire", seen), ("fedavg", {}))
        }
    cfg = PersonalizeConfig(device="cpu", steps=args.steps)
    settings = chosen_settings(adaptation, catalog.load("personalize_choices"), cfg).adaptation
    if args.child != "spire":
        settings = settings.model_copy(update={"local": adaptation.local, "device": "cpu"})
        if args.steps:
            settings.local = settings.local.model_copy(update={"steps": args.steps, "epochs": None})
    backbone = pre_cfg.backbone
    images = fit_images(read_images(args.folder), backbone.channels, backbone.image_size, 2)
    train_idx, _ = split_indices(len(images), cfg.validation_share, cfg.seed)
    client = ClientData("new_client", to_model_space(images[train_idx]))
    before = rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    adapted = adapt(args.child, pretrained, client, settings)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tensors, meta = adapted.bundle.to_tensors()
    print(
        "RESULT "
        + json.dumps(
            {
                "method": args.child,
                "weights": weights,
                "trained": adapted.trained_params,
                "total": adapted.total_params,
                "steps": len(adapted.result.losses),
                "batch": settings.local.batch_size,
                "train_images": len(train_idx),
                "seconds": seconds,
                "cpu_seconds": cpu,
                "rss_before": before,
                "peak_rss": peak,
                "kept_bytes": len(safetensors_bytes(tensors, metadata=meta)),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--classes", default="1,7")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    catalog, _ = project_config(args.env)
    test = catalog.load("raw_test")
    classes = tuple(int(c) for c in args.classes.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = two_class_folder(test["images"], test["labels"], classes, args.images, Path(tmp))
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
        for method in METHODS:
            cmd = [sys.executable, __file__, "--child", method, "--folder", str(folder)]
            cmd += ["--threads", str(args.threads)]
            cmd += ["--env", args.env] if args.env else []
            cmd += ["--steps", str(args.steps)] if args.steps else []
            cmd += ["--random-weights"] if args.random_weights else []
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.split("RESULT ", 1)[1]))
    r0 = rows[0]
    print(
        f"env {args.env or 'base'}, {r0['weights']} weights ({r0['total']:,} in the backbone), "
        f"{args.threads} threads; {r0['train_images']} training images of classes {args.classes} "
        f"(+ {args.images - r0['train_images']} held out), batch {r0['batch']}"
    )
    head = ("method", "trained", "steps", "seconds", "CPU s", "s/step", "peak RSS", "rise", "kept")
    print(" ".join(f"{h:>12}" for h in head))
    for r in rows:
        print(
            f"{r['method']:>12} {r['trained']:>12,} {r['steps']:>12} {r['seconds']:>12.2f} "
            f"{r['cpu_seconds']:>12.2f} {r['seconds'] / r['steps']:>12.3f} "
            f"{r['peak_rss']:>8.0f} MiB {r['peak_rss'] - r['rss_before']:>8.0f} MiB "
            f"{r['kept_bytes']:>10,} B"
        )
    print(
        "trained: parameters trained; seconds: wall time of the training; CPU s: its CPU time "
        "(all threads); peak RSS: the child's maximum resident memory; rise: peak minus the RSS "
        "before training (models and images loaded); kept: the safetensors file of what the "
        "client keeps"
    )


if __name__ == "__main__":
    main()
