"""MLflow made for comparison (issue 14): shared metric names per method, run names and tags,
a store that stays inside its project, no run left RUNNING, and ``make compare``.

Fast: small tables in memory and temporary SQLite stores (one empty store is created per
session and copied; creating one runs MLflow's migrations, which takes seconds).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from spire_pipeline import compare
from spire_pipeline.hooks import PARAMETER_MODELS
from spire_pipeline.tracking import method_metrics, run_info
from spire_pipeline.tracking.store import OpenRuns, mark_stale_runs, relocate_artifacts

REPO = Path(__file__).resolve().parents[1]
X = "efficientnet_lite0_64px"
ADAPTATION = ["spire", "full_finetune", "lora", "bitfit", "head", "scratch"]


# ----------------------------------------------------------------------------- tables


def kid_summary() -> pd.DataFrame:
    """The shape ``kid_evaluation`` saves (values made up, one per row)."""
    rows = [("pretrained", "seen", m, 30.0 + i) for i, m in enumerate(["fedavg", "spire"])]
    rows += [("pretrained", "unseen", "fedavg", 29.0)]
    rows += [("adapted", "unseen", m, 20.0 + i) for i, m in enumerate(ADAPTATION)]
    rows += [("after_adaptation", "seen", m, 40.0 + i) for i, m in enumerate(ADAPTATION[:-1])]
    rows += [("adapted", "tuning", "spire", 99.0)]  # a role the metrics do not name
    table = pd.DataFrame(rows, columns=["phase", "role", "method", "kid_median"])
    table["kid_worst"] = table["kid_median"] + 1
    table["clients"] = 2
    table["extractor"] = X
    return table


def adaptation_table() -> pd.DataFrame:
    rows = [
        (c, m, 10 * (i + 1), 0.1 * (i + 1), s, 0.4)
        for i, m in enumerate(ADAPTATION)
        for c, s in (("unseen_00", 1.0), ("unseen_01", 3.0))
    ]
    columns = ["client", "method", "trained_params", "trained_pct", "seconds", "final_loss"]
    return pd.DataFrame(rows, columns=columns)


def forgetting_table() -> pd.DataFrame:
    methods = ADAPTATION[:-1]
    return pd.DataFrame(
        {
            "method": methods,
            "base": ["spire" if m == "spire" else "fedavg" for m in methods],
            "change": [0.0, -5.0, 0.1, 0.6, -1.0],
            "ci_low": [-1.0, -6.0, -0.5, 0.1, -2.0],
            "ci_high": [1.0, -4.0, 0.7, 1.1, 0.0],
        }
    )


def adaptation_choices() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ADAPTATION,
            "lr": [1e-3] * 6,
            "epochs": [1] * 6,
            "steps": [float("nan")] * 6,
            "embedding_init": ["mean_seen", "", "", "", "", ""],
            "tuning_score": [27.0 + i for i in range(6)],
        }
    )


def pretraining_validation() -> pd.DataFrame:
    return pd.DataFrame(
        {"method": ["spire"] * 3 + ["fedavg"] * 3, "val_loss": [0.3, 0.4, 0.5, 0.5, 0.6, 0.7]}
    )


def pretraining_history() -> pd.DataFrame:
    rows = []
    for method in ("spire", "fedavg"):
        for rnd, (loss, seconds) in enumerate([(0.7, 6.0), (0.5, 2.0)]):
            for client in ("seen_00", "seen_01"):
                rows.append((method, rnd, loss, 100, 300, seconds, client))
    columns = ["method", "round", "loss_mean", "bytes_down", "bytes_up", "seconds", "client"]
    return pd.DataFrame(rows, columns=columns)


def all_metrics() -> dict[str, dict[str, float]]:
    tables = {
        "pretraining_history": pretraining_history(),
        "adaptation_table": adaptation_table(),
        "kid_summary": kid_summary(),
        "unseen_client_table": adaptation_table(),
        "forgetting_table": forgetting_table(),
        "adaptation_choices": adaptation_choices(),
        "pretraining_validation": pretraining_validation(),
    }
    out: dict[str, dict[str, float]] = {}
    for name, table in tables.items():
        read, _ = method_metrics.READERS[name]
        for method, values in read(table).items():
            out.setdefault(method, {}).update(values)
    return out


def test_kid_metrics_per_phase_and_role() -> None:
    metrics = method_metrics.from_kid_summary(kid_summary())
    assert metrics["fedavg"] == {
        f"kid_seen_median.{X}": 30.0,
        f"kid_seen_worst.{X}": 31.0,
        f"kid_unseen_median.{X}": 29.0,  # fedavg is not adapted: its model as is
        f"kid_unseen_worst.{X}": 30.0,
    }
    spire = metrics["spire"]
    assert spire[f"kid_seen_median.{X}"] == 31.0
    assert spire[f"kid_unseen_median.{X}"] == 20.0  # adapted, never the tuning role's 99
    assert spire[f"kid_seen_after_adaptation_median.{X}"] == 40.0
    assert f"kid_seen_median.{X}" not in metrics["lora"]


def test_every_method_gets_the_shared_names() -> None:
    metrics = all_metrics()
    assert set(metrics) == {"fedavg", *ADAPTATION}
    shared = {*(f"{n}.{X}" for n in method_metrics.KID_METRICS), *method_metrics.OTHER_METRICS}
    for method, values in metrics.items():
        assert set(values) <= shared, (method, set(values) - shared)
        assert f"kid_unseen_median.{X}" in values, method
    # the weight-sharing adaptation methods line up on exactly the same names
    sharing = [
        set(metrics[m]) - {k for k in metrics[m] if k.startswith("pretrain_")}
        for m in (
            "full_finetune",
            "lora",
            "bitfit",
            "head",
        )
    ]
    assert all(s == sharing[0] for s in sharing), sharing
    assert {"trained_params", "adapt_seconds", "forgetting", "tuned_lr"} <= sharing[0]
    # pretraining methods line up on the pretraining names
    pretraining = {k for k in metrics["fedavg"] if k.startswith("pretrain_")}
    assert pretraining == {k for k in metrics["spire"] if k.startswith("pretrain_")}
    assert pretraining == {
        "pretrain_seconds",
        "pretrain_rounds",
        "pretrain_final_loss",
        "pretrain_communication_mb",
        "pretrain_val_loss",
    }


def test_metric_values() -> None:
    metrics = all_metrics()
    assert metrics["lora"]["trained_params"] == 30
    assert metrics["lora"]["adapt_seconds"] == 2.0  # median over clients
    assert metrics["lora"]["forgetting"] == 0.1
    assert (metrics["lora"]["forgetting_ci_low"], metrics["lora"]["forgetting_ci_high"]) == (
        -0.5,
        0.7,
    )
    assert metrics["spire"]["tuned_lr"] == 1e-3 and metrics["spire"]["tuning_score"] == 27.0
    assert "tuned_steps" not in metrics["spire"]  # NaN: not chosen
    assert metrics["spire"]["pretrain_val_loss"] == 0.4
    older = forgetting_table().rename(columns={"change": "difference"})
    older["worst_difference"] = 9.0
    assert method_metrics.from_forgetting_table(older)["lora"]["forgetting_worst"] == 9.0
    assert method_metrics.from_forgetting_table(older)["lora"]["forgetting"] == 0.1
    fedavg = metrics["fedavg"]
    assert fedavg["pretrain_rounds"] == 2
    assert fedavg["pretrain_seconds"] == 8.0  # per round, not per client row
    assert fedavg["pretrain_final_loss"] == 0.5
    assert fedavg["pretrain_communication_mb"] == pytest.approx(4 * 400 / 1e6)


def test_readers_tolerate_other_shapes() -> None:
    for read, _ in method_metrics.READERS.values():
        assert read(pd.DataFrame()) == {}
        assert read(pd.DataFrame({"method": ["spire"]})) in ({}, {"spire": {}})
    no_worst = kid_summary().drop(columns=["kid_worst", "extractor"])
    metrics = method_metrics.from_kid_summary(no_worst)
    assert metrics["fedavg"] == {"kid_seen_median": 30.0, "kid_unseen_median": 29.0}
    partial = method_metrics.from_adaptation_table(adaptation_table()[["method", "seconds"]])
    assert partial["spire"] == {"adapt_seconds": 2.0}
    nan = adaptation_table().assign(final_loss=float("nan"))
    assert "adapt_final_loss" not in method_metrics.from_adaptation_table(nan)["spire"]


def test_sweep_metrics() -> None:
    rows = [
        ("spire", lr, epochs, client, kid, X)
        for lr, epochs, kid in ((0.1, 1, 10.0), (0.1, 5, 30.0), (0.01, 1, 20.0))
        for client in ("unseen_00", "unseen_01")
    ]
    rows.append(("lora", 0.1, 1, "unseen_00", float("nan"), X))  # a diverged cell
    table = pd.DataFrame(
        rows, columns=["method", "lr", "epochs", "client", "kid_mean", "extractor"]
    )
    metrics = method_metrics.from_sweep_table(table)
    assert metrics["spire"] == {
        f"sweep_kid_median.{X}": 20.0,
        f"sweep_kid_best.{X}": 10.0,
        f"sweep_kid_worst.{X}": 30.0,
        "sweep_spread": 3.0,
        "sweep_diverged_cells": 0.0,
    }
    assert metrics["lora"] == {"sweep_diverged_cells": 1.0}


# ----------------------------------------------------------------------------- run name, tags


def test_run_name_and_seed() -> None:
    sections = list(PARAMETER_MODELS)
    inputs = ["client_splits", "params:federated_pretraining", "params:kid_evaluation.seed"]
    assert run_info.used_sections(inputs, sections) == ["federated_pretraining", "kid_evaluation"]
    assert run_info.used_sections(["parameters"], sections) == sections
    params = {"federated_pretraining": {"seed": 3}, "kid_evaluation": {"seed": 5}}
    assert run_info.run_seed(params, ["federated_pretraining", "kid_evaluation"]) == 3
    assert run_info.run_seed(params, ["gmm_theory"]) is None
    assert run_info.run_name(None, None, 0) == "__default__ · base · seed 0"
    assert run_info.run_name(["a", "b"], "quick", None) == "a+b · quick"


def test_command_line_is_the_real_one() -> None:
    argv = ["/venv/bin/kedro", "run", "--env", "quick", "--params", "a.b=1 2"]
    assert run_info.command_line(argv) == "kedro run --env quick --params 'a.b=1 2'"
    main = ["/x/site-packages/spire_pipeline/__main__.py", "--env", "quick"]
    assert run_info.command_line(main) == "python -m spire_pipeline --env quick"


def test_dataset_and_partition_tags() -> None:
    described = {
        "images_filepath": "data/01_raw/fashion-mnist/train-images-idx3-ubyte.gz",
        "labels_filepath": "data/01_raw/fashion-mnist/train-labels-idx1-ubyte.gz",
    }
    name, path = run_info.dataset_source(described)
    assert name == "fashion-mnist" and "train-labels" in path
    assert run_info.dataset_source({}) == ("unknown", "unknown")
    shards = {"scheme": "shards", "classes_per_client": 2, "num_seen_clients": 4}
    assert run_info.partition_scheme({"data_partitioning": shards}) == (
        "shards (2 classes per client), 4 seen clients"
    )
    dirichlet = {"scheme": "dirichlet", "alpha": 0.3, "num_seen_clients": 4}
    dirichlet["num_unseen_clients"] = 2
    assert run_info.partition_scheme({"data_partitioning": dirichlet}) == (
        "dirichlet (alpha 0.3), 4 seen + 2 unseen clients"
    )


def test_git_commit(tmp_path) -> None:
    assert run_info.git_commit(tmp_path) == ("unknown", None)
    if (REPO / ".git").exists():
        commit, dirty = run_info.git_commit(REPO)
        assert len(commit) == 40 and isinstance(dirty, bool)


def test_tags_name_no_runner_and_the_real_command(tmp_path) -> None:
    tags = run_info.run_tags(
        pipelines=None,
        env="quick",
        seed=0,
        parameters={"data_partitioning": {"scheme": "shards"}},
        dataset={"filepath": "data/01_raw/mine/train.npz"},
        project_path=tmp_path,
        argv=["kedro", "run", "--env", "quick"],
    )
    assert tags["command"] == tags["kedro_command"] == "kedro run --env quick"
    assert tags["env"] == "quick" and tags["dataset"] == "mine" and tags["git_commit"] == "unknown"
    assert tags[run_info.TAG_PID] == str(os.getpid())
    assert not any("runner" in k for k in tags)


# ----------------------------------------------------------------------------- the store


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite database (created once: MLflow's migrations take seconds)."""
    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def new_project(folder: Path, empty_store: Path) -> tuple[Path, str]:
    folder.mkdir(parents=True)
    shutil.copy2(empty_store, folder / "mlflow.db")
    return folder, f"sqlite:///{folder / 'mlflow.db'}"


def _log_one_artifact(uri: str, experiment_id: str, tmp_path: Path, name: str) -> str:
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(experiment_id, run_name=name)
    payload = tmp_path / f"{name}.txt"
    payload.write_text(name)
    client.log_artifact(run.info.run_id, str(payload))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_two_copies_write_artifacts_into_their_own_folder(tmp_path, empty_store, monkeypatch):
    a, uri_a = new_project(tmp_path / "a" / "project", empty_store)
    monkeypatch.chdir(a)  # MLflow resolves its default artifact root against the cwd
    experiment = MlflowClient(tracking_uri=uri_a).create_experiment("spire_pipeline")
    first = _log_one_artifact(uri_a, experiment, tmp_path, "first")
    assert files_under(a / "mlruns")
    relocate_artifacts(uri_a, a)  # (the template store's Default experiment lies elsewhere)
    assert relocate_artifacts(uri_a, a) == []  # everything inside

    b = tmp_path / "b" / "project"  # a copy, then the original stays where it is
    shutil.copytree(a, b)
    uri_b = f"sqlite:///{b / 'mlflow.db'}"
    monkeypatch.chdir(b)
    before_a = files_under(a / "mlruns")
    changed = relocate_artifacts(uri_b, b)
    assert (str(a / "mlruns" / experiment), str(b / "mlruns" / experiment)) in changed
    client_b = MlflowClient(tracking_uri=uri_b)
    assert Path(client_b.get_experiment(experiment).artifact_location) == b / "mlruns" / experiment
    # the copied run's artifacts are found in the copy
    old = client_b.get_run(first)
    assert Path(old.info.artifact_uri).is_relative_to(b)
    assert {f.path for f in client_b.list_artifacts(first)} == {"first.txt"}
    # a new run in the copy writes only into the copy
    second = _log_one_artifact(uri_b, experiment, tmp_path, "second")
    assert Path(client_b.get_run(second).info.artifact_uri).is_relative_to(b)
    assert files_under(a / "mlruns") == before_a
    assert any(p.name == "second.txt" for p in files_under(b / "mlruns"))
    # the original is untouched
    assert Path(MlflowClient(tracking_uri=uri_a).get_run(first).info.artifact_uri).is_relative_to(a)
    assert relocate_artifacts(uri_b, b) == []


def test_a_store_outside_the_project_is_left_alone(tmp_path, empty_store) -> None:
    _, uri = new_project(tmp_path / "elsewhere", empty_store)
    assert relocate_artifacts(uri, tmp_path / "project") == []
    assert relocate_artifacts("http://mlflow.example:5000", tmp_path) == []


def test_runs_of_dead_processes_are_marked_killed(tmp_path, empty_store) -> None:
    _, uri = new_project(tmp_path / "p", empty_store)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("spire_pipeline")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()

    def running(pid: int, on_host: str = host) -> str:
        tags = {run_info.TAG_PID: str(pid), run_info.TAG_HOST: on_host}
        return client.create_run(experiment, tags=tags).info.run_id

    stale, alive, other_host = running(dead.pid), running(os.getpid()), running(dead.pid, "x")
    assert mark_stale_runs(client, experiment, host) == [stale]
    status = {r: client.get_run(r).info.status for r in (stale, alive, other_host)}
    assert status == {stale: "KILLED", alive: "RUNNING", other_host: "RUNNING"}


def test_open_runs_end_killed_not_finished(tmp_path, empty_store) -> None:
    _, uri = new_project(tmp_path / "p", empty_store)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("spire_pipeline")
    mlflow.set_tracking_uri(uri)
    try:
        parent = mlflow.start_run(experiment_id=experiment).info.run_id
        child = client.create_run(experiment).info.run_id
        runs = OpenRuns()
        runs.add(parent, uri)
        runs.add(child, uri)
        assert set(runs.close_all("KILLED")) == {parent, child}
        assert mlflow.active_run() is None  # MLflow's exit handler has nothing to FINISH
        assert {client.get_run(r).info.status for r in (parent, child)} == {"KILLED"}
        assert runs.close_all() == []
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)


# ----------------------------------------------------------------------------- compare


def test_compare_prints_the_latest_runs_methods_side_by_side(tmp_path, empty_store, capsys):
    project, uri = new_project(tmp_path / "p", empty_store)
    (project / "conf" / "base").mkdir(parents=True)
    (project / "conf" / "base" / "mlflow.yml").write_text(
        "server:\n  mlflow_tracking_uri: sqlite:///mlflow.db\n"
    )
    assert compare.project_tracking_uri(project) == f"sqlite:///{project.resolve()}/mlflow.db"
    assert compare.main(["--project", str(project)]) == 1  # no runs yet
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(compare.EXPERIMENT)
    for name, metrics in (("old", {"spire": 9.0}), ("new", all_metrics())):
        parent = client.create_run(experiment, run_name=name, tags={"git_commit": "abc"})
        for method, values in metrics.items() if name == "new" else [("spire", {"x": 1.0})]:
            child = client.create_run(
                experiment,
                run_name=method,
                tags={"mlflow.parentRunId": parent.info.run_id, "method": method},
            )
            for key, value in values.items():
                client.log_metric(child.info.run_id, key, value)
    capsys.readouterr()
    assert compare.main(["--project", str(project)]) == 0
    out = capsys.readouterr().out
    assert "MLflow run 'new'" in out and X in out
    header = next(line for line in out.splitlines() if "fedavg" in line)
    assert set(header.split()) == {"fedavg", *ADAPTATION}
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[4:]}
    for name in ("kid_seen_median", "kid_unseen_median", "forgetting", "trained_params"):
        assert len(rows[name]) == 7, (name, out)
    assert "x" not in rows  # the older run's methods are not mixed in
