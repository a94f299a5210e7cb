"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from spire_pipeline.atomic_saves import AtomicSaveHook
from spire_pipeline.hooks import MlflowArtifactHook, ParameterValidationHook, RunMetadataHook
from spire_pipeline.timing_hook import PipelineTimingHook
from spire_pipeline.tracking.hook import SpireMlflowHook

# SpireMlflowHook is kedro-mlflow's hook arranged for comparing methods (one child run per
# method, a lazily opened, well-named parent run): it replaces the plugin's own.
# Hooks run in reverse order: RunMetadataHook's line (where the report is) comes last.
HOOKS = (
    RunMetadataHook(),
    ParameterValidationHook(),
    SpireMlflowHook(),
    MlflowArtifactHook(),
    PipelineTimingHook(),
    AtomicSaveHook(),
)
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
