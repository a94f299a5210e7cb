"""Wall time per pipeline of a ``kedro run``, logged to its MLflow run (``timing.*`` metrics).

kedro-mlflow records no time per node or pipeline. This hook charges the wall time between
consecutive node events (a node finishing, one of its outputs saved) to the pipeline that node
belongs to (the ``pipelines/<name>/`` folder of its function), so the parts add up to the run's
wall time, loading and saving included. At the end it logs ``timing.<pipeline>`` and
``timing.total`` (seconds) and prints the table; ``benchmarks/suite.py`` reads them back.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

log = logging.getLogger(__name__)

METRIC_PREFIX = "timing."
_PACKAGE = "spire_pipeline.pipelines."


def pipeline_of(node) -> str:
    """The pipeline folder a node's function lives in (``other`` when outside ``pipelines/``)."""
    module = getattr(getattr(node, "func", None), "__module__", "") or ""
    if module.startswith(_PACKAGE):
        return module.removeprefix(_PACKAGE).split(".")[0]
    return "other"


class PipelineTimingHook:
    """Charge wall time to pipelines; log the totals to the active MLflow run at the end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = self._mark = 0.0
        self._run_id: str | None = None

    def _charge(self, node) -> None:
        now = time.perf_counter()
        name = pipeline_of(node)
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._mark
        self._mark = now

    @hook_impl(trylast=True)  # after kedro-mlflow has started the MLflow run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self.seconds = {}
        self._start = self._mark = time.perf_counter()
        run = mlflow.active_run()
        self._run_id = run.info.run_id if run is not None else None

    @hook_impl
    def after_node_run(self, node, catalog, inputs, outputs, is_async) -> None:
        self._charge(node)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        self._charge(node)

    def _finish(self) -> None:
        totals = {**self.seconds, "total": time.perf_counter() - self._start}
        log.info(
            "Wall time per pipeline: %s",
            ", ".join(f"{k} {v:.1f} s" for k, v in sorted(totals.items())),
        )
        run = mlflow.active_run()
        run_id = self._run_id or (run.info.run_id if run is not None else None)
        if run_id is None:
            return
        try:
            client = mlflow.MlflowClient()
            for name, seconds in totals.items():
                client.log_metric(run_id, f"{METRIC_PREFIX}{name}", seconds)
        except Exception as exc:  # timing must never fail a run
            log.warning("Could not log the pipeline timings to MLflow: %s", exc)

    # tryfirst: before kedro-mlflow's own hooks end the MLflow run
    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._finish()

    @hook_impl(tryfirst=True)
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline, catalog):
        self._finish()
