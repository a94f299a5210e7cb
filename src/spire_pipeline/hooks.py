"""Project hooks: parameters validated before any node runs; chosen outputs logged to MLflow."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import AbstractVersionedDataset

from spire_pipeline.spire.validation import ParameterError, validate_params

log = logging.getLogger(__name__)

#: parameters.yml section -> "module:Model" of the pydantic model that validates it
PARAMETER_MODELS: dict[str, str] = {
    "data_partitioning": "spire_pipeline.spire.partition:PartitionConfig",
    "federated_pretraining": "spire_pipeline.spire.config:PretrainingConfig",
    "kid_evaluation": "spire_pipeline.spire.config:KIDConfig",
    "client_adaptation": "spire_pipeline.spire.config:AdaptationConfig",
    "robustness_sweep": "spire_pipeline.spire.config:SweepConfig",
    "gmm_theory": "spire_pipeline.spire.gmm:GMMTheoryConfig",
    "personalize": "spire_pipeline.spire.personalize:PersonalizeConfig",
    "generate": "spire_pipeline.spire.serving:GenerateConfig",
    "diffusers_export": "spire_pipeline.spire.export:ExportConfig",
}


def _model(path: str) -> Any | None:
    module, name = path.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def validate_all(parameters: dict[str, Any]) -> None:
    """Validate each known section present in ``parameters``; raise ``ParameterError``."""
    for section, path in PARAMETER_MODELS.items():
        model = _model(path)
        if section in parameters and model is not None:
            validate_params(model, parameters[section], section)


class ParameterValidationHook:
    """Stop a run with one clear message when a parameter has a bad value."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        try:
            validate_all(parameters)
        except ParameterError:
            # Kedro calls no on_pipeline_error hook when before_pipeline_run fails: close the
            # MLflow run kedro-mlflow has just opened, or it would be recorded as FINISHED.
            if mlflow.active_run() is not None:
                mlflow.end_run(status="FAILED")
            raise
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
