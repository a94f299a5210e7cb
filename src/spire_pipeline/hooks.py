"""Project hooks: parameters validated before any node runs; chosen outputs logged to MLflow;
the run's metadata handed to the report, and the report's path logged last.

:data:`PARAMETER_MODELS` is the single registry of parameter schemas: a parameters section
without an entry here is an unknown section (a typo), rejected before any work.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from kedro.framework.hooks import hook_impl
from kedro.io import AbstractVersionedDataset

from spire_pipeline.pipeline_registry import DEFAULT_PIPELINES
from spire_pipeline.spire.consistency import RawData, check_consistency
from spire_pipeline.spire.resources import check_machine
from spire_pipeline.spire.validation import check_sections, validate_params
from spire_pipeline.tracking import run_info

log = logging.getLogger(__name__)

#: parameters.yml section -> "module:Model" of the pydantic model that validates it (every
#: section needs one: ``kedro run --params`` and the parameters files are checked against it)
PARAMETER_MODELS: dict[str, str] = {
    "data_partitioning": "spire_pipeline.spire.config:PartitionConfig",
    "federated_pretraining": "spire_pipeline.spire.config:PretrainingConfig",
    "kid_evaluation": "spire_pipeline.spire.config:KIDConfig",
    "client_adaptation": "spire_pipeline.spire.config:AdaptationConfig",
    "robustness_sweep": "spire_pipeline.spire.config:SweepConfig",
    "gmm_theory": "spire_pipeline.spire.config:GMMTheoryConfig",
    "dataset": "spire_pipeline.spire.config:DatasetConfig",
    "reporting": "spire_pipeline.spire.config:ClaimsConfig",
    "personalize": "spire_pipeline.spire.config:PersonalizeConfig",
    "generate": "spire_pipeline.spire.config:GenerateConfig",
    "diffusers_export": "spire_pipeline.spire.config:ExportConfig",
    "personalization_frontier": "spire_pipeline.spire.config:FrontierConfig",
}


def _model(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def validate_all(
    parameters: dict[str, Any],
    stages: Collection[str] | None = None,
    data: RawData | None = None,
) -> None:
    """Validate every section of ``parameters``: an unknown section, an unknown key or a bad
    value raises one ``ParameterError`` naming the parameter, its value and what is allowed;
    then the combinations across sections for a run of the pipelines ``stages`` (default: the
    main job), and against the raw ``data`` when given (:mod:`spire_pipeline.spire.consistency`).
    """
    check_sections(parameters, PARAMETER_MODELS, f"{__name__}.PARAMETER_MODELS")
    for section, path in PARAMETER_MODELS.items():
        if section in parameters:
            validate_params(_model(path), parameters[section], section)
    check_consistency(parameters, DEFAULT_PIPELINES if stages is None else stages, data)


def pipeline_stages(pipeline) -> set[str] | None:
    """The project pipelines whose nodes ``pipeline`` runs (nodes are namespaced by their
    pipeline, :mod:`spire_pipeline.pipeline_registry`)."""
    if pipeline is None:
        return None
    return {n.namespace.split(".")[0] for n in pipeline.nodes if n.namespace}


def raw_data(catalog, stages: Collection[str] | None) -> RawData | None:
    """The raw labels and image shape, when partitioning runs and its datasets can tell them
    without reading the images (``peek``); raises the dataset's error for a missing or
    corrupt file, before any node."""
    if stages is not None and "data_partitioning" not in stages:
        return None
    peeks = []
    for name in ("raw_train", "raw_test"):
        dataset = catalog.get(name) if name in catalog else None
        if not hasattr(dataset, "peek"):
            return None
        peeks.append(dataset.peek())
    (train, shape), (test, _) = peeks
    return RawData(np.concatenate([train, test]).astype(np.int64), shape)


class ParameterValidationHook:
    """Stop a run with one clear message when a parameter has a bad value."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        stages = pipeline_stages(pipeline)
        # raises ParameterError; no MLflow run is open yet (it opens with the first node)
        validate_all(parameters, stages)
        data = raw_data(catalog, stages)
        if data is not None:  # the partition must fit the data (a dry run on the labels)
            check_consistency(parameters, stages or DEFAULT_PIPELINES, data)
        # memory for the batch and backbone, disk for the outputs (spire.resources)
        project = Path(run_params.get("project_path") or ".")
        check_machine(parameters, stages or DEFAULT_PIPELINES, project)
        log.info(
            "Parameters validated: %s", ", ".join(s for s in PARAMETER_MODELS if s in parameters)
        )


def saved_path(dataset: Any) -> Path | None:
    """Where ``dataset`` wrote its last save (file or folder), if it is on the local disk."""
    if isinstance(dataset, AbstractVersionedDataset):
        path = dataset._filepath
        version = dataset._version and dataset.resolve_save_version()
        return Path(str(path)) / version / path.name if version else Path(str(path))
    for attr in ("_path", "_filepath"):  # PartitionedDataset and unversioned datasets
        if getattr(dataset, attr, None):
            return Path(str(getattr(dataset, attr)))
    return None


class MlflowArtifactHook:
    """Log a saved dataset as an MLflow artifact when its catalog entry says so.

    Catalog entries opt in with ``metadata: {mlflow_artifact: <artifact folder>}``. Unlike
    wrapping with kedro-mlflow's ``MlflowArtifactDataset``, this keeps Kedro's own
    ``versioned: true`` (one save version per run) and logs exactly the version just written.
    """

    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if self._catalog is None or mlflow.active_run() is None:
            return
        dataset = self._catalog.get(dataset_name)
        artifact_dir = (getattr(dataset, "metadata", None) or {}).get("mlflow_artifact")
        if artifact_dir is None:
            return
        path = saved_path(dataset)
        if path is None or not path.exists():
            log.warning("Cannot log %s to MLflow: no local file at %s", dataset_name, path)
        elif path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=f"{artifact_dir}/{dataset_name}")
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_dir)


def _git_commit(project: Path) -> str:
    """The checked-out commit (short), marked when the work tree has uncommitted changes."""
    commit, dirty = run_info.git_commit(project)
    if commit == "unknown":
        return "unknown (not a git checkout)"
    return f"{commit[:12]} (with uncommitted changes)" if dirty else commit[:12]


def run_metadata(run_params: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run: date, env, pipeline, commit, MLflow run, output version, machine."""
    active = mlflow.active_run()
    experiment = mlflow.get_experiment(active.info.experiment_id) if active else None
    runtime = run_params.get("runtime_params") or {}
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "env": run_params.get("env") or "local (conf/base + conf/local)",
        "pipeline": ", ".join(run_params.get("pipeline_names") or ["__default__"]),
        "runtime parameters": ", ".join(f"{k}={v}" for k, v in runtime.items()),
        "git_commit": _git_commit(Path(run_params.get("project_path") or ".")),
        "mlflow_run_id": active.info.run_id if active else "",
        "mlflow_experiment": experiment.name if experiment else "",
        "save_version": run_params.get("run_id", ""),
        "machine": f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
    }


class RunMetadataHook:
    """Give the report its run metadata before any node runs, and end the run's log with
    where the report is."""

    METADATA = "run_metadata"
    REPORT = "run_report"

    def __init__(self) -> None:
        self._catalog = None
        self._report_saved = False
        self._run_params: dict[str, Any] = {}

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._catalog, self._report_saved, self._run_params = catalog, False, run_params
        if pipeline is not None and self.METADATA in pipeline.inputs():
            catalog[self.METADATA] = run_metadata(run_params)

    @hook_impl
    def before_node_run(self, node, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """Refresh the metadata for the node that reads it: the MLflow run (its id goes in the
        report) opens only when the first node starts."""
        if self.METADATA in inputs:
            return {self.METADATA: run_metadata(self._run_params)}
        return None

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        self._report_saved |= dataset_name == self.REPORT

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], run_result, pipeline, catalog):
        if not self._report_saved:
            return
        report = catalog.get(self.REPORT)
        project = Path(run_params.get("project_path") or ".").resolve()

        def shown(path: Path | None) -> str:
            full = (project / path).resolve() if path is not None else None
            return str(full.relative_to(project) if full and full.is_relative_to(project) else full)

        latest = getattr(report, "latest_file", None)
        saved = getattr(report, "saved_file", None)
        where = f"{shown(latest)} (this run's copy: {shown(saved)})" if latest else shown(saved)
        log.info("Report: %s", where)
