"""Seconds per round and peak GPU memory of every pretraining method at `conf/paper` scale.

Partitions the catalog's `raw_train` and `raw_test` with the env's `data_partitioning`
parameters (catalog and parameters merged over `conf/base`, as `kedro run --env` does) through
the pipeline's own node, then runs its `federated_pretraining` methods for a few
rounds each through the core API (the code the Kedro nodes call) and projects the time of the
full run. The first method runs `--rounds` rounds, so that its last round shows the warm speed;
the others run `--rounds-others`.
Usage: python benchmarks/paper_throughput.py [--env paper] [--rounds 2] [--rounds-others 1]
"""

from __future__ import annotations

import argparse

import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog

from spire_pipeline.pipelines.data_partitioning.nodes import partition_clients
from spire_pipeline.pipelines.federated_pretraining.nodes import seen_clients
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.federated import pretrain
from spire_pipeline.spire.model import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="paper")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rounds-others", type=int, default=1)
    args = parser.parse_args()
    conf = OmegaConfigLoader("conf", base_env="base", default_run_env=args.env)
    params = conf["parameters"]
    catalog = DataCatalog.from_config(conf["catalog"])
    raw = (catalog.load("raw_train"), catalog.load("raw_test"))
    client_splits, _ = partition_clients(*raw, params["data_partitioning"])
    clients, _ = seen_clients(client_splits)
    full = PretrainingConfig(**params["federated_pretraining"])
    cfg = full.model_copy(update={"resume": False})
    device = resolve_device(cfg.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{args.env}: {len(clients)} seen clients, device {name}, torch {torch.__version__}")
    print(
        f"{'method':>12} {'rounds':>6} {'s/round (last)':>14} {'final loss':>10} "
        f"{'peak GPU MiB':>12} {'projected h':>11}"
    )
    for i, method in enumerate(cfg.methods):
        rounds = args.rounds if i == 0 else args.rounds_others
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        bundle, history = pretrain(
            method, cfg.model_copy(update={"rounds": rounds}), clients, progress=False
        )
        last = history[-1]["seconds"]
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        print(
            f"{method:>12} {rounds:>6} {last:>14.2f} {history[-1]['loss_mean']:>10.4f} "
            f"{peak:>12.0f} {last * full.rounds / 3600:>11.2f}"
        )
        if i == 0 and bundle.backbone:
            n = sum(v.numel() for v in bundle.backbone.values())
            up = history[-1]["bytes_up"]
            print(f"{'':>12} backbone {n:,} weights; bytes up per round {up:,}")


if __name__ == "__main__":
    main()
