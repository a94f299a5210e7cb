"""The learning-rate x epochs robustness sweep of the adaptation methods.

For each (method, client, learning rate) one adaptation runs for the largest epoch count, and
the parameters are snapshotted after each smaller count: a cell (lr, e) is exactly the model a
run of ``e`` epochs at ``lr`` would give (same seed, same batches, no schedule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from tqdm.auto import tqdm

from spire_pipeline.spire.adaptation import adapt, build_adapted
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import AdaptationConfig, SweepConfig
from spire_pipeline.spire.evaluation import EvalJob
from spire_pipeline.spire.federated import ClientData


def sweep_jobs(
    pretrained: dict[str, ModelBundle],
    clients: Sequence[ClientData],
    sweep: SweepConfig,
    adaptation: AdaptationConfig,
) -> list[EvalJob]:
    """Adapt every (method, client, lr) once and return one KID job per grid cell."""
    jobs = []
    runs = [(m, c, lr) for m in sweep.methods for c in clients for lr in sweep.learning_rates]
    for method, client, lr in tqdm(runs, desc="sweep: adapt", unit="run"):
        per_epoch = math.ceil(client.num_samples / adaptation.local.batch_size)
        steps = {e: e * per_epoch for e in sweep.epochs}
        local = adaptation.local.model_copy(
            update={"steps": max(steps.values()), "epochs": None, "lr": lr, "embedding_lr": lr}
        )
        a = adapt(
            method, pretrained, client, adaptation, local=local, snapshot_steps=list(steps.values())
        )
        for epochs, step in steps.items():
            b = a.snapshots[step]
            source = f"sweep/{method}/{client.client}/{lr:g}/{epochs}"
            cond = client.client if method == "spire" else None
            jobs.append(
                EvalJob(
                    client.client,
                    "unseen",
                    method,
                    "sweep",
                    source,
                    cond,
                    build=lambda b=b, c=client.client: build_adapted(b, pretrained, c),
                    bundle=b,
                    extra={
                        "lr": lr,
                        "epochs": epochs,
                        "steps": step,
                        "final_loss": float(
                            sum(a.result.losses[step - max(1, step // 4) : step])
                            / max(1, step // 4)
                        ),
                    },
                )
            )
    return jobs


def sweep_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: median, best and worst KID over the grid, and the spread (worst / best)."""
    cells = table.groupby(["method", "lr", "epochs"])["kid_mean"].median().reset_index()
    g = cells.groupby("method")["kid_mean"]
    out = pd.DataFrame({"kid_median": g.median(), "kid_best": g.min(), "kid_worst": g.max()})
    out["spread"] = out["kid_worst"] / out["kid_best"].clip(lower=1e-12)
    best = cells.loc[cells.groupby("method")["kid_mean"].idxmin()].set_index("method")
    out["best_lr"], out["best_epochs"] = best["lr"], best["epochs"]
    return out.reset_index().sort_values("kid_median")
