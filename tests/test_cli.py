"""A command line that fails in one clear line, fast (issue 14, item 3; issue 16, item 1):
``kedro run`` in a copy of the project with a mistyped pipeline, env, parameter section or key,
a bad value, or a corrupt raw file prints one ``Error:`` line naming the culprit and exits 1,
with no traceback and no MLflow run left behind; SIGTERM ends the MLflow run as KILLED.

Run with ``pytest -s`` to see how long each bad input takes to fail.
"""

from __future__ import annotations

import gzip
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import start_kedro

pytestmark = pytest.mark.slow

BAD_INPUTS = {
    "pipeline": (
        ["--pipeline", "kid_evaluaton"],
        "RunInputError: unknown pipeline 'kid_evaluaton'; did you mean 'kid_evaluation'? "
        "(pipelines: __default__, ",
    ),
    "env": (
        ["--env", "quik"],
        "RunInputError: unknown env 'quik'; did you mean 'quick'? "
        "(environments, the folders of conf/: base, gpu, local, paper, quick",
    ),
    "section": (
        ["--env", "quick", "--params", "federated_pretrainig.rounds=3"],
        "parameter federated_pretrainig = {'rounds': 3}: unknown section; "
        "did you mean 'federated_pretraining'? (known sections: ",
    ),
    "key": (
        ["--env", "quick", "--params", "federated_pretraining.roundz=3"],
        "parameter federated_pretraining.roundz = 3: unknown key; did you mean 'rounds'? "
        "(allowed: backbone, ",
    ),
    "value": (
        ["--env", "quick", "--params", "federated_pretraining.local.batch_size=0"],
        "parameter federated_pretraining.local.batch_size = 0: Input should be greater than 0",
    ),
}


def mlflow_runs(project: Path) -> list:
    """Every run (of every experiment) in the project's MLflow store."""
    if not (project / "mlflow.db").exists():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def project(make_project_copy) -> Path:
    return make_project_copy("bad_input")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_in_one_line_before_any_work(case, project, run_kedro) -> None:
    args, expected = BAD_INPUTS[case]
    start = time.perf_counter()
    result = run_kedro(project, *args, check=False, timeout=120)
    seconds = time.perf_counter() - start
    print(f"\n[timing] kedro run {' '.join(args)}: failed in {seconds:.1f} s")
    assert result.returncode == 1, result.tail()
    line = error_line(result)
    assert line.startswith("Error: ") and expected in line, result.tail()
    assert "Traceback" not in result.output, result.tail()
    assert [ln.startswith("Error:") for ln in result.output.splitlines()].count(True) == 1
    assert "Running node" not in result.output, result.tail()
    assert mlflow_runs(project) == []


def test_verbose_prints_the_traceback(project, run_kedro) -> None:
    quiet = run_kedro(project, "--env", "quik", check=False, timeout=120)
    assert quiet.returncode == 1 and "Traceback" not in quiet.output, quiet.tail()
    log = (project / "tmp" / "last_error.log").read_text()
    assert "Traceback" in log and "RunInputError" in log
    loud = run_kedro(project, "--env", "quik", check=False, timeout=120, env={"SPIRE_VERBOSE": "1"})
    assert loud.returncode != 0 and "Traceback" in loud.output, loud.tail()
    assert "unknown env 'quik'" in loud.flat_output


def test_corrupt_raw_file_fails_in_one_line_without_an_mlflow_run(
    make_project_copy, fashion_mnist_dir, run_kedro
) -> None:
    project = make_project_copy("corrupt_idx")
    raw = project / "data" / "01_raw" / "fashion-mnist"
    raw.unlink()
    raw.mkdir()
    for source in fashion_mnist_dir.iterdir():
        (raw / source.name).symlink_to(source.resolve())
    labels = raw / "train-labels-idx1-ubyte.gz"
    labels.unlink()
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 8)[:20])  # cut short
    start = time.perf_counter()
    result = run_kedro(
        project, "--env", "quick", "--pipeline", "data_partitioning", check=False, timeout=180
    )
    print(f"\n[timing] corrupt IDX file: failed in {time.perf_counter() - start:.1f} s")
    assert result.returncode == 1, result.tail()
    line = error_line(result)
    assert line.startswith("Error: DatasetError: "), result.tail()
    assert "train-labels-idx1-ubyte.gz" in line and "make data" in line, line
    assert "Traceback" not in result.output, result.tail()
    assert mlflow_runs(project) == []  # no node started, so no run was opened


def test_sigterm_ends_the_mlflow_run_killed(make_project_copy) -> None:
    project = make_project_copy("sigterm")
    log = project / "tmp" / "run.log"
    with open(log, "w") as out:
        proc = start_kedro(project, "run", "--env", "quick", stdout=out)
        try:
            deadline = time.monotonic() + 240
            # the MLflow run opens with the first node; stop once that node has completed
            while "Completed 1 out of" not in log.read_text():
                assert proc.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, "the first node never completed"
                time.sleep(0.2)
            os.kill(proc.pid, signal.SIGTERM)
            returncode = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = log.read_text()
    assert returncode == 143, output[-4000:]
    assert "Interrupted (SIGTERM); MLflow run(s)" in output and "Traceback" not in output
    runs = mlflow_runs(project)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    assert {r.info.status for r in runs} == {"KILLED"}, [
        (r.info.run_name, r.info.status) for r in runs
    ]
    assert parents[0].info.run_id in output
