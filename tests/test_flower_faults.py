"""A SuperNode killed during a run (issue 15): the run goes on with the others while at least
``min_clients`` take part, and the round's record names who was missing; below the minimum it
stops with one clear error and the last checkpoint intact; the same run started again resumes
from that checkpoint.

Three SuperNodes on loopback, ``min_clients = 2``, every client in every round, two rounds:
the SuperNode of ``c2`` is killed (SIGKILL, by its process group) as soon as it has received
round 1, so round 1 goes on without it; the SuperNode of ``c1`` is killed once round 1 is
recorded, so round 2 stops. Started again with all three, the run resumes at round 2 and ends
with exactly the models of the same schedule played in process (``c2`` missing in round 1).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from spire_pipeline.flower.engine import FlowerEngine
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.federated import (
    ClientData,
    ClientFault,
    NotEnoughClientsError,
    RoundLoop,
    ServerState,
    Trainer,
    make_bundle,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _cfg(root) -> PretrainingConfig:
    return PretrainingConfig.model_validate(
        dict(
            seed=3,
            methods=["spire"],
            threads=1,
            backbone=dict(block_out_channels=[8, 16], norm_num_groups=4, image_size=16),
            diffusion=dict(num_train_timesteps=100),
            rounds=2,
            client_fraction=1.0,
            min_clients=2,
            local=dict(steps=2, batch_size=8),
            checkpoint_dir=str(root / "checkpoints"),
            flower=dict(
                runtime="deployment",
                workdir=str(root / "flower"),
                client_storage=str(root / "clients"),
                audit_dir=str(root / "audit"),
                round_timeout=300,
                straggler_timeout=5,  # or as long as the first reply took, if longer
            ),
        )
    )


def _clients() -> list[ClientData]:
    g = torch.Generator().manual_seed(11)
    return [
        ClientData(f"c{k}", torch.rand(n, 1, 16, 16, generator=g) * 2 - 1)
        for k, n in enumerate((8, 16, 24))
    ]


def _reference(cfg: PretrainingConfig, clients: list[ClientData]):
    """The same schedule in process: c2 missing in round 1 (index 0), all in round 2."""
    trainer = Trainer("spire", cfg)
    ids = [c.client for c in clients]
    states = [trainer.initial_client_state(k, len(ids)) for k in range(len(ids))]
    server = ServerState(0, trainer.initial_backbone())

    def train_round(r, selected, backbone):
        for k in selected:
            if r == 0 and k == 2:
                yield k, ClientFault("missing", "its SuperNode was killed")
                continue
            update, states[k] = trainer.train(backbone, clients[k], states[k], r, k)
            yield k, update

    RoundLoop("spire", cfg, ids, trainer.uploaded, True, server).run(train_round, progress=False)
    return make_bundle(trainer, cfg, ids, server, states), server.history


def _killer(engine: FlowerEngine, stop: threading.Event, killed: list[str]) -> None:
    """Kill c2's SuperNode once it received round 1, and c1's once round 1 is recorded."""
    while not stop.is_set():
        received = engine.supernodes["c2"].tail(100_000).count("Receiving: train message")
        if not killed and received:
            os.killpg(engine.supernodes["c2"].proc.pid, signal.SIGKILL)
            killed.append("c2")
        progress = list((engine.workdir / "runs").glob("*/spire/progress.jsonl"))
        if killed == ["c2"] and progress and progress[0].read_text().count("\n") >= 1:
            os.killpg(engine.supernodes["c1"].proc.pid, signal.SIGKILL)
            killed.append("c1")
        time.sleep(0.05)


def test_killed_supernodes_missing_then_too_few_then_resume(
    tmp_path, monkeypatch, leftover_processes
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "tmp" / "flwr"))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp" / "ray"))
    cfg, clients = _cfg(tmp_path), _clients()

    # the run with two SuperNodes killed
    killed: list[str] = []
    with FlowerEngine(cfg, clients, project_dir=tmp_path) as engine:
        checkpoint = engine.checkpoint("spire")
        stop = threading.Event()
        killer = threading.Thread(target=_killer, args=(engine, stop, killed))
        killer.start()
        try:
            with pytest.raises(NotEnoughClientsError) as err:
                list(engine.pretrain(["spire"], progress=False))
        finally:
            stop.set()
            killer.join()
    assert killed == ["c2", "c1"]
    message = str(err.value)
    assert "spire, round 2 of 2: only 1 of the 3 selected clients could be reached" in message
    assert "missing: c1, c2" in message and "min_clients = 2" in message
    assert "the checkpoint after round 1 is intact" in message
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["server"].round == 1  # round 1 is kept, round 2 never happened
    (first,) = saved["server"].history
    assert first["clients"] == ["c0", "c1", "c2"] and first["missing"] == ["c2"]
    assert set(first["client_losses"]) == {"c0", "c1"}
    assert leftover_processes(tmp_path) == []

    # the same run again, every SuperNode up: it resumes at round 2
    with FlowerEngine(cfg, clients, project_dir=tmp_path) as engine:
        ((method, bundle, history),) = list(engine.pretrain(["spire"], progress=False))
    runs = sorted((tmp_path / "flower" / "runs").iterdir())
    lines = (runs[-1] / "spire" / "progress.jsonl").read_text().splitlines()
    assert len(lines) == 1  # only round 2 was played again
    assert [rec["missing"] for rec in history] == [["c2"], []]
    assert sorted(bundle.embeddings) == ["c0", "c1", "c2"]

    # exactly the models of the same schedule in process
    reference, ref_history = _reference(cfg, clients)
    assert [r["client_losses"] for r in history] == [r["client_losses"] for r in ref_history]
    for name, value in reference.backbone.items():
        assert torch.equal(bundle.backbone[name], value), name
    for client, value in reference.embeddings.items():
        assert torch.equal(bundle.embeddings[client], value), client
    assert leftover_processes(tmp_path) == []
