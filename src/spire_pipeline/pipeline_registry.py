"""Project pipelines: every folder under ``pipelines/`` is found automatically.

Each pipeline is registered as a namespace of its own name (its nodes become
``<pipeline>.<node>``, so kedro-viz draws the main job as partition -> pretrain -> adapt ->
evaluate -> theory -> report, each stage collapsible), with its dataset and parameter names
unchanged (the catalog and the other pipelines refer to them as they are), and its nodes
tagged with the stage they belong to (``kedro run --tags evaluate``).
"""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline, pipeline

#: The main job, in order (DESIGN: partitioning, pretraining, adaptation, KID, theory, reporting).
DEFAULT_PIPELINES = (
    "data_partitioning",
    "federated_pretraining",
    "client_adaptation",
    "kid_evaluation",
    "gmm_theory",
    "reporting",
)
#: pipeline -> the stage its nodes are tagged with
STAGES = {
    "data_partitioning": "partition",
    "federated_pretraining": "pretrain",
    "client_adaptation": "adapt",
    "kid_evaluation": "evaluate",
    "robustness_sweep": "sweep",
    "gmm_theory": "theory",
    "reporting": "report",
    "personalize": "personalize",
    "generate": "generate",
    "diffusers_export": "export",
    "personalization_frontier": "frontier",
}


def as_namespace(name: str, pipe: Pipeline) -> Pipeline:
    """``pipe`` with its nodes in namespace ``name`` and tagged with its stage; every dataset
    and parameter keeps its name."""
    return pipeline(
        pipe,
        namespace=name,
        prefix_datasets_with_namespace=False,
        tags=STAGES.get(name, name),
    )


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines; ``__default__`` is the main job."""
    pipelines = {
        name: as_namespace(name, pipe)
        for name, pipe in find_pipelines(raise_errors=True).items()
        if name != "__default__"
    }
    pipelines["__default__"] = sum(
        (pipelines[name] for name in DEFAULT_PIPELINES if name in pipelines), Pipeline([])
    )
    return pipelines
