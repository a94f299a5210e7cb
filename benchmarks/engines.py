"""Seconds per round and bytes per round of each pretraining engine and Flower runtime.

Partitions the env's data with the pipeline's own node (parameters merged over `conf/base`, as
`kedro run --env` does), then pretrains `--methods` for `--rounds` rounds with each engine the
project has, through the engines the Kedro node uses (`make_engine`, `FlowerEngine`): the
`inprocess` engine, Flower's simulation runtime (Ray) and Flower's deployment runtime (a
SuperLink and one SuperNode per seen client, real processes on loopback). Every engine starts
from the same seed and trains the same clients; Flower's files, checkpoints and client storage
go to a temporary folder that is deleted afterwards.

Reported per (env, engine): the median seconds of the rounds after the first (warm), the first
round, the whole call including the processes' start-up and the clients' final export, and the
bytes sent down and up per round (from the round records).
Usage: python benchmarks/engines.py [--envs quick base] [--rounds 4] [--methods spire]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog

from spire_pipeline.flower.engine import FlowerEngine
from spire_pipeline.pipelines.data_partitioning.nodes import partition_clients
from spire_pipeline.pipelines.federated_pretraining.nodes import seen_clients
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.federated import InProcessEngine

ENGINES = [("inprocess", None), ("flower", "simulation"), ("flower", "deployment")]


def run_engine(cfg: PretrainingConfig, clients, folder: Path) -> tuple[float, list[dict]]:
    """Wall seconds of the whole call and the round records of the first method."""
    start = time.perf_counter()
    if cfg.engine == "flower":
        engine = FlowerEngine(cfg, clients, project_dir=folder)
    else:
        engine = InProcessEngine(cfg, clients)
    records = {}
    with engine:
        for method, _, history in engine.pretrain(cfg.methods, progress=False):
            records[method] = history
    return time.perf_counter() - start, records[cfg.methods[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["quick", "base"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=["spire"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = (
        f"{'env':>6} {'engine':>22} {'clients':>7} {'per round':>8} {'s/round warm':>12} "
        f"{'first s':>8} {'call s':>7} {'MB down/round':>13} {'MB up/round':>11}"
    )
    print(header)
    for env in args.envs:
        conf = OmegaConfigLoader("conf", base_env="base", default_run_env=env)
        params = conf["parameters"]
        catalog = DataCatalog.from_config(conf["catalog"])
        splits, _ = partition_clients(
            catalog.load("raw_train"), catalog.load("raw_test"), params["data_partitioning"]
        )
        clients, _ = seen_clients(splits)
        base = PretrainingConfig(**params["federated_pretraining"])
        for engine, runtime in ENGINES:
            with tempfile.TemporaryDirectory(prefix="engines-", dir="tmp") as tmp:
                folder = Path(tmp).resolve()
                (folder / "tmp").mkdir()
                flower = base.flower.model_copy(
                    update={
                        "runtime": runtime or base.flower.runtime,
                        "workdir": str(folder / "flower"),
                        "client_storage": str(folder / "clients"),
                        "audit_dir": None,
                    }
                )
                cfg = base.model_copy(
                    update={
                        "engine": engine,
                        "flower": flower,
                        "methods": args.methods,
                        "rounds": args.rounds,
                        "resume": False,
                        "checkpoint_dir": str(folder / "checkpoints"),
                    }
                )
                wall, history = run_engine(cfg, clients, folder)
            seconds = [h["seconds"] for h in history]
            label = engine if runtime is None else f"{engine}/{runtime}"
            per_round = np.mean([len(h["clients"]) for h in history])
            print(
                f"{env:>6} {label:>22} {len(clients):>7} {per_round:>8.1f} "
                f"{np.median(seconds[1:]) if len(seconds) > 1 else np.nan:>12.2f} "
                f"{seconds[0]:>8.2f} {wall:>7.1f} "
                f"{np.mean([h['bytes_down'] for h in history]) / 1e6:>13.2f} "
                f"{np.mean([h['bytes_up'] for h in history]) / 1e6:>11.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
