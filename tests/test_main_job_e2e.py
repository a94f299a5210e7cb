"""End to end: the main job ``kedro run --env quick`` (``__default__``: partitioning,
pretraining, adaptation, KID, theory, reporting) in a copy of the project (the session's
``quick_main_job``, shared with the notebook test), then
``kedro run --env quick --pipeline robustness_sweep`` in the same copy.

Run with ``pytest -s`` to see how long each run took.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from spire_pipeline.spire.partition import client_names, role_names
from spire_pipeline.spire.report import ROBUSTNESS_COMMAND
from spire_pipeline.spire.stats import min_clients

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: every pipeline DESIGN names
PIPELINES = {
    "data_partitioning",
    "federated_pretraining",
    "client_adaptation",
    "kid_evaluation",
    "robustness_sweep",
    "gmm_theory",
    "reporting",
    "__default__",
}
SWEEP_TIMEOUT_S = 300


def quick(section: str) -> dict:
    text = (REPO / f"conf/quick/parameters_{section}.yml").read_text()
    return yaml.safe_load(text)[section]


@pytest.fixture(scope="module")
def clients() -> tuple[list[str], list[str]]:
    p = quick("data_partitioning")
    return client_names(p["num_seen_clients"], p["num_unseen_clients"], p["num_tuning_clients"])


@pytest.fixture(scope="module")
def tuning_clients() -> list[str]:
    p = quick("data_partitioning")
    names = role_names(p["num_seen_clients"], p["num_unseen_clients"], p["num_tuning_clients"])
    return names["tuning"]


@pytest.fixture(scope="module")
def main_run(quick_main_job):
    """The project copy in which the quick main job has completed (shared by the session)."""
    print(f"\n[timing] kedro run --env quick (__default__): {quick_main_job.seconds:.1f} s")
    return quick_main_job.project, quick_main_job.result


@pytest.fixture(scope="module")
def sweep_run(main_run, run_kedro):
    """The quick robustness sweep, in the same copy, after the main job."""
    project, _ = main_run
    start = time.perf_counter()
    result = run_kedro(
        project, "--env", "quick", "--pipeline", "robustness_sweep", timeout=SWEEP_TIMEOUT_S
    )
    seconds = time.perf_counter() - start
    print(f"\n[timing] kedro run --env quick --pipeline robustness_sweep: {seconds:.1f} s")
    return project, result


def one_version(folder: Path) -> str:
    assert folder.is_dir(), f"{folder} was not written"
    versions = sorted(p.name for p in folder.iterdir())
    assert len(versions) == 1, versions
    return versions[0]


def versioned(project: Path, relative: str) -> Path:
    """The file of the only saved version of a versioned dataset ``relative``."""
    folder = project / relative
    return folder / one_version(folder) / folder.name


def mlflow_run(project: Path, name: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("spire_pipeline")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def artifact_files(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= artifact_files(client, run_id, a.path) if a.is_dir else {a.path}
    return out


# ----------------------------------------------------------------------------- main job


def test_main_job_succeeds(main_run) -> None:
    _, result = main_run
    assert "Pipeline execution completed successfully" in result.flat_output, result.tail()
    assert "Parameters validated" in result.flat_output, result.tail()
    # the run's last word says where the report is
    tail = result.flat_output.split("Pipeline execution completed successfully")[-1]
    assert "Report: data/08_reporting/latest/report.md" in tail, result.tail()


def test_kid_table(main_run, clients) -> None:
    project, _ = main_run
    seen, unseen = clients
    table = pd.read_csv(versioned(project, "data/08_reporting/kid_table.csv"))
    columns = {
        "client",
        "role",
        "method",
        "phase",
        "kid_mean",
        "kid_std",
        "n_generated",
        "n_real",
        "extractor",
    }
    assert columns <= set(table.columns)
    assert set(table["client"]) == set(seen + unseen)  # never a tuning client
    assert set(table["phase"]) == {"pretrained", "adapted"}
    pretrained = table[table["phase"] == "pretrained"]
    assert set(pretrained["client"]) == set(seen + unseen)
    assert set(table[table["phase"] == "adapted"]["client"]) == set(unseen)
    methods = set(quick("client_adaptation")["methods"])
    assert set(table[table["phase"] == "adapted"]["method"]) == methods
    for u in unseen:  # every method adapted to every unseen client
        assert set(table[(table["phase"] == "adapted") & (table["client"] == u)]["method"]) == (
            methods
        )
    assert set(pretrained["method"]) == set(quick("federated_pretraining")["methods"])
    assert np.isfinite(table[["kid_mean", "kid_std"]].to_numpy(float)).all()
    (extractor,) = set(table["extractor"])
    kid_params = quick("kid_evaluation")
    assert extractor == f"{kid_params['extractor']}_{kid_params['image_size']}px"
    assert (table["n_generated"] == kid_params["num_generated"]).all()
    assert (table["n_real"] <= kid_params["max_real"]).all()


def test_conditioning_strength(main_run, clients) -> None:
    """The samples KID drew are labelled: one row per (client, method, phase) of the KID table,
    measures in range, metrics and a table in the report."""
    project, _ = main_run
    kid = pd.read_csv(versioned(project, "data/08_reporting/kid_table.csv"))
    table = pd.read_csv(versioned(project, "data/08_reporting/conditioning_strength.csv"))
    keys = ["client", "method", "phase"]
    assert set(map(tuple, table[keys].to_numpy())) == set(map(tuple, kid[keys].to_numpy()))
    assert table["own_class_share"].between(0, 1).all()
    assert table["tv_distance"].between(0, 1).all()
    assert (table["n_samples"] == quick("kid_evaluation")["num_generated"]).all()
    assert table["classifier_accuracy"].between(0.3, 1).all()  # chance: 0.1
    _, run = mlflow_run(project, "__default__ · quick · seed 0")
    assert "conditioning.classifier_accuracy" in run.data.metrics
    assert any(k.startswith("conditioning.adapted.unseen.spire.") for k in run.data.metrics)
    report = (project / "data/08_reporting/latest/report.md").read_text()
    assert "Conditioning strength of the same samples" in report


def test_tuning_tables(main_run, tuning_clients) -> None:
    """Every method was tuned on the tuning clients with the same grid, and the evaluation
    clients were adapted with each method's choice."""
    project, _ = main_run
    params = quick("client_adaptation")
    grid = pd.read_csv(versioned(project, "data/07_model_output/tuning_table.csv"))
    assert set(grid["client"]) == set(tuning_clients)
    expected = {
        (m, lr, e)
        for m in params["methods"]
        for lr in params["tuning"]["learning_rates"]
        for e in params["tuning"]["epochs"]
    }
    assert set(zip(grid["method"], grid["lr"], grid["epochs"])) == expected
    choices = pd.read_csv(versioned(project, "data/06_models/adaptation_choices.csv"))
    assert list(choices["method"]) == params["methods"]
    assert set(choices["source"]) == {"tuning"}
    assert set(choices["lr"]) <= set(params["tuning"]["learning_rates"])
    adaptation = pd.read_csv(versioned(project, "data/07_model_output/adaptation_table.csv"))
    chosen = dict(zip(choices["method"], choices["lr"]))
    assert all(chosen[m] == lr for m, lr in zip(adaptation["method"], adaptation["lr"]))
    validation = pd.read_csv(versioned(project, "data/07_model_output/pretraining_validation.csv"))
    assert set(validation["method"]) == set(quick("federated_pretraining")["methods"])
    assert np.isfinite(validation["val_loss"]).all()


def test_reporting_tables(main_run, clients) -> None:
    project, _ = main_run
    _, unseen = clients
    methods = quick("client_adaptation")["methods"]
    adaptation = pd.read_csv(versioned(project, "data/07_model_output/adaptation_table.csv"))
    assert {"client", "method", "trained_params", "trained_pct", "seconds"} <= set(
        adaptation.columns
    )
    assert sorted(zip(adaptation["method"], adaptation["client"])) == sorted(
        (m, u) for m in methods for u in unseen
    )
    assert (adaptation["trained_params"] > 0).all() and (adaptation["seconds"] > 0).all()
    assert (adaptation["trained_pct"] <= 100).all()
    spire = adaptation[adaptation["method"] == "spire"]
    width = quick("federated_pretraining")["backbone"]["block_out_channels"][0]
    assert (spire["trained_params"] == 4 * width).all()

    unseen_table = pd.read_csv(versioned(project, "data/08_reporting/unseen_client_table.csv"))
    assert set(unseen_table["method"]) == set(methods)
    forgetting = pd.read_csv(versioned(project, "data/08_reporting/forgetting_table.csv"))
    f = forgetting.set_index("method")
    assert {"spire", "full_finetune", "lora", "bitfit", "head"} <= set(f.index)
    assert "scratch" not in f.index  # serves nobody else: nothing to forget
    assert (f["adaptations"] == quick("kid_evaluation")["forgetting_clients"]).all()
    assert np.isfinite(f[["change", "noise_band"]].to_numpy(float)).all()
    # quick adapts too few clients for a 95 % interval of a median (stats.min_clients)
    ci = f[["ci_low", "ci_high"]].to_numpy(float)
    enough = f["adaptations"].to_numpy() >= min_clients(0.95)
    assert np.isfinite(ci[enough]).all() and np.isinf(ci[~enough]).all()
    claims = pd.read_csv(versioned(project, "data/08_reporting/claims.csv"))
    assert {"claim", "verdict", "effect", "ci_low", "ci_high", "n_clients", "holds"} <= set(
        claims.columns
    )
    assert [c.split(".")[0] for c in claims["claim"]] == ["1", "2", "3", "4", "5"]
    assert set(claims["verdict"]) <= {"holds", "fails", "inconclusive"}
    folder = project / "data/08_reporting/report"
    report = (folder / one_version(folder) / "report.md").read_text()
    assert report.startswith("# SPIRE run report") and "## Claims" in report
    assert ROBUSTNESS_COMMAND in report  # claim 4 is listed, with how to check it
    latest = project / "data/08_reporting/latest"
    assert (latest / "report.md").read_text() == report
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", report)
    assert "figures/kid_bar_chart.png" in links and len(links) >= 10, links
    for link in links:
        assert (latest / link).read_bytes()[:8] == PNG_MAGIC, link
    reference = pd.read_csv(versioned(project, "data/08_reporting/kid_reference_table.csv"))
    assert set(reference["client"]) == set(clients[0] + clients[1])
    assert np.isfinite(reference["kid_mean"].to_numpy(float)).all()
    assert versioned(project, "data/08_reporting/kid_summary.csv").is_file()
    for png in ("kid_bar_chart.png", "efficiency.png"):
        assert versioned(project, f"data/08_reporting/{png}").read_bytes()[:8] == PNG_MAGIC
    # one save version for everything the run wrote
    versions = {
        one_version(project / rel)
        for rel in (
            "data/08_reporting/kid_table.csv",
            "data/08_reporting/unseen_client_table.csv",
            "data/08_reporting/forgetting_table.csv",
            "data/08_reporting/claims.csv",
            "data/08_reporting/report",
            "data/07_model_output/adaptation_table.csv",
            "data/06_models/pretrained",
            "data/06_models/adapted",
        )
    }
    assert len(versions) == 1, versions


def test_mlflow_metrics_and_artifacts(main_run) -> None:
    project, _ = main_run
    client, run = mlflow_run(project, "__default__ · quick · seed 0")
    assert run.info.status == "FINISHED"
    (extractor,) = set(
        pd.read_csv(versioned(project, "data/08_reporting/kid_table.csv"))["extractor"]
    )
    metrics = run.data.metrics
    for prefix in (
        f"kid.{extractor}.",
        "adaptation.",
        "pretraining.",
        "partition.",
        "gmm_theory.",
        "reporting.",
    ):
        assert any(k.startswith(prefix) for k in metrics), (prefix, sorted(metrics)[:20])
    assert all(np.isfinite(v) for k, v in metrics.items() if k.startswith("kid."))
    files = artifact_files(client, run.info.run_id)
    for folder in ("kid_evaluation/", "client_adaptation/", "reporting/"):
        assert any(f.startswith(folder) for f in files), (folder, sorted(files))
    assert {
        "kid_evaluation/kid_table.csv",
        "client_adaptation/adaptation_table.csv",
        "reporting/claims.csv",
        "reporting/run_report/report.md",
        "reporting/run_report/figures/kid_bar_chart.png",
    } <= files


def test_mlflow_parent_run_names_and_tags(main_run) -> None:
    project, _ = main_run
    _, run = mlflow_run(project, "__default__ · quick · seed 0")
    tags = run.data.tags
    assert tags["env"] == "quick" and tags["seed"] == "0" and tags["pipeline"] == "__default__"
    assert tags["command"] == tags["kedro_command"] == "kedro run --env quick"
    assert tags["dataset"] == "fashion-mnist"
    assert tags["partition_scheme"].startswith(quick("data_partitioning")["scheme"])
    assert tags["git_commit"] == "unknown"  # the project copy is no git checkout
    assert not any(k == "runner" or "object at 0x" in v for k, v in tags.items()), tags
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(project)


def test_mlflow_child_run_per_method_with_shared_metric_names(main_run) -> None:
    project, _ = main_run
    client, parent = mlflow_run(project, "__default__ · quick · seed 0")
    experiment = parent.info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_method = {r.data.tags["method"]: r for r in children}
    pretraining = set(quick("federated_pretraining")["methods"])
    adaptation = set(quick("client_adaptation")["methods"])
    assert set(by_method) == pretraining | adaptation and len(children) == len(by_method)
    assert {r.info.status for r in children} == {"FINISHED"}
    assert all(r.info.run_name == m for m, r in by_method.items())
    (extractor,) = set(
        pd.read_csv(versioned(project, "data/08_reporting/kid_table.csv"))["extractor"]
    )
    for method, run in by_method.items():
        names = set(run.data.metrics)
        assert all(np.isfinite(v) for v in run.data.metrics.values()), method
        phases = run.data.tags["phase"].split("+")
        assert ("pretraining" in phases) == (method in pretraining), method
        assert ("adaptation" in phases) == (method in adaptation), method
        if method in pretraining:
            assert {f"kid_seen_median.{extractor}", "pretrain_seconds"} <= names, method
            assert "pretrain_val_loss" in names, method
        if method in adaptation:
            assert {f"kid_unseen_median.{extractor}", "trained_params", "trained_pct"} <= names
            assert {"adapt_seconds", "tuned_lr", "tuning_score"} <= names, method
    # the adaptation baselines that share weights line up on exactly the same metric names
    shared = [set(by_method[m].data.metrics) for m in adaptation - pretraining - {"scratch"}]
    assert shared and all(names == shared[0] for names in shared), shared
    assert "forgetting" in shared[0]
    table = pd.read_csv(versioned(project, "data/07_model_output/adaptation_table.csv"))
    spire = table[table["method"] == "spire"]
    assert by_method["spire"].data.metrics["trained_params"] == spire["trained_params"].median()


def test_compare_prints_the_methods_side_by_side(main_run, capsys) -> None:
    from spire_pipeline import compare

    project, _ = main_run
    assert compare.main(["--project", str(project)]) == 0
    out = capsys.readouterr().out
    print(out)
    methods = set(quick("federated_pretraining")["methods"]) | set(
        quick("client_adaptation")["methods"]
    )
    header = next(line for line in out.splitlines() if "spire" in line.split())
    assert set(header.split()) == methods, out
    assert "__default__ · quick · seed 0" in out
    assert any(line.startswith("kid_unseen_median") for line in out.splitlines()), out


def test_registry_lists_every_pipeline(main_run, kedro_cli) -> None:
    project, _ = main_run
    result = kedro_cli(project, "registry", "list", timeout=120)
    listed = {line.strip().removeprefix("- ") for line in result.stdout.splitlines()}
    assert PIPELINES <= listed, result.tail()


# ----------------------------------------------------------------------------- robustness sweep


def test_robustness_sweep_after_the_main_job(sweep_run, tuning_clients) -> None:
    """The sweep runs on the tuning clients (never on the evaluation clients)."""
    project, result = sweep_run
    assert "Pipeline execution completed successfully" in result.flat_output, result.tail()
    params = quick("robustness_sweep")
    table = pd.read_csv(versioned(project, "data/07_model_output/sweep_table.csv"))
    cells = {
        (m, c, lr, e)
        for m, c, lr, e in zip(table["method"], table["client"], table["lr"], table["epochs"])
    }
    expected = {
        (m, c, lr, e)
        for m in params["methods"]
        for c in tuning_clients[: params["clients"]]
        for lr in params["learning_rates"]
        for e in params["epochs"]
    }
    assert cells == expected and len(table) == len(expected)
    assert np.isfinite(table["kid_mean"].to_numpy(float)).all()
    assert (table["n_generated"] == params["num_generated"]).all()
    summary = pd.read_csv(versioned(project, "data/08_reporting/sweep_summary.csv"))
    assert set(summary["method"]) == set(params["methods"])
    assert {"kid_median", "kid_best", "kid_worst", "spread"} <= set(summary.columns)
    heatmaps = project / "data/08_reporting/sweep_heatmaps"
    pngs = sorted((heatmaps / one_version(heatmaps)).iterdir())
    assert [p.name for p in pngs] == sorted(f"{m}.png" for m in params["methods"])
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    client, run = mlflow_run(project, "robustness_sweep · quick · seed 0")
    assert run.info.status == "FINISHED"
    assert any(k.startswith("sweep.") for k in run.data.metrics)
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert {r.data.tags["method"] for r in children} == set(params["methods"])
    (extractor,) = set(table["extractor"])
    for child in children:
        assert {f"sweep_kid_median.{extractor}", "sweep_spread"} <= set(child.data.metrics)
