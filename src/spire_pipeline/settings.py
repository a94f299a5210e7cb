"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from spire_pipeline.hooks import MlflowArtifactHook, ParameterValidationHook, RunMetadataHook

HOOKS = (ParameterValidationHook(), MlflowArtifactHook(), RunMetadataHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
