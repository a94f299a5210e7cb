"""Do a personalised client's samples follow its own classes more than before personalising?

For each pair of Fashion-MNIST classes, writes ``--images`` test images of the two classes as
PNG files (the user's folder), personalises the newest pretrained ``spire`` model to them with
the ``personalize`` pipeline's own node (the method's chosen settings, or ``--steps``), and
samples ``--samples`` images with the new embedding (*after*), with the embedding it started
from (*before*: the unpersonalised model a new client gets), with a zero embedding, and from
the ``fedavg`` model when there is one. The core's specificity classifier
(``spire/specificity.py``, trained on ``--classifier-images`` of the catalog's ``raw_train``)
labels every sample; the table gives the share of samples in the pair's classes (higher is
more specific; chance 0.2 for two of ten classes) and the total-variation distance of their
label histogram from the pair's 50/50 distribution (lower is better). The last lines compare
*after* with each unpersonalised model: the mean difference in the share, paired by sample
(every model starts from the same noise for the same seed), pooled over the pairs, with a 95 %
bootstrap interval over samples; and in how many pairs *after* is ahead.
Usage: python benchmarks/personalize_specificity.py [--env quick] [--pairs 1,7 0,9 3,8]
       [--images 50] [--samples 64] [--steps N] [--seed 0] [--threads N] [--version V]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _personal import project_config, two_class_folder

from spire_pipeline.datasets.partitions import resolve
from spire_pipeline.pipelines.personalize.nodes import embedding_bytes, personalize_client
from spire_pipeline.spire.client_images import read_images
from spire_pipeline.spire.generate import generate, generate_from
from spire_pipeline.spire.personalize import BASE_METHOD
from spire_pipeline.spire.specificity import (
    accuracy,
    predict,
    share_in_classes,
    train_classifier,
    tv_distance,
)
from spire_pipeline.spire.stats import bootstrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None)
    parser.add_argument("--pairs", nargs="+", default=["1,7", "0,9", "3,8"])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--classifier-images", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--version", default=None, help="a main job's save version (default: the newest)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    catalog, params = project_config(args.env)
    train, test = catalog.load("raw_train"), catalog.load("raw_test")
    n = args.classifier_images
    net = train_classifier(train["images"][:n], train["labels"][:n], 10, args.seed, progress=True)
    acc = accuracy(net, test["images"], test["labels"])
    pretrained = resolve(catalog.load("pretrained_models", version=args.version))
    spire = pretrained[BASE_METHOD]
    fedavg = pretrained.get("fedavg")
    choices = (
        catalog.load("adaptation_choices", version=args.version)
        if args.version
        else catalog.load("personalize_choices")
    )
    model, _ = spire.build(None)
    print(
        f"env {args.env or 'base'}; backbone {spire.backbone_cfg.block_out_channels}, "
        f"sampler {spire.diffusion_cfg.sampler} {spire.diffusion_cfg.sampler_steps} steps; "
        f"classifier accuracy on raw_test {acc:.3f}; {args.images} images per client, "
        f"{args.samples} samples per row"
    )
    header = ("classes", "real", "after", "before", "zero", "fedavg", "bytes", "s")
    print(" ".join(f"{h:>8}" for h in header) + "   (share in the classes | TV distance)")
    rows, inside = [], {}
    for k, pair in enumerate(args.pairs):
        classes = tuple(int(c) for c in pair.split(","))
        with tempfile.TemporaryDirectory() as tmp:
            folder = two_class_folder(
                test["images"], test["labels"], classes, args.images, Path(tmp)
            )
            images = read_images(folder)
            p = dict(params["personalize"], name=f"pair_{k}", seed=args.seed)
            if args.steps:
                p["steps"] = args.steps
            start = time.perf_counter()
            bundles, curve, _, preview = personalize_client(
                images, pretrained, choices, p, params["client_adaptation"]
            )
            seconds = time.perf_counter() - start
        bundle = bundles[f"pair_{k}"]
        real = np.stack(images.images)
        sampled = {
            "after": generate_from(
                model, bundle.embeddings[f"pair_{k}"], spire.backbone_cfg, spire.diffusion_cfg,
                args.samples, args.seed,
            ),
            "before": generate_from(
                model, preview["initial"], spire.backbone_cfg, spire.diffusion_cfg,
                args.samples, args.seed,
            ),
            "zero": generate_from(
                model, None, spire.backbone_cfg, spire.diffusion_cfg, args.samples, args.seed
            ),
        }  # fmt: skip
        if fedavg is not None:
            sampled["fedavg"] = generate(fedavg, None, args.samples, args.seed)
        target = np.zeros(10)
        target[list(classes)] = 0.5
        row = {"real": real, **sampled}
        predicted = {m: predict(net, x) for m, x in row.items()}
        shares = {m: share_in_classes(y, classes) for m, y in predicted.items()}
        for m, y in predicted.items():
            if m != "real":
                inside.setdefault(m, []).append(np.isin(y, classes).astype(float))
        tvs = {m: tv_distance(y, target) for m, y in predicted.items()}
        rows.append((shares, tvs))
        cells = [
            f"{shares[m]:.2f}|{tvs[m]:.2f}" if m in shares else "-"
            for m in ("real", "after", "before", "zero", "fedavg")
        ]
        print(
            f"{pair:>8} " + " ".join(f"{c:>8}" for c in cells)
            + f" {embedding_bytes(bundle):>8} {seconds:>8.1f}"
            + f"   val loss {curve['val_loss'].iloc[0]:.4f} -> {curve['val_loss'].iloc[-1]:.4f}"
        )  # fmt: skip
    keys = [m for m in ("real", "after", "before", "zero", "fedavg") if m in rows[0][0]]
    means = [
        f"{np.mean([r[0][m] for r in rows]):.2f}|{np.mean([r[1][m] for r in rows]):.2f}"
        for m in keys
    ]
    print(f"{'mean':>8} " + " ".join(f"{c:>8}" for c in means))
    after = np.concatenate(inside["after"])
    for m in [m for m in ("before", "zero", "fedavg") if m in inside]:
        ci = bootstrap(after - np.concatenate(inside[m]), statistic=np.mean, seed=args.seed)
        ahead = sum(a.mean() > b.mean() for a, b in zip(inside["after"], inside[m]))
        print(
            f"after - {m}: {ci.effect:+.3f} [{ci.ci_low:+.3f}, {ci.ci_high:+.3f}] in the share "
            f"({after.size} paired samples); after ahead in {ahead} of {len(rows)} pairs"
        )


if __name__ == "__main__":
    main()
