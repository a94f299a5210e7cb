"""kedro-mlflow's hook, arranged for comparing methods.

* The MLflow store is opened, and the parent run started, when the first node starts: a run
  rejected before any node ran (bad parameters, a corrupt raw file) leaves no MLflow run
  behind and does not wait for a new store to be created.
* It is named ``<pipeline> · <env> · seed <n>`` and tagged with env, dataset, partition
  scheme, git commit and the real command line (:mod:`.run_info`).
* Every method gets a nested child run with the same metric names (:mod:`.method_metrics`),
  filled from the summary tables as the pipelines save them; per-client tables stay artifacts
  of the parent.
* Interrupted (Ctrl-C, SIGTERM) runs end KILLED, the interrupt kept out of database writes
  (:mod:`spire_pipeline.interrupts`); runs of SIGKILLed processes are marked KILLED by the next run
  (:mod:`.store`). Artifacts stay inside the project.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from kedro.framework.hooks import hook_impl
from kedro_mlflow.config.kedro_mlflow_config import KedroMlflowConfig, _validate_uri
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from spire_pipeline.hooks import PARAMETER_MODELS
from spire_pipeline.interrupts import Interrupts
from spire_pipeline.tracking import method_metrics, run_info
from spire_pipeline.tracking.store import OPEN_RUNS, mark_stale_runs, relocate_artifacts

log = logging.getLogger(__name__)

#: catalog entry whose file path names the data set in the run's tags
RAW_DATASET = "raw_train"
#: a method's ``phase`` tag lists these, in this order
PHASES = ("pretraining", "adaptation", "robustness sweep")


class _MetricDatasets:
    """The MLflow metric datasets of a catalog (found by type, without creating the others)."""

    def __init__(self, catalog) -> None:
        self._catalog = catalog
        self._names = [
            n for n in catalog.keys() if "kedro_mlflow.io.metrics" in str(catalog.get_type(n))
        ]

    def items(self) -> list[tuple[str, Any]]:
        return [(name, self._catalog[name]) for name in self._names]

    def __setitem__(self, name: str, dataset: Any) -> None:
        self._catalog[name] = dataset


@contextmanager
def _store_setup_deferred() -> Iterator[None]:
    """kedro-mlflow sets MLflow up as the session starts, creating a new store (seconds of
    database migrations) before any input is read: defer it to the first node."""
    setup = KedroMlflowConfig.setup
    KedroMlflowConfig.setup = lambda self, context: None
    try:
        yield
    finally:
        KedroMlflowConfig.setup = setup


class SpireMlflowHook(MlflowHook):
    """kedro-mlflow's ``MlflowHook`` with a lazily opened, well-named parent run and one
    child run per method. Registered in ``settings.HOOKS`` in place of the plugin's own."""

    def __init__(self) -> None:
        super().__init__()
        self._reset()

    def _reset(self) -> None:
        self.run_id = None
        self._pending: tuple[dict[str, Any], Any, Any] | None = None
        self._project_path = Path.cwd()
        self._children: dict[str, str] = {}  # method -> child run id
        self._phases: dict[str, set[str]] = {}
        self._logged: dict[str, dict[str, float]] = {}
        self._child_tags: dict[str, str] = {}
        self._interrupts = Interrupts()
        self._context: Any = None
        self._experiment_id: str | None = None

    # ------------------------------------------------------------------ session start

    @hook_impl
    def after_context_created(self, context) -> None:
        """Read mlflow.yml; the store is opened (created on a first run) with the first node."""
        self._reset()
        self._context = context
        self._project_path = Path(context.project_path)
        with _store_setup_deferred():
            super().after_context_created(context)
        if not self._already_active_mlflow:  # notebooks read runs through the global URI
            server = self.mlflow_config.server
            uri = server.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "mlruns")
            mlflow.set_tracking_uri(_validate_uri(project_path=context.project_path, uri=uri))

    def _open_store(self) -> None:
        if not self._already_active_mlflow:
            self.mlflow_config.setup(self._context)
            relocate_artifacts(mlflow.get_tracking_uri(), self._project_path)

    @hook_impl
    def after_catalog_created(
        self,
        catalog,
        conf_catalog: dict[str, Any],
        conf_creds: dict[str, Any],
        parameters: dict[str, Any],
        save_version: str,
        load_versions: dict[str, str],
    ) -> None:
        """kedro-mlflow's, shown only the MLflow metric datasets: it would otherwise create
        every dataset of the catalog (importing torch and diffusers) before any node runs."""
        super().after_catalog_created(
            _MetricDatasets(catalog),
            conf_catalog,
            conf_creds,
            parameters,
            save_version,
            load_versions,
        )

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        """Remember the run; the MLflow run opens when the first node starts."""
        # kedro-mlflow tags every truthy run parameter: the runner is an object's repr
        self._pending = ({**run_params, "runner": None}, pipeline, catalog)

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        if self._pending is not None:
            self._open_parent(*self._pending)
            self._pending = None
        super().before_node_run(node, catalog, inputs, is_async)

    def _open_parent(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._open_store()
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        sections = run_info.used_sections(pipeline.inputs(), PARAMETER_MODELS)
        seed = run_info.run_seed(parameters, sections)
        pipelines = run_params.get("pipeline_names") or None
        env = run_params.get("env")
        config = self.mlflow_config.tracking.run
        configured_name = config.name
        config.name = configured_name or run_info.run_name(pipelines, env, seed)
        client = self.mlflow_config.server._mlflow_client
        experiment = self.mlflow_config.tracking.experiment._experiment
        tags = run_info.run_tags(
            pipelines=pipelines,
            env=env,
            seed=seed,
            parameters=parameters,
            dataset=_describe(catalog, RAW_DATASET),
            project_path=self._project_path,
        )
        if not self._already_active_mlflow:
            mark_stale_runs(client, experiment.experiment_id, tags[run_info.TAG_HOST])
        try:
            super().before_pipeline_run(run_params, pipeline, catalog)
        finally:
            config.name = configured_name
        if not self._is_mlflow_enabled or self.run_id is None:
            return
        mlflow.set_tags(tags)
        self._experiment_id = mlflow.get_run(self.run_id).info.experiment_id
        self._child_tags = {k: tags[k] for k in (*run_info.CHILD_TAGS, run_info.TAG_PID)}
        self._child_tags[run_info.TAG_HOST] = tags[run_info.TAG_HOST]
        if not self._already_active_mlflow:
            OPEN_RUNS.add(self.run_id, mlflow.get_tracking_uri())
            self._interrupts.catch()

    # ------------------------------------------------------------------ method child runs

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        """Log a summary table's numbers to the methods' child runs."""
        reader = method_metrics.READERS.get(dataset_name)
        if reader is None or self.run_id is None or not self._is_mlflow_enabled:
            return
        read, phase = reader
        if not isinstance(data, pd.DataFrame):
            return
        try:
            metrics = read(data)
        except Exception as exc:  # a reshaped table must not stop the run
            log.warning("Could not read %s for MLflow method runs: %s", dataset_name, exc)
            return
        for method, values in metrics.items():
            self._log_method(method, values, phase)
        for method in set(data.get("method", [])) - set(metrics):
            self._log_method(str(method), {}, phase)

    def _child(self, method: str) -> str:
        if method not in self._children:
            client = self._client()
            run = client.create_run(
                experiment_id=self._experiment_id,
                run_name=method,
                tags={
                    "mlflow.parentRunId": self.run_id,
                    "method": method,
                    **self._child_tags,
                },
            )
            self._children[method] = run.info.run_id
            OPEN_RUNS.add(run.info.run_id, mlflow.get_tracking_uri())
        return self._children[method]

    def _log_method(self, method: str, values: dict[str, float], phase: str | None) -> None:
        run_id = self._child(method)
        client = self._client()
        if phase and phase not in self._phases.setdefault(method, set()):
            self._phases[method].add(phase)
            phases = [p for p in PHASES if p in self._phases[method]]
            client.set_tag(run_id, "phase", "+".join(phases))
        logged = self._logged.setdefault(method, {})
        new = {k: v for k, v in values.items() if logged.get(k) != v}
        if new:
            client.log_batch(
                run_id, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in new.items()]
            )
            logged.update(new)

    def _end_children(self, status: str) -> None:
        client = self._client()
        for run_id in self._children.values():
            if run_id in OPEN_RUNS:
                client.set_terminated(run_id, status)
                OPEN_RUNS.discard(run_id)

    def _client(self) -> MlflowClient:
        return self.mlflow_config.server._mlflow_client

    # ------------------------------------------------------------------ session end

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if self.run_id is None:  # no node ran, no run was opened
            self._pending = None
            return
        self._end_children("FINISHED")
        super().after_pipeline_run(run_params, pipeline, catalog)
        OPEN_RUNS.discard(self.run_id)
        self._interrupts.release()
        if self._children:
            log.info(
                "MLflow run %s has %d method runs: `make compare` prints them side by side",
                self.run_id,
                len(self._children),
            )

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline, catalog):
        if self.run_id is None:  # failed before any node started: no run to close
            self._pending = None
            return
        self._end_children("FAILED")
        super().on_pipeline_error(error, run_params, pipeline, catalog)
        OPEN_RUNS.discard(self.run_id)
        self._interrupts.release()


def _describe(catalog, name: str) -> dict[str, Any]:
    try:
        return dict(catalog.get(name)._describe()) if name in catalog else {}
    except Exception:  # describing is best effort: tags only
        return {}
