"""Project pipelines: every folder under ``pipelines/`` is found automatically."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

#: The main job, in order (DESIGN: partitioning, pretraining, adaptation, KID, theory, reporting).
DEFAULT_PIPELINES = (
    "data_partitioning",
    "federated_pretraining",
    "client_adaptation",
    "kid_evaluation",
    "gmm_theory",
    "reporting",
)


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines; ``__default__`` is the main job."""
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(
        (pipelines[name] for name in DEFAULT_PIPELINES if name in pipelines), Pipeline([])
    )
    return pipelines
