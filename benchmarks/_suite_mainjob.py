"""Suite rows on the main job: wall time per pipeline from the newest MLflow run, and a
projection of the heavy pipelines' time from this run's measured costs."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from _suite_common import Row

from spire_pipeline.spire.methods import ADAPTATION, PRETRAINING
from spire_pipeline.timing_hook import METRIC_PREFIX

#: conf/base's main job should take at most this long (issue 12)
TARGET_S = 20 * 60
MAIN_RUN_NAME = "__default__"


def newest_main_run(tracking_uri: str):
    """The newest finished ``kedro run`` of the main job in the store, or ``None``."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    experiments = client.search_experiments()
    if not experiments:
        return None
    runs = client.search_runs(
        [e.experiment_id for e in experiments],
        filter_string=f"tags.`mlflow.runName` LIKE '{MAIN_RUN_NAME}%' and status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def main_job_rows(tracking_uri: str) -> list[Row]:
    """Wall time per pipeline of the newest main-job run (``timing.*`` metrics of
    :class:`~spire_pipeline.timing_hook.PipelineTimingHook`), and its total."""
    try:
        run = newest_main_run(tracking_uri)
    except Exception as exc:  # an unreadable or foreign store: say so, do not invent
        return [Row("main job wall time, total", "n/a", "s", f"cannot read {tracking_uri}: {exc}")]
    if run is None:
        return [
            Row(
                "main job wall time, total",
                "n/a",
                "s",
                f"no finished main-job run ('{MAIN_RUN_NAME}') in {tracking_uri}: run `kedro run`",
                target=f"<= {TARGET_S} on conf/base",
                meets="n/a",
            )
        ]
    env = run.data.tags.get("env") or "base"
    started = datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M")
    what = f"MLflow run {run.info.run_id[:8]} ({started} UTC, env {env})"
    rows = []
    for key, value in sorted(run.data.metrics.items()):
        if key.startswith(METRIC_PREFIX) and key != f"{METRIC_PREFIX}total":
            pipeline = key.removeprefix(METRIC_PREFIX)
            rows.append(Row(f"main job wall time: {pipeline}", value, "s", what))
    total = run.data.metrics.get(f"{METRIC_PREFIX}total")
    if total is None:  # a run from before the timing hook: its start and end times
        total = (run.info.end_time - run.info.start_time) / 1000
        what += "; start to end (no per-pipeline timing in this run)"
    on_base = env in ("base", "local")
    rows.append(
        Row(
            "main job wall time, total",
            total,
            "s",
            what,
            TARGET_S,
            total / TARGET_S,
            f"<= {TARGET_S} on conf/base",
            total <= TARGET_S if on_base else f"n/a (env {env})",
        )
    )
    return rows


def sample_sets(num_seen: int, num_unseen: int, pretraining: list[str], adaptation: list[str]):
    """How many sets of samples the KID evaluation draws (shared sets counted once)."""
    per_client = sum(PRETRAINING[m].per_client for m in pretraining)
    shared = len(pretraining) - per_client
    return per_client * num_seen + shared + len(adaptation) * num_unseen


def projection_rows(params: dict, costs: dict, label: str) -> list[Row]:
    """The heavy pipelines' time, projected from per-step and per-image costs measured now.

    ``costs``: ``s_per_round`` (pretraining, per method), ``adapt_s_per_step`` (per method),
    ``sample_ips`` (images/s of the sampler), ``feature_ips``. Counts the tuning grid (one run
    per client, method and learning rate to the largest epoch count, KID per cell), the
    evaluation clients' adaptation (at the largest epoch count: an upper bound), KID and the
    forgetting draws. Partitioning, theory, reporting and I/O are left out (about 2 minutes).
    """
    fp = params["federated_pretraining"]
    ca = params["client_adaptation"]
    kd = params["kid_evaluation"]
    dp = params["data_partitioning"]
    pretraining = fp["rounds"] * costs["s_per_round"] * len(fp["methods"])
    tuning = ca.get("tuning") or {}
    epochs = max(tuning.get("epochs") or [ca["local"].get("epochs") or 1])
    per_epoch = math.ceil(dp["unseen_train_size"] / ca["local"]["batch_size"])
    steps = ca["local"]["steps"] or epochs * per_epoch
    unseen, tuners = dp["num_unseen_clients"], dp.get("num_tuning_clients", 0)
    lrs = len(tuning.get("learning_rates") or []) if tuners else 0
    adapt_s = sum(costs["adapt_s_per_step"].get(m, math.nan) for m in ca["methods"])
    adaptation = adapt_s * steps * (unseen + tuners * lrs)
    sets = sample_sets(dp["num_seen_clients"], unseen, fp["methods"], ca["methods"])
    grids = len(fp["methods"]) * dp["num_seen_clients"] * fp.get("grid_samples_per_client", 8)
    cells = tuners * lrs * len(tuning.get("epochs") or []) * len(ca["methods"])
    shared = [m for m in ca["methods"] if ADAPTATION[m].shares_weights]
    forgetting = (kd.get("forgetting_clients") or unseen) * len(shared) + kd.get(
        "forgetting_draws", 0
    ) * len(fp["methods"])
    images = (sets + forgetting) * kd["num_generated"] + cells * tuning.get("num_generated", 0)
    kid = (images + grids) / costs["sample_ips"] + images / costs["feature_ips"]
    total = pretraining + adaptation + kid
    parts = f"pretraining {pretraining:.0f}, adaptation and tuning {adaptation:.0f}, KID {kid:.0f}"
    return [
        Row(
            f"main job projected ({label}): {parts}",
            total,
            "s (projected)",
            "20 minutes",
            TARGET_S,
            total / TARGET_S,
            f"<= {TARGET_S}",
            total <= TARGET_S,
        )
    ]
