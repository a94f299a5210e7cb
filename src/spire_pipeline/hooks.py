"""Project hooks: parameters validated before any node runs; chosen outputs logged to MLflow.

:data:`PARAMETER_MODELS` is the single registry of parameter schemas: a parameters section
without an entry here is an unknown section (a typo), rejected before any work.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import AbstractVersionedDataset

from spire_pipeline.spire.validation import check_sections, validate_params

log = logging.getLogger(__name__)

#: parameters.yml section -> "module:Model" of the pydantic model that validates it (every
#: section needs one: ``kedro run --params`` and the parameters files are checked against it)
PARAMETER_MODELS: dict[str, str] = {
    "data_partitioning": "spire_pipeline.spire.partition:PartitionConfig",
    "federated_pretraining": "spire_pipeline.spire.config:PretrainingConfig",
    "kid_evaluation": "spire_pipeline.spire.config:KIDConfig",
    "client_adaptation": "spire_pipeline.spire.config:AdaptationConfig",
    "robustness_sweep": "spire_pipeline.spire.config:SweepConfig",
    "gmm_theory": "spire_pipeline.spire.gmm:GMMTheoryConfig",
}


def _model(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def validate_all(parameters: dict[str, Any]) -> None:
    """Validate every section of ``parameters``: an unknown section, an unknown key or a bad
    value raises one ``ParameterError`` naming the parameter, its value and what is allowed."""
    check_sections(parameters, PARAMETER_MODELS, f"{__name__}.PARAMETER_MODELS")
    for section, path in PARAMETER_MODELS.items():
        if section in parameters:
            validate_params(_model(path), parameters[section], section)


class ParameterValidationHook:
    """Stop a run with one clear message when a parameter has a bad value."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        # raises ParameterError; no MLflow run is open yet (it opens with the first node)
        validate_all(parameters)
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
