"""Which input size should the EfficientNet-Lite0 KID features use on Fashion-MNIST?

For each input size, on real Fashion-MNIST test images, prints the extractor's speed on this
machine and KID's power to tell clients apart. Client A is footwear (classes {5, 7, 9}); it is
compared with

- ``same``: another draw of the same client (disjoint images): KID should be ~0;
- ``near``: a similar client (sandals and sneakers only, {5, 7});
- ``noisy``: the same client's images with Gaussian pixel noise (sigma ``--noise`` grey levels,
  default 6): same classes, worse image quality, what an imperfect generator does;
- ``far``: a client with disjoint classes (tops, {0, 2, 4, 6}).

KID is mean +- std over random subsets of ``--subset`` images (std is 0 when a subset is the
whole set, so the subset is smaller than a side), averaged over ``--repeats`` client draws from
feature pools extracted once per size. ``z_*`` is ``(KID - KID_same) / std_same``: how many noise
standard deviations separate the clients. ``cpu-ms`` is CPU time per image over all threads
(steadier than wall time on a shared machine); ``z/cpu-ms`` is ``min(z_near, z_noisy)`` per
CPU-millisecond per image.

    .venv/bin/python benchmarks/kid_input_size.py [--n 200] [--sizes 32 64 96 128 160 224]

On a machine shared with other busy processes, pass ``--threads 1`` (or set
``OMP_WAIT_POLICY=PASSIVE``): OpenMP threads spinning against other work can make torch's
default of one thread per core 10x slower than a single thread.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from spire_pipeline.spire.features import build_feature_extractor
from spire_pipeline.spire.idx import read_idx
from spire_pipeline.spire.kid import kid

ROOT = Path(__file__).resolve().parents[1]
DATA_DIRS = (ROOT / "data" / "01_raw" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))
FOOTWEAR, NEAR, TOPS = (5, 7, 9), (5, 7), (0, 2, 4, 6)


def load_test_set() -> tuple[np.ndarray, np.ndarray]:
    for folder in DATA_DIRS:
        images = folder / "t10k-images-idx3-ubyte.gz"
        labels = folder / "t10k-labels-idx1-ubyte.gz"
        if images.is_file() and labels.is_file():
            return read_idx(images), read_idx(labels)
    raise SystemExit(
        "Fashion-MNIST not found in data/01_raw/fashion-mnist or /usr/share/datasets/fashion-mnist"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="images per side")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 128, 160, 224])
    ap.add_argument("--subset", type=int, default=None, help="KID subset size (default n // 2)")
    ap.add_argument("--num-subsets", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5, help="client draws from the feature pools")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=6.0, help="noise sigma (grey levels)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, subset = args.n, args.subset or args.n // 2

    images, labels = load_test_set()
    rng = np.random.default_rng(args.seed)
    # Feature pools, extracted once per size; clients are drawn from them (disjoint within a draw).
    foot = rng.choice(np.flatnonzero(np.isin(labels, FOOTWEAR)), 6 * n, replace=False)
    tops = rng.choice(np.flatnonzero(np.isin(labels, TOPS)), 3 * n // 2, replace=False)
    held, foot = foot[:n], foot[n:]  # the noisy client: degraded copies of held-out footwear
    noisy = images[held] + rng.normal(0.0, args.noise, size=images[held].shape)
    noisy = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    pool = np.concatenate([images[foot], images[tops], noisy])
    foot_labels = labels[foot]

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}; "
        f"{n} images per side, KID over {args.num_subsets} subsets of {subset}, mean of "
        f"{args.repeats} client draws; A = footwear {FOOTWEAR}, near = {NEAR}, far = tops {TOPS}, "
        f"noisy = footwear + N(0, {args.noise:g}^2)"
    )
    header = (
        f"{'size':>4} {'img/s':>6} {'cpu-ms':>6} {'KID same':>18} {'KID near':>18} "
        f"{'KID noisy':>18} {'KID far':>18} {'z_near':>6} {'z_noisy':>7} {'z_far':>6} "
        f"{'z/cpu-ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        extractor = build_feature_extractor(
            "efficientnet_lite0", image_size=size, batch_size=args.batch_size
        )
        extractor(pool[: 2 * args.batch_size], progress=False)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        feats = extractor(pool, progress=False)
        seconds = (time.perf_counter() - t0) / len(pool)
        cpu_ms = 1000 * (time.process_time() - c0) / len(pool)
        f_foot, f_tops, f_noisy = np.split(feats, [len(foot), len(foot) + len(tops)])

        rows = []
        for r in range(args.repeats):
            draw = np.random.default_rng(args.seed + 1 + r)
            order = draw.permutation(len(foot))
            a1, a2, rest = order[:n], order[n : 2 * n], order[2 * n :]
            near = rest[np.isin(foot_labels[rest], NEAR)][:n]
            assert len(near) == n, "footwear pool too small for the near client"
            far = draw.choice(len(tops), n, replace=False)
            kw = {"num_subsets": args.num_subsets, "max_subset_size": subset, "seed": r}
            rows.append(
                [
                    kid(f_foot[a1], f_foot[a2], **kw),
                    kid(f_foot[a1], f_foot[near], **kw),
                    kid(f_foot[a1], f_noisy, **kw),
                    kid(f_foot[a1], f_tops[far], **kw),
                ]
            )
        rows = np.asarray(rows)  # (repeats, comparisons, mean/std)
        z = ((rows[:, 1:, 0] - rows[:, :1, 0]) / rows[:, :1, 1]).mean(axis=0)
        kids = " ".join(f"{f'{m:.3g} +- {s:.2g}':>18}" for m, s in rows.mean(axis=0))
        print(
            f"{size:>4} {1 / seconds:6.1f} {cpu_ms:6.2f} {kids} {z[0]:6.1f} {z[1]:7.1f} "
            f"{z[2]:6.1f} {min(z[0], z[1]) / cpu_ms:8.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
