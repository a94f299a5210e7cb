"""End to end (issue 15): ``kedro run --pipeline federated_pretraining`` with
``engine=flower``, in Flower's simulation runtime and against a SuperLink with two SuperNodes,
on the quick configuration with two seen clients.

Both runs must give the ``inprocess`` engine's models bit for bit (same seed, one thread per
client, every client in every round), write the same outputs, and their clients must send
nothing but backbone arrays, sample counts and losses (each client describes every message it
sends: ``flower.audit_dir``), and their own tensors once, after the last round, for the
bundle. No Flower or Ray process may outlive a run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from spire_pipeline.datasets import ModelBundleDataset
from spire_pipeline.pipelines.federated_pretraining.nodes import seen_clients
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.federated import Trainer, pretrain
from spire_pipeline.spire.methods import PRETRAINING

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SECTION = "federated_pretraining"
SIM_METHODS = ["spire", "fedper", "local"]  # an embedding, a head, a whole model stay home
DEPLOY_METHODS = ["spire"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _edit(project: Path, name: str, section: str, changes: dict) -> None:
    path = project / "conf" / "quick" / f"parameters_{name}.yml"
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            params[section].setdefault(key, {}).update(value)
        else:
            params[section][key] = value
    path.write_text(yaml.safe_dump(params))


def _params(project: Path) -> PretrainingConfig:
    text = (project / "conf" / "quick" / "parameters_federated_pretraining.yml").read_text()
    return PretrainingConfig.model_validate(yaml.safe_load(text)[SECTION])


@pytest.fixture(scope="module")
def project(make_project_copy, run_kedro) -> Path:
    """A project copy with two seen clients (two SuperNodes), partitioned."""
    project = make_project_copy("flower_e2e")
    _edit(project, "data_partitioning", "data_partitioning", {"num_seen_clients": 2})
    run_kedro(
        project, "--pipeline", "data_partitioning", "--env", "quick", timeout=240, env=ONE_THREAD
    )
    return project


def _newest(folder: Path) -> Path:
    return folder / sorted(p.name for p in folder.iterdir())[-1]


def _snapshot(project: Path, result) -> dict:
    """What a run left: its bundles, history table, configuration and log."""
    version = _newest(project / "data" / "06_models" / "pretrained")
    history = project / "data" / "07_model_output" / "pretraining_history.csv" / version.name
    return {
        "result": result,
        "cfg": _params(project),
        "bundles": {
            p.stem: ModelBundleDataset(filepath=str(p)).load()
            for p in version.glob("*.safetensors")
        },
        "history": pd.read_csv(history / "pretraining_history.csv"),
    }


@pytest.fixture(scope="module")
def simulation(project, run_kedro) -> dict:
    _edit(
        project,
        "federated_pretraining",
        SECTION,
        {"methods": SIM_METHODS, "threads": 1, "flower": {"audit_dir": "tmp/audit-simulation"}},
    )
    result = run_kedro(
        project,
        "--pipeline",
        "federated_pretraining",
        "--env",
        "quick",
        "--params",
        f"{SECTION}.engine=flower",
        timeout=600,
    )
    return _snapshot(project, result)


@pytest.fixture(scope="module")
def deployment(simulation, project, run_kedro) -> dict:
    _edit(
        project,
        "federated_pretraining",
        SECTION,
        {"methods": DEPLOY_METHODS, "flower": {"audit_dir": "tmp/audit-deployment"}},
    )
    result = run_kedro(
        project,
        "--pipeline",
        "federated_pretraining",
        "--env",
        "quick",
        "--params",
        f"{SECTION}.engine=flower,{SECTION}.flower.runtime=deployment,{SECTION}.resume=false",
        timeout=600,
    )
    return _snapshot(project, result)


@pytest.fixture(scope="module")
def clients(project):
    folder = _newest(project / "data" / "05_model_input" / "client_splits")
    splits = {p.stem: dict(np.load(p)) for p in folder.glob("*.npz")}
    return seen_clients(splits)[0]


def _assert_same_models(got, ref) -> None:
    for attr in ("backbone", "embeddings"):
        a, b = getattr(got, attr), getattr(ref, attr)
        assert set(a) == set(b), attr
        for k in b:
            assert torch.equal(a[k], b[k]), f"{attr}/{k} differs"
    for attr in ("heads", "local"):
        a, b = getattr(got, attr), getattr(ref, attr)
        assert set(a) == set(b), attr
        for c in b:
            assert set(a[c]) == set(b[c])
            assert all(torch.equal(a[c][k], b[c][k]) for k in b[c]), f"{attr}/{c} differs"


# ----------------------------------------------------------------------------- simulation


def test_simulation_run_logs_each_round(simulation) -> None:
    result = simulation["result"]
    out = result.flat_output
    assert "Pipeline execution completed successfully" in out, result.tail()
    assert "Flower simulation run of ['spire', 'fedper', 'local']" in out, result.tail()
    for method in SIM_METHODS:
        for r in (1, 2):
            assert f"{method} round {r}/2: mean loss" in out, (method, r)
    assert "Flower: stopping" in out


def test_simulation_equals_the_inprocess_engine_bit_for_bit(simulation, clients) -> None:
    cfg = simulation["cfg"]
    assert [c.client for c in clients] == ["seen_00", "seen_01"]
    history = simulation["history"]
    for method in SIM_METHODS:
        ref, ref_history = pretrain(method, cfg, clients, progress=False)
        _assert_same_models(simulation["bundles"][method], ref)
        rows = history[history["method"] == method]
        for rec in ref_history:
            got = rows[rows["round"] == rec["round"]].set_index("client")["client_loss"]
            assert got.to_dict() == pytest.approx(rec["client_losses"], rel=1e-12)


def test_simulation_outputs_and_records(simulation, project) -> None:
    history = simulation["history"]
    assert {"missing", "failed"} <= set(history.columns)
    assert history["missing"].isna().all() and history["failed"].isna().all()
    assert sorted(history["method"].unique()) == sorted(SIM_METHODS)
    checkpoints = project / "data" / "06_models" / "checkpoints"
    for method in SIM_METHODS:
        (ckpt,) = checkpoints.glob(f"{method}-*-flower.pt")
        saved = torch.load(ckpt, weights_only=False)
        assert saved["server"].round == 2 and saved["clients"] is None  # clients keep theirs
    own = checkpoints / "flower-clients"
    assert sorted(p.name for p in own.iterdir()) == ["seen_00", "seen_01"]
    assert {p.name.split("-")[0] for p in (own / "seen_00").iterdir()} == {
        "spire",
        "fedper",
        "local",
    }

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("spire_pipeline")
    (run, *_) = client.search_runs(
        [experiment.experiment_id],
        "attributes.run_name LIKE 'federated_pretraining · %'",
        order_by=["attributes.start_time ASC"],
    )
    assert run.data.params[f"{SECTION}.engine"] == "flower"
    for method in SIM_METHODS:
        missing = client.get_metric_history(
            run.info.run_id, f"pretraining.{method}.clients_missing"
        )
        assert sorted((m.step, m.value) for m in missing) == [(0, 0.0), (1, 0.0)]
        losses = client.get_metric_history(run.info.run_id, f"pretraining.{method}.loss_mean")
        assert len(losses) == 2


def test_flower_and_ray_files_stay_in_the_project_and_nothing_is_installed(
    simulation, deployment, project
) -> None:
    tmp = project / "tmp"
    assert (tmp / "flwr" / "config.toml").is_file()
    assert any((tmp / "flwr" / "apps").iterdir())
    assert list((tmp / "ray").rglob("session_*"))
    assert not list(tmp.rglob("runtime-envs")), "Flower created a runtime environment"
    logs = [p for p in (tmp / "flower").rglob("*.log")]
    assert any("supernode" in p.name for p in logs)
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Installing application dependencies" not in text, log
        assert "uv sync" not in text, log


# ----------------------------------------------------------------------------- deployment


def test_deployment_run_with_two_supernodes_equals_the_inprocess_engine(
    deployment, clients, project
) -> None:
    result = deployment["result"]
    out = result.flat_output
    assert "Pipeline execution completed successfully" in out, result.tail()
    assert "Flower deployment: 2 SuperNodes started on loopback" in out
    assert "spire round 2/2: mean loss" in out
    for client in ("seen_00", "seen_01"):
        log = (project / "tmp" / "flower" / "logs" / f"supernode-{client}.log").read_text()
        assert "Start `flwr-clientapp` process" in log
    ref, _ = pretrain("spire", deployment["cfg"], clients, progress=False)
    _assert_same_models(deployment["bundles"]["spire"], ref)


# ----------------------------------------------------------------------------- privacy


def _audit(project: Path, runtime: str) -> dict[str, list[dict]]:
    folder = project / "tmp" / f"audit-{runtime}"
    return {
        p.stem: [json.loads(line) for line in p.read_text().splitlines()]
        for p in sorted(folder.glob("*.jsonl"))
    }


@pytest.mark.parametrize("runtime", ["simulation", "deployment"])
def test_clients_send_only_backbone_arrays_sample_counts_and_losses(
    runtime, simulation, deployment, clients, project
) -> None:
    run = simulation if runtime == "simulation" else deployment
    methods = SIM_METHODS if runtime == "simulation" else DEPLOY_METHODS
    cfg = run["cfg"]
    sent = _audit(project, runtime)
    names = {"0": "seen_00", "1": "seen_01"} if runtime == "simulation" else {}
    assert sorted(names.get(n, n) for n in sent) == ["seen_00", "seen_01"]
    sizes = {c.client: c.num_samples for c in clients}
    for node, messages in sent.items():
        client = names.get(node, node)
        assert messages[0]["received"] == "query.hello"
        assert set(messages[0]["records"]) == {"config"}
        hello = messages[0]["records"]["config"]["entries"]
        assert set(hello) <= {"client", "partition-id"} and hello
        assert all(m["error"] is None for m in messages)
        for method in methods:
            trainer = Trainer(method, cfg)
            spec = PRETRAINING[method]
            shapes = {k: list(v.shape) for k, v in trainer.initial_backbone().items()}
            mine = [m for m in messages if m["round"].split(".")[0] == method]
            trains = [m for m in mine if m["received"] == "train"]
            exports = [m for m in mine if m["received"] == "query.export"]
            rounds = cfg.for_method(method).rounds
            assert len(trains) == rounds and len(mine) == rounds + 1
            assert mine[-1] is exports[0], "its own tensors leave only after the last round"
            for m in trains:
                records = m["records"]
                assert set(records) == {"arrays", "metrics"}
                arrays = records["arrays"]
                assert arrays["kind"] == "ArrayRecord"
                assert list(arrays["entries"]) == spec.shared_names(trainer.model)
                for name, entry in arrays["entries"].items():
                    assert entry["shape"] == shapes[name] and entry["dtype"] == "float32"
                metrics = records["metrics"]
                assert metrics["kind"] == "MetricRecord"
                assert set(metrics["entries"]) == {"num-examples", "loss"}
                assert metrics["entries"]["num-examples"]["value"] == sizes[client]
                assert isinstance(metrics["entries"]["loss"]["value"], float)
            # after the last round, its own tensors, for the bundle: exactly those
            export = exports[0]["records"]
            assert set(export) == {"arrays"}
            own = set(export["arrays"]["entries"])
            expected = {"embedding"} if spec.conditional else set()
            expected |= {f"head/{n}" for n in spec.personal_names(trainer.model)}
            if spec.personal_model:
                expected = {f"model/{n}" for n in trainer.model.state_dict()}
            assert own == expected


# ----------------------------------------------------------------------------- processes


def test_no_flower_or_ray_process_is_left(simulation, deployment, project, leftover_processes):
    assert leftover_processes(project) == []
