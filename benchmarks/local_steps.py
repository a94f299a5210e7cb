"""Rounds x local steps at equal compute, judged on the seen clients' validation images only.

Pretrains each method with several schedules of the same total step budget (for example 700
rounds of 2 local steps against 70 rounds of 20), then measures on the validation share of the
seen clients' train splits (held out of pretraining; never a test split): the DDPM loss
(paired, seeded), per-client KID of samples against the client's validation images, and, for a
conditional method, how client-specific its samples are (the share a classifier trained on the
seen clients' train splits puts in the client's own classes).

Partitions the catalog's raw data with the env's `data_partitioning` parameters through the
pipeline's own node (as `kedro run --env` does).
Usage: python benchmarks/local_steps.py [--env base] [--schedules 700x2,70x20] [--methods spire]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog

from spire_pipeline.pipelines.data_partitioning.nodes import partition_clients
from spire_pipeline.spire.config import KIDConfig, PretrainingConfig
from spire_pipeline.spire.diffusion import to_model_space
from spire_pipeline.spire.evaluation import kid_extractor, kid_extractor_label
from spire_pipeline.spire.federated import ClientData, derive_seed, pretrain
from spire_pipeline.spire.generate import generate
from spire_pipeline.spire.heldout import validation_table
from spire_pipeline.spire.kid import kid
from spire_pipeline.spire.methods import PRETRAINING
from spire_pipeline.spire.partition import splits_from_partitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="base")
    parser.add_argument("--schedules", default="700x2,70x20", help="ROUNDSxSTEPS,...")
    parser.add_argument("--methods", default="spire")
    parser.add_argument("--samples", type=int, default=64, help="samples per seen client")
    args = parser.parse_args()
    conf = OmegaConfigLoader("conf", base_env="base", default_run_env=args.env)
    params = conf["parameters"]
    catalog = DataCatalog.from_config(conf["catalog"])
    raw = (catalog.load("raw_train"), catalog.load("raw_test"))
    parts, _ = partition_clients(*raw, params["data_partitioning"])
    seen = [s for s in splits_from_partitions(parts).values() if s.role == "seen"]
    clients = [ClientData(s.client, to_model_space(s.train_images)) for s in seen]
    val = {s.client: to_model_space(s.val_images) for s in seen}
    kid_cfg = KIDConfig(**params["kid_evaluation"])
    extractor = kid_extractor(kid_cfg)
    real = {s.client: extractor(s.val_images) for s in seen}
    base = PretrainingConfig(**params["federated_pretraining"])
    n_val = len(seen[0].val_images)
    print(f"validation images per seen client: {n_val}; KID {kid_extractor_label(kid_cfg)}")
    print(f"{'method':>8} {'schedule':>9} {'minutes':>8} {'val loss':>9} {'val KID':>8}")
    for method in args.methods.split(","):
        for schedule in args.schedules.split(","):
            rounds, steps = (int(v) for v in schedule.split("x"))
            local = base.local.model_copy(update={"steps": steps})
            cfg = base.model_copy(update={"rounds": rounds, "local": local, "resume": False})
            start = time.perf_counter()
            bundle, _ = pretrain(method, cfg, clients, progress=True)
            minutes = (time.perf_counter() - start) / 60
            loss = validation_table({method: bundle}, val, cfg.seed)["val_loss"].mean()
            kids = []
            for k, s in enumerate(seen):
                client = s.client if PRETRAINING[method].per_client else None
                fake = generate(bundle, client, args.samples, seed=derive_seed(0, "val", k))
                kids.append(kid(extractor(fake), real[s.client], 50, 25, seed=k)[0])
            print(
                f"{method:>8} {schedule:>9} {minutes:>8.1f} {loss:>9.4f} {np.median(kids):>8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
