"""End to end: ``kedro run --pipeline data_partitioning --env quick`` in a copy of the project."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from spire_pipeline.spire.partition import ClientSplit, role_names

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPLIT_KEYS = set(
    ClientSplit(
        client="c",
        role="seen",
        **{k: np.zeros(0) for k in ("train_images", "train_labels", "test_images")},
        **{k: np.zeros(0) for k in ("test_labels", "train_index", "test_index")},
    ).to_arrays()
)


@pytest.fixture(scope="module")
def quick_run(make_project_copy, run_kedro):
    """A private project copy in which the quick data_partitioning run has completed."""
    project = make_project_copy("data_partitioning_e2e")
    result = run_kedro(project, "--pipeline", "data_partitioning", "--env", "quick", timeout=240)
    return project, result


@pytest.fixture(scope="module")
def quick_params() -> dict:
    path = Path(__file__).resolve().parents[1] / "conf/quick/parameters_data_partitioning.yml"
    return yaml.safe_load(path.read_text())["data_partitioning"]


def _versions(folder: Path) -> list[str]:
    assert folder.is_dir(), f"{folder} was not written"
    return sorted(p.name for p in folder.iterdir())


def test_run_succeeds(quick_run) -> None:
    _, result = quick_run
    assert result.returncode == 0
    assert "Pipeline execution completed successfully" in result.flat_output, result.tail()
    assert "Parameters validated: data_partitioning" in result.flat_output, result.tail()


def test_versioned_client_splits(quick_run, quick_params) -> None:
    project, _ = quick_run
    root = project / "data" / "05_model_input" / "client_splits"
    versions = _versions(root)
    assert len(versions) == 1, versions  # one complete version folder, nothing partial
    names = role_names(
        quick_params["num_seen_clients"],
        quick_params["num_unseen_clients"],
        quick_params["num_tuning_clients"],
    )
    everyone = [c for role in names.values() for c in role]
    files = sorted(p.name for p in (root / versions[0]).iterdir())
    assert files == sorted(f"{c}.npz" for c in everyone)
    indices = []
    for client in everyone:
        with np.load(root / versions[0] / f"{client}.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        assert set(arrays) == SPLIT_KEYS
        split = ClientSplit.from_arrays(client, arrays)
        assert split.role == client.split("_")[0] and client in names[split.role]
        assert split.train_images.shape[1:] == (28, 28) and split.train_images.dtype == np.uint8
        assert len(split.train_images) == len(split.train_labels) == len(split.train_index)
        assert len(split.test_images) == len(split.test_labels) == len(split.test_index)
        assert len(split.test_index) >= quick_params["min_test_size"]
        if split.role == "seen":
            n = len(split.train_index) + len(split.val_index) + len(split.test_index)
            assert n == quick_params["seen_client_size"]
            assert len(split.val_index) > 0  # held out of pretraining
        else:
            assert len(split.train_index) == quick_params["unseen_train_size"]
        indices += [split.train_index, split.val_index, split.test_index]
    everything = np.concatenate(indices)
    assert len(np.unique(everything)) == len(everything), "an image belongs to two splits"


def test_versioned_table_and_heatmap(quick_run, quick_params) -> None:
    project, _ = quick_run
    (version,) = _versions(project / "data" / "05_model_input" / "client_splits")
    reporting = project / "data" / "08_reporting"
    assert _versions(reporting / "partition_table.csv") == [version]
    assert _versions(reporting / "partition_heatmap.png") == [version]
    table = pd.read_csv(reporting / "partition_table.csv" / version / "partition_table.csv")
    assert list(table.columns) == ["client", "role", "n_train", "n_val", "n_test"] + [
        f"class_{c}" for c in range(10)
    ]
    n_clients = sum(quick_params[f"num_{r}_clients"] for r in ("seen", "tuning", "unseen"))
    assert len(table) == n_clients
    class_counts = table[[f"class_{c}" for c in range(10)]].to_numpy()
    np.testing.assert_array_equal(
        class_counts.sum(axis=1), table["n_train"] + table["n_val"] + table["n_test"]
    )
    # shards: each client holds exactly classes_per_client classes
    assert ((class_counts > 0).sum(axis=1) == quick_params["classes_per_client"]).all()
    heatmap = reporting / "partition_heatmap.png" / version / "partition_heatmap.png"
    assert heatmap.read_bytes()[:8] == PNG_MAGIC


def test_mlflow_run_recorded(quick_run, quick_params) -> None:
    import mlflow

    project, _ = quick_run
    assert (project / "mlflow.db").is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("spire_pipeline")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "data_partitioning · quick · seed 0"
    params = run.data.params
    assert params["data_partitioning.seed"] == str(quick_params["seed"])
    assert params["data_partitioning.num_seen_clients"] == str(quick_params["num_seen_clients"])
    assert params["data_partitioning.scheme"] == quick_params["scheme"]
    metrics = run.data.metrics
    assert 0 < metrics["partition.mean_tv_distance"] <= 1
    assert metrics["partition.num_clients"] == sum(
        quick_params[f"num_{r}_clients"] for r in ("seen", "tuning", "unseen")
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "data_partitioning")}
    assert artifacts == {
        "data_partitioning/partition_table.csv",
        "data_partitioning/partition_heatmap.png",
    }
    # the artifact store lives inside the project copy
    local = Path(run.info.artifact_uri.removeprefix("file://"))
    assert local.is_relative_to(project), run.info.artifact_uri
    assert (local / "data_partitioning" / "partition_heatmap.png").read_bytes()[:8] == PNG_MAGIC


def test_a_copied_project_writes_mlflow_artifacts_into_its_own_folder(
    quick_run, tmp_path, run_kedro
) -> None:
    """MLflow stores absolute artifact paths: a copy must not write into the original."""
    import mlflow

    project, _ = quick_run
    copy = tmp_path / "copied" / "spire-pipeline"
    shutil.copytree(project, copy, symlinks=True)
    original = {p for p in (project / "mlruns").rglob("*") if p.is_file()}
    assert original
    run_kedro(copy, "--pipeline", "data_partitioning", "--env", "quick", timeout=240)
    assert {p for p in (project / "mlruns").rglob("*") if p.is_file()} == original
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("spire_pipeline")
    assert Path(experiment.artifact_location).is_relative_to(copy)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    for run in runs:  # the copied run too: its artifacts were copied along
        local = Path(run.info.artifact_uri.removeprefix("file://"))
        assert local.is_relative_to(copy), run.info.artifact_uri
        assert (local / "data_partitioning" / "partition_table.csv").is_file()
