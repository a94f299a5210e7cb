"""The learning-rate x epochs grid of the adaptation methods (tuning and robustness sweep).

For each (method, client, learning rate) one adaptation runs for the largest epoch count, and
the parameters are snapshotted after each smaller count: a cell (lr, e) is exactly the model a
run of ``e`` epochs at ``lr`` would give (same seed, same batches, no schedule). A run whose
loss diverges is run again up to its last snapshot before the failing step; the cells after it
are reported as diverged instead of stopping the sweep. A cell in which any client diverged is
a diverged cell ("1/2 diverged"): it is never chosen and it counts as the worst cell.

The same grid serves three uses: on the tuning clients it chooses each method's learning rate
and epochs (:func:`choose`) and decides claim 4; the ``robustness_sweep`` pipeline runs a wider
one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from spire_pipeline.spire.adaptation import adapt, build_adapted
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import AdaptationConfig, SweepConfig
from spire_pipeline.spire.evaluation import EvalJob
from spire_pipeline.spire.federated import ClientData
from spire_pipeline.spire.job_cache import JobCache, cached_adapt
from spire_pipeline.spire.methods import ADAPTATION
from spire_pipeline.spire.training import ClientTrainingError

log = logging.getLogger(__name__)


class Grid(Protocol):
    """The methods and the learning-rate x epochs cells to run (a sweep or a tuning config)."""

    methods: list[str]
    learning_rates: list[float]
    epochs: list[int]


def sweep_jobs(
    pretrained: dict[str, ModelBundle],
    clients: Sequence[ClientData],
    sweep: Grid | SweepConfig,
    adaptation: AdaptationConfig,
    role: str = "unseen",
    phase: str = "sweep",
    cache: JobCache | None = None,
) -> tuple[list[EvalJob], list[dict]]:
    """Adapt every (method, client, lr) once: one KID job per grid cell, and the diverged cells.

    ``cache``: finished adaptations are kept there and reused (:mod:`.job_cache`)."""
    jobs, diverged = [], []
    runs = [(m, c, lr) for m in sweep.methods for c in clients for lr in sweep.learning_rates]
    for method, client, lr in tqdm(runs, desc=f"{phase}: adapt", unit="run"):
        per_epoch = math.ceil(client.num_samples / adaptation.local.batch_size)
        steps = {e: e * per_epoch for e in sweep.epochs}
        local = adaptation.local.model_copy(
            update={"steps": max(steps.values()), "epochs": None, "lr": lr, "embedding_lr": lr}
        )
        try:
            a = cached_adapt(
                cache,
                method,
                pretrained,
                client,
                adaptation,
                local=local,
                snapshot_steps=[*steps.values()],
                compute=adapt,
            )
        except ClientTrainingError as exc:
            done = [s for s in steps.values() if exc.step is not None and s <= exc.step]
            log.warning(
                "sweep %s lr=%g: %s; cells after step %s diverged", method, lr, exc, exc.step
            )
            for epochs, step in steps.items():
                if step not in done:
                    diverged.append(
                        {
                            "client": client.client,
                            "role": role,
                            "phase": phase,
                            "method": method,
                            "lr": lr,
                            "epochs": epochs,
                            "steps": step,
                            "error": str(exc),
                        }
                    )
            steps = {e: s for e, s in steps.items() if s in done}
            if not steps:
                continue
            local = local.model_copy(update={"steps": max(done)})
            a = cached_adapt(
                cache,
                method,
                pretrained,
                client,
                adaptation,
                local=local,
                snapshot_steps=done,
                compute=adapt,
            )
        for epochs, step in steps.items():
            b = a.snapshots[step]
            source = f"{phase}/{method}/{client.client}/{lr:g}/{epochs}"
            cond = client.client if ADAPTATION[method].conditional else None
            jobs.append(
                EvalJob(
                    client.client,
                    role,
                    method,
                    phase,
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
    return jobs, diverged


def with_diverged(table: pd.DataFrame, diverged: list[dict], extractor: str) -> pd.DataFrame:
    """The KID table of a grid plus one row (no KID) per diverged (client, cell)."""
    if diverged:
        failed = pd.DataFrame(diverged).assign(kid_mean=np.nan, extractor=extractor)
        table = pd.concat([table, failed], ignore_index=True)
    return table.assign(diverged=table["kid_mean"].isna())


def cell_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, lr, epochs): median KID over clients, and how many diverged.

    A cell in which any client diverged has no KID (``kid_mean`` NaN) and a ``status`` such as
    ``"1/2 diverged"``; the others read ``"ok"``.
    """
    diverged = table["kid_mean"].isna()
    g = table.assign(diverged=diverged).groupby(["method", "lr", "epochs"])
    cells = g.agg(
        kid_mean=("kid_mean", "median"),
        clients=("client", "nunique"),
        diverged_clients=("diverged", "sum"),
    ).reset_index()
    bad = cells["diverged_clients"] > 0
    cells.loc[bad, "kid_mean"] = np.nan
    cells["status"] = np.where(
        bad,
        cells["diverged_clients"].astype(int).astype(str)
        + "/"
        + cells["clients"].astype(str)
        + " diverged",
        "ok",
    )
    return cells


def sweep_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: median, best and worst KID over the grid, and the spread (worst / best).

    Cells in which any client diverged are left out of these and counted in ``diverged_cells``.
    """
    cells = cell_table(table)
    g = cells.groupby("method")["kid_mean"]
    out = pd.DataFrame({"kid_median": g.median(), "kid_best": g.min(), "kid_worst": g.max()})
    out["diverged_cells"] = cells["kid_mean"].isna().groupby(cells["method"]).sum()
    out["spread"] = out["kid_worst"] / out["kid_best"].clip(lower=1e-12)
    best = choose(cells).set_index("method")
    out["best_lr"], out["best_epochs"] = best["lr"], best["epochs"]
    return out.reset_index().sort_values("kid_median")


def choose(cells: pd.DataFrame) -> pd.DataFrame:
    """Per method, the cell with the lowest KID among cells where no client diverged.

    A method whose every cell diverged has no row.
    """
    finite = cells.dropna(subset=["kid_mean"])
    best = finite.loc[finite.groupby("method")["kid_mean"].idxmin()]
    return best[["method", "lr", "epochs", "kid_mean"]].reset_index(drop=True)
