"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from spire_pipeline.hooks import MlflowArtifactHook, ParameterValidationHook
from spire_pipeline.timing_hook import PipelineTimingHook

HOOKS = (ParameterValidationHook(), MlflowArtifactHook(), PipelineTimingHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
