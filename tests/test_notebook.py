"""``notebooks/spire_results.ipynb``: committed without outputs, and every cell runs against
the outputs of a quick main job (the session's ``quick_main_job``) plus a second theory seed,
so that its MLflow comparison has two runs to compare.

Run with ``pytest -s`` to see how long the notebook took.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from conftest import kedro_env

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "spire_results.ipynb"
CELL_TIMEOUT_S = 300


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for k, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, f"code cell {k} has outputs"


def _outputs(nb, kind: str) -> list:
    return [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if kind in o.get("data", {}) or o.get("output_type") == kind
    ]


@pytest.mark.slow
def test_notebook_runs_against_a_quick_run(quick_main_job, run_kedro, monkeypatch) -> None:
    from nbclient import NotebookClient

    project = quick_main_job.project
    # two more MLflow runs to compare (the theory with two other seeds, seconds each): the
    # newest two then differ in the seed whatever other tests ran in this shared project
    for seed in (1, 2):
        run_kedro(
            project,
            "--env",
            "quick",
            "--pipeline",
            "gmm_theory",
            "--params",
            f"gmm_theory.seed={seed}",
            timeout=300,
        )
    (project / "notebooks").mkdir(exist_ok=True)
    notebook = shutil.copy(NOTEBOOK, project / "notebooks" / NOTEBOOK.name)
    # the kernel inherits this environment: the one a kedro subprocess in the copy gets
    env = kedro_env(project)
    for key in set(os.environ) - set(env):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(project / "notebooks")}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on any failing cell
    print(f"\n[timing] notebook executed in {time.perf_counter() - start:.1f} s")

    assert not _outputs(nb, "error")
    assert len(_outputs(nb, "image/png")) >= 6  # bar chart, efficiency, loss, heat map, grids
    html = "\n".join(o["data"]["text/html"] for o in _outputs(nb, "text/html"))
    assert "claim" in html and "kid_median" in html
    text = "\n".join(o.get("text", "") for o in _outputs(nb, "stream"))
    assert "real vs real: median KID" in text
    # the comparison found the two runs and the parameter in which they differ
    assert "gmm_theory.seed" in html and "metrics recorded by both" in text
    assert not (project / "notebooks" / "mlflow.db").exists()  # read the project's store
