"""End to end (issue 3): a federated pretraining process killed with SIGKILL resumes to the
identical backbone, and ``kedro run --pipeline federated_pretraining --env quick`` writes its
versioned outputs and MLflow records in a copy of the project.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from spire_pipeline.datasets import ModelBundleDataset
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.federated import select_clients
from spire_pipeline.spire.partition import client_names

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ----------------------------------------------------------------------------- kill and resume

#: A standalone run: 4 rounds of ``spire`` on fixed synthetic data with a tiny model, saving
#: the final backbone and embeddings with safetensors. With PAUSE_IN_ROUND=r it stops in the
#: middle of round r (after its first client trained, before the round is checkpointed),
#: touches PAUSE_MARKER and sleeps, so that a kill lands there deterministically.
SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    import time
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)

    from spire_pipeline.spire.config import PretrainingConfig
    from spire_pipeline.spire.federated import ClientData, Trainer, pretrain

    checkpoint, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = PretrainingConfig.model_validate(
        dict(
            seed=3,
            backbone=dict(block_out_channels=[8, 16], norm_num_groups=4, image_size=16),
            diffusion=dict(num_train_timesteps=100),
            rounds=4,
            client_fraction=0.75,
            min_clients=1,
            local=dict(steps=2, batch_size=8),
        )
    )
    g = torch.Generator().manual_seed(11)
    clients = [
        ClientData(f"c{k}", torch.rand(n, 1, 16, 16, generator=g) * 2 - 1)
        for k, n in enumerate((8, 16, 24, 32))
    ]

    pause = os.environ.get("PAUSE_IN_ROUND")
    if pause is not None:
        original = Trainer.train

        def train(self, backbone, client, state, round_idx, index):
            result = original(self, backbone, client, state, round_idx, index)
            if round_idx == int(pause):
                Path(os.environ["PAUSE_MARKER"]).write_text(client.client)
                time.sleep(300)
            return result

        Trainer.train = train

    def report(server, states):
        print(f"completed round {server.round}", flush=True)

    bundle, history = pretrain(
        "spire", cfg, clients, checkpoint=checkpoint, progress=False, callbacks=[report]
    )
    tensors = {f"backbone/{k}": v.contiguous() for k, v in bundle.backbone.items()}
    tensors |= {f"embedding/{c}": v.contiguous() for c, v in bundle.embeddings.items()}
    save_file(tensors, str(out))
    print("done", flush=True)
    """
)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _checkpoint_round(path: Path) -> int | None:
    if not path.exists():
        return None
    return torch.load(path, weights_only=False)["server"].round


def _run_script(script: Path, ckpt: Path, out: Path, env: dict | None = None, timeout=120):
    return subprocess.run(
        [sys.executable, str(script), str(ckpt), str(out)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_sigkill_mid_round_then_resume_gives_identical_backbone(tmp_path, monkeypatch) -> None:
    script = tmp_path / "pretrain_run.py"
    script.write_text(SCRIPT)

    # the uninterrupted reference (run in this process: also checks that the result does not
    # depend on the process it is computed in)
    reference = tmp_path / "reference.safetensors"
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "reference.pt"), str(reference)])
    before = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(before)
    monkeypatch.undo()
    expected = _load_tensors(reference)
    assert _checkpoint_round(tmp_path / "reference.pt") == 4

    # the same run, killed with SIGKILL in the middle of round 2 (0-based index 1 ... the
    # second round), after the checkpoint of round 1 was written
    ckpt, out, marker = tmp_path / "run.pt", tmp_path / "run.safetensors", tmp_path / "paused"
    env = {**os.environ, "PAUSE_IN_ROUND": "1", "PAUSE_MARKER": str(marker)}
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(ckpt), str(out)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, with id proc.pid
        )
        try:
            deadline = time.monotonic() + 120
            while not (marker.exists() and (_checkpoint_round(ckpt) or 0) >= 1):
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()
                assert time.monotonic() < deadline, "the run never reached round 2"
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    killed_log = (tmp_path / "killed.log").read_text()
    assert "completed round 1" in killed_log and "completed round 2" not in killed_log
    assert not out.exists()
    assert _checkpoint_round(ckpt) == 1  # round 2's progress was lost with the process

    # rerun the same command: it resumes after round 1 and finishes
    done = _run_script(script, ckpt, out)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("completed round")]
    assert lines == [f"completed round {r}" for r in (2, 3, 4)], done.stdout
    got = _load_tensors(out)
    assert set(got) == set(expected)
    assert any(k.startswith("embedding/") for k in got)
    for k, v in expected.items():
        assert torch.equal(got[k], v), f"{k} differs after kill and resume"


# ----------------------------------------------------------------------------- kedro, quick env


@pytest.fixture(scope="module")
def quick_params() -> PretrainingConfig:
    text = (REPO / "conf/quick/parameters_federated_pretraining.yml").read_text()
    return PretrainingConfig.model_validate(yaml.safe_load(text)["federated_pretraining"])


@pytest.fixture(scope="module")
def seen_clients() -> list[str]:
    text = (REPO / "conf/quick/parameters_data_partitioning.yml").read_text()
    params = yaml.safe_load(text)["data_partitioning"]
    return client_names(params["num_seen_clients"], params["num_unseen_clients"])[0]


@pytest.fixture(scope="module")
def quick_run(make_project_copy, run_kedro):
    """A private project copy with the quick data_partitioning and pretraining runs done."""
    project = make_project_copy("pretraining_e2e")
    one_thread = {"OMP_NUM_THREADS": "1"}  # a shared 2-core machine: leave the other core be
    run_kedro(
        project, "--pipeline", "data_partitioning", "--env", "quick", timeout=240, env=one_thread
    )
    result = run_kedro(
        project,
        "--pipeline",
        "federated_pretraining",
        "--env",
        "quick",
        timeout=300,
        env=one_thread,
    )
    return project, result


def _one_version(folder: Path) -> str:
    assert folder.is_dir(), f"{folder} was not written"
    versions = sorted(p.name for p in folder.iterdir())
    assert len(versions) == 1, versions
    return versions[0]


def test_quick_run_succeeds(quick_run) -> None:
    _, result = quick_run
    assert "Pipeline execution completed successfully" in result.flat_output, result.tail()
    assert "federated_pretraining" in result.flat_output
    assert "Parameters validated" in result.flat_output, result.tail()


def test_versioned_models_and_tables(quick_run, quick_params, seen_clients) -> None:
    project, _ = quick_run
    data = project / "data"
    pretrained = data / "06_models" / "pretrained"
    version = _one_version(pretrained)
    # every versioned output of the run carries the same version
    for path in (
        data / "06_models" / "client_embeddings.csv",
        data / "07_model_output" / "pretraining_history.csv",
        data / "08_reporting" / "pretraining_sample_grids",
        data / "08_reporting" / "pretraining_loss.png",
    ):
        assert _one_version(path) == version, path
    methods = list(quick_params.methods)
    assert sorted(p.name for p in (pretrained / version).iterdir()) == sorted(
        f"{m}.safetensors" for m in methods
    )
    dim = 4 * quick_params.backbone.block_out_channels[0]
    bundles = {}
    for m in methods:
        path = pretrained / version / f"{m}.safetensors"
        bundles[m] = b = ModelBundleDataset(filepath=str(path)).load()
        assert b.method == m and b.backbone_cfg == quick_params.backbone
        assert (
            b.info["clients"] == seen_clients
            and b.info["rounds"] == quick_params.for_method(m).rounds
        )
        assert all(torch.isfinite(v).all() for v in b.backbone.values())
        conditional = m in ("spire", "centralized")
        assert sorted(b.embeddings) == (seen_clients if conditional else [])
        assert all(e.shape == (dim,) for e in b.embeddings.values())
        # the checkpoint of the run holds the same backbone, after the last round
        (ckpt,) = (data / "06_models" / "checkpoints").glob(f"{m}-*.pt")
        saved = torch.load(ckpt, weights_only=False)
        assert saved["server"].round == quick_params.for_method(m).rounds
        assert all(torch.equal(saved["server"].backbone[k], v) for k, v in b.backbone.items())
    assert set(bundles["spire"].backbone) == set(bundles["fedavg"].backbone)

    table = pd.read_csv(
        data / "06_models" / "client_embeddings.csv" / version / "client_embeddings.csv"
    )
    assert list(table.columns) == ["method", "client"] + [f"e{i}" for i in range(dim)]
    expected_rows = [(m, c) for m in methods if m in ("spire", "centralized") for c in seen_clients]
    assert list(zip(table["method"], table["client"])) == expected_rows
    for _, row in table.iterrows():
        e = bundles[row["method"]].embeddings[row["client"]]
        np.testing.assert_allclose(
            row[[f"e{i}" for i in range(dim)]].to_numpy(float), e.numpy(), rtol=1e-6, atol=1e-7
        )

    history = pd.read_csv(
        data / "07_model_output" / "pretraining_history.csv" / version / "pretraining_history.csv"
    )
    assert set(history["method"]) == set(methods)
    for m in methods:
        h = history[history["method"] == m]
        assert sorted(h["round"].unique()) == list(range(quick_params.for_method(m).rounds))
        for r, rows in h.groupby("round"):
            chosen = [seen_clients[k] for k in select_clients(quick_params, r, len(seen_clients))]
            assert sorted(rows["client"]) == chosen
            assert (rows["num_clients"] == len(chosen)).all()
            assert np.isfinite(rows["client_loss"]).all()
            assert rows["failed"].isna().all()

    grids = data / "08_reporting" / "pretraining_sample_grids" / version
    assert sorted(p.name for p in grids.iterdir()) == sorted(f"{m}.png" for m in methods)
    for png in [
        *grids.iterdir(),
        data / "08_reporting/pretraining_loss.png" / version / "pretraining_loss.png",
    ]:
        assert png.read_bytes()[:8] == PNG_MAGIC, png


def test_mlflow_run_has_round_metrics_and_artifacts(quick_run, quick_params) -> None:
    import mlflow

    project, _ = quick_run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("spire_pipeline")
    runs = client.search_runs(
        [experiment.experiment_id],
        "attributes.run_name = 'federated_pretraining · quick · seed 0'",
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["federated_pretraining.rounds"] == str(quick_params.rounds)
    for m in quick_params.methods:
        values = client.get_metric_history(run.info.run_id, f"pretraining.{m}.loss_mean")
        rounds = quick_params.for_method(m).rounds
        assert sorted(v.step for v in values) == list(range(rounds))
        assert all(np.isfinite(v.value) for v in values)
        for key in ("bytes_down", "bytes_up", "seconds"):
            assert len(client.get_metric_history(run.info.run_id, f"pretraining.{m}.{key}")) == (
                rounds
            )

    def files(path=None) -> set[str]:
        out = set()
        for a in client.list_artifacts(run.info.run_id, path):
            out |= files(a.path) if a.is_dir else {a.path}
        return out

    prefix = "federated_pretraining"
    assert files() == {
        f"{prefix}/client_embeddings.csv",
        f"{prefix}/pretraining_history.csv",
        f"{prefix}/pretraining_loss.png",
        f"{prefix}/pretraining_validation.csv",
        *(f"{prefix}/pretraining_sample_grids/{m}.png" for m in quick_params.methods),
    }
