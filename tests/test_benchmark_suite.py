"""The benchmark suite's quick mode writes a complete table; the pipeline timing hook."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from spire_pipeline.timing_hook import PipelineTimingHook, pipeline_of

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["benchmark", "value", "unit", "reference", "reference_value", "ratio", "target", "meets"]


@pytest.fixture(scope="module")
def quick_table(tmp_path_factory, fashion_mnist_dir) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("bench") / "benchmarks.csv"
    empty_store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "suite.py"),
            "--quick",
            "--threads",
            "1",
            "--out",
            str(out),
            "--models",
            str(out.parent / "no-models"),
            "--mlflow-uri",
            f"sqlite:///{empty_store}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return pd.read_csv(out, keep_default_na=False)


@pytest.mark.slow
def test_quick_suite_writes_every_row_with_a_value(quick_table) -> None:
    assert list(quick_table.columns) == COLUMNS
    assert len(quick_table) >= 30
    for row in quick_table.itertuples():
        assert str(row.value) != "", row
        if row.value == "n/a":  # only where there is nothing to measure, with the reason
            assert row.benchmark.startswith("main job wall time") and row.reference, row
        else:
            assert math.isfinite(float(row.value)), row


@pytest.mark.slow
def test_quick_suite_covers_every_section(quick_table) -> None:
    names = " | ".join(quick_table["benchmark"])
    for expected in (
        "matrix product",
        "local_train throughput fp32",
        "training step GFLOP/s",
        "adaptation seconds per step: spire",
        "adaptation peak memory: spire",
        "sampling ddpm-50",
        "sampling dpmsolver++-20",
        "KID features",
        "KID ddim-25 fp32",
        "precision bf16: final pretraining loss",
        "precision bf16: spire adaptation final loss",
        "bytes up per client and round: spire",
        "inprocess peak memory beyond the clients' own tensors, 1000 clients",
        "main job wall time, total",
    ):
        assert expected in names, expected
    ratios = quick_table[quick_table["target"] != ""]
    assert (ratios["meets"].isin(["True", "False", "n/a"])).all()


@pytest.mark.slow
def test_only_backbone_arrays_are_sent(quick_table) -> None:
    sent = quick_table[quick_table["benchmark"].str.startswith("bytes up")]
    assert len(sent) == 5
    by_method = {b.rsplit(": ", 1)[1]: float(v) for b, v in zip(sent["benchmark"], sent["value"])}
    assert by_method["local"] == by_method["centralized"] == 0
    assert 0 < by_method["fedper"] < by_method["spire"] == by_method["fedavg"]
    assert (sent["meets"] == "True").all()


def test_pipeline_of_a_node() -> None:
    from spire_pipeline.pipelines.kid_evaluation.nodes import evaluate_kid

    assert pipeline_of(SimpleNamespace(func=evaluate_kid)) == "kid_evaluation"
    assert pipeline_of(SimpleNamespace(func=len)) == "other"


def test_timing_hook_charges_the_time_between_events(monkeypatch) -> None:
    from spire_pipeline.pipelines.gmm_theory import nodes as gmm_nodes
    from spire_pipeline.pipelines.kid_evaluation import nodes as kid_nodes

    clock = iter([0.0, 2.0, 3.0, 10.0, 10.5])
    monkeypatch.setattr("spire_pipeline.timing_hook.time.perf_counter", lambda: next(clock))
    hook = PipelineTimingHook()
    kid_node = SimpleNamespace(func=kid_nodes.evaluate_kid)
    gmm_node = SimpleNamespace(func=gmm_nodes.run_gmm_sweep)
    hook.before_pipeline_run({}, None, None)  # t = 0
    hook.after_node_run(kid_node, None, {}, {}, False)  # t = 2
    hook.after_dataset_saved("kid_table", None, kid_node)  # t = 3
    hook.after_node_run(gmm_node, None, {}, {}, False)  # t = 10
    assert hook.seconds == {"kid_evaluation": 3.0, "gmm_theory": 7.0}


@pytest.mark.slow
def test_kedro_run_logs_its_time_per_pipeline(make_project_copy, run_kedro) -> None:
    import mlflow

    project = make_project_copy("timing")
    start = time.perf_counter()
    result = run_kedro(project, "--pipeline", "data_partitioning", "--env", "quick")
    wall = time.perf_counter() - start  # the whole command, start-up included
    assert "Wall time per pipeline: data_partitioning" in result.flat_output
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("spire_pipeline").experiment_id])
    metrics = run.data.metrics
    assert 0 < metrics["timing.data_partitioning"] <= metrics["timing.total"]
    # the MLflow run opens lazily at the first node; the timing covers the whole pipeline run
    assert metrics["timing.total"] <= wall
