"""kedro-viz reads as the method: each pipeline a namespace (collapsible stage), datasets with
their layer, nodes tagged by stage; dataset names unchanged; ``kedro viz build`` works."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

from spire_pipeline.pipeline_registry import DEFAULT_PIPELINES, STAGES, as_namespace

REPO = Path(__file__).resolve().parents[1]
PIPELINE_NAMES = sorted(
    p.name
    for p in (REPO / "src/spire_pipeline/pipelines").iterdir()
    if (p / "pipeline.py").exists()
)
#: data/<folder> -> the layer its datasets carry
LAYERS = {
    "01_raw": "raw",
    "04_feature": "feature",
    "05_model_input": "model_input",
    "06_models": "models",
    "07_model_output": "model_output",
    "08_reporting": "reporting",
}


def plain(name: str):
    return importlib.import_module(f"spire_pipeline.pipelines.{name}").create_pipeline()


def catalog() -> dict:
    entries = {}
    for path in sorted((REPO / "conf/base").glob("catalog*.yml")):
        entries |= yaml.safe_load(path.read_text())
    return entries


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_namespace_keeps_dataset_names_and_tags_the_stage(name: str) -> None:
    before, after = plain(name), as_namespace(name, plain(name))
    assert after.datasets() == before.datasets()  # catalog and other pipelines unchanged
    assert {n.name for n in after.nodes} == {f"{name}.{n.name}" for n in before.nodes}
    assert all(n.namespace == name for n in after.nodes)
    assert all(STAGES[name] in n.tags for n in after.nodes)


def test_node_selection_uses_namespaced_names() -> None:
    pipe = as_namespace("gmm_theory", plain("gmm_theory"))
    assert {n.name for n in pipe.to_nodes("gmm_theory.summarise_gmm_errors").nodes} == {
        "gmm_theory.run_gmm_sweep",
        "gmm_theory.summarise_gmm_errors",
    }
    assert "gmm_theory.run_gmm_sweep" not in {
        n.name for n in pipe.from_nodes("gmm_theory.fit_gmm_error_slopes").nodes
    }
    with pytest.raises(ValueError, match=r"Did you mean: \['gmm_theory.run_gmm_sweep'\]"):
        pipe.only_nodes("run_gmm_sweep")


def test_every_stage_of_the_main_job_has_a_tag() -> None:
    assert set(DEFAULT_PIPELINES) <= set(STAGES) and set(PIPELINE_NAMES) <= set(STAGES)
    assert len(set(STAGES.values())) == len(STAGES)


def test_every_dataset_on_disk_carries_the_layer_of_its_folder() -> None:
    for name, entry in catalog().items():
        text = json.dumps(entry)
        folder = next((f for f in LAYERS if f"data/{f}/" in text), None)
        layer = (entry.get("metadata") or {}).get("kedro-viz", {}).get("layer")
        if folder is not None:
            assert layer == LAYERS[folder], name
        elif "MlflowMetricsHistoryDataset" in entry["type"]:
            assert layer == "reporting", name


@pytest.mark.slow
def test_viz_build_holds_every_pipeline_as_namespaces_with_layers(project_copy, kedro_cli):
    result = kedro_cli(project_copy, "viz", "build", timeout=300)
    build = project_copy / "build"
    assert (build / "index.html").is_file(), result.tail()
    main = json.loads((build / "api" / "main").read_text())
    assert {p["id"] for p in main["pipelines"]} == {*PIPELINE_NAMES, "__default__"}
    for name in (*PIPELINE_NAMES, "__default__"):
        assert (build / "api" / "pipelines" / name).is_file(), name
    # the default graph collapses to one modular pipeline per stage of the main job
    root = main["modular_pipelines"]["__root__"]
    stages = {c["id"] for c in root["children"] if c["type"] == "modularPipeline"}
    assert stages == set(DEFAULT_PIPELINES)
    tasks = [n for n in main["nodes"] if n["type"] == "task"]
    assert tasks and all(len(n["modular_pipelines"]) == 1 for n in tasks)
    assert {"partition_clients", "plot_partition_heatmap"} <= {n["name"] for n in tasks}
    assert set(main["layers"]) == set(LAYERS.values())
    datasets = [n for n in main["nodes"] if n["type"] == "data" and n["name"] != "run_metadata"]
    assert all(n["layer"] for n in datasets), [n["name"] for n in datasets if not n["layer"]]
    assert {t["id"] for t in main["tags"]} >= {STAGES[p] for p in DEFAULT_PIPELINES}
