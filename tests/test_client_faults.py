"""Client faults in the ``inprocess`` engine (issue 16, item 2): a client whose training raises,
or whose update holds NaN or infinity, is left out of that round's average and recorded (the
round's ``failed`` list, the history table's ``failed`` column, the MLflow metric
``<method>.failed.<client>``, one log line naming the client and the reason); the run goes on
while at least ``min_clients`` delivered an update, and otherwise stops with one clear error and
the last checkpoint intact, from which the same call resumes.

The same checks of an update run in :class:`RoundLoop`, which the ``flower`` engine shares; its
ClientApp turns any training exception into the same ``failed`` reply
(``tests/test_flower.py``: the reply's mapping; ``tests/test_flower_faults.py``: killed
SuperNodes).
"""

from __future__ import annotations

import logging

import pytest
import torch

from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.federated import (
    ClientData,
    ClientFault,
    ClientUpdate,
    NotEnoughClientsError,
    Trainer,
    WeightedAverage,
    pretrain,
    update_fault,
)
from spire_pipeline.spire.history import history_metrics, history_rows

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = (8, 16, 24, 32)


def make_cfg(**overrides) -> PretrainingConfig:
    return PretrainingConfig.model_validate(
        dict(
            seed=1,
            methods=["spire"],
            backbone=dict(block_out_channels=[8, 16], norm_num_groups=4, image_size=16),
            diffusion=dict(num_train_timesteps=100, sampler_steps=2),
            rounds=3,
            client_fraction=1.0,
            min_clients=2,
            local=dict(steps=2, batch_size=8),
        )
        | overrides
    )


def make_clients() -> list[ClientData]:
    g = torch.Generator().manual_seed(0)
    return [
        ClientData(f"c{k}", torch.rand(n, 1, 16, 16, generator=g) * 2 - 1)
        for k, n in enumerate(SIZES)
    ]


class FaultyTrainer:
    """Patches ``Trainer.train``: ``faults[(round, client)]`` is ``"raise"`` (training raises
    an ordinary exception) or ``"nan"`` / ``"inf"`` (the update holds such a value); every call
    that delivers is recorded."""

    def __init__(self, monkeypatch, faults: dict[tuple[int, str], str]) -> None:
        self.faults, self.delivered = faults, []
        original = Trainer.train

        def train(trainer, backbone, client, state, round_idx, index):
            fault = self.faults.get((round_idx, client.client))
            if fault == "raise":
                raise RuntimeError("CUDA error: device-side assert (simulated)")
            update, new_state = original(trainer, backbone, client, state, round_idx, index)
            if fault in ("nan", "inf"):
                name = next(iter(update.upload))
                poisoned = update.upload[name].clone()
                poisoned.view(-1)[0] = float(fault)
                update = ClientUpdate({**update.upload, name: poisoned}, update.num_samples, 0.1)
            else:
                self.delivered.append((round_idx, client.client, update))
            return update, new_state

        monkeypatch.setattr(Trainer, "train", train)


def test_crashing_and_nan_clients_are_left_out_recorded_and_the_run_goes_on(
    monkeypatch, caplog, tmp_path
) -> None:
    faults = {(0, "c1"): "raise", (1, "c2"): "nan", (2, "c0"): "inf", (2, "c3"): "raise"}
    spy = FaultyTrainer(monkeypatch, faults)
    rounds = []

    def keep(server, states) -> None:
        rounds.append({k: v.clone() for k, v in server.backbone.items()})

    cfg = make_cfg()
    with caplog.at_level(logging.WARNING, logger="spire_pipeline.spire.federated"):
        bundle, history = pretrain(
            "spire", cfg, make_clients(), tmp_path / "ck.pt", progress=False, callbacks=[keep]
        )
    assert [h["failed"] for h in history] == [["c1"], ["c2"], ["c0", "c3"]]
    assert [sorted(h["client_losses"]) for h in history] == [
        ["c0", "c2", "c3"],
        ["c0", "c1", "c3"],
        ["c1", "c2"],
    ]
    # one warning per fault, naming the client and the reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4, warnings
    assert "spire, round 1 of 3: client c1: training raised RuntimeError: CUDA" in warnings[0]
    assert "spire, round 2 of 3: client c2: its update holds NaN or infinity in 1 of" in warnings[1]
    assert "spire, round 3 of 3: client c0: its update holds NaN or infinity" in warnings[2]
    assert all("its update is dropped" in w for w in warnings)
    # each round's backbone is the sample-weighted average of the healthy updates alone
    for r, backbone in enumerate(rounds):
        avg = WeightedAverage()
        for rr, _, update in spy.delivered:
            if rr == r:
                avg.add(update.upload, update.num_samples)
        expected = avg.result(backbone)
        for name, value in expected.items():
            assert torch.equal(backbone[name], value), (r, name)
        assert all(torch.isfinite(v).all() for v in backbone.values())
    assert all(torch.isfinite(e).all() for e in bundle.embeddings.values())
    # the history table and the MLflow metrics name every client left out
    rows = history_rows(history)
    assert {row["failed"] for row in rows if row["round"] == 2} == {"c0,c3"}
    metrics = history_metrics("spire", history)
    assert metrics["spire.failed.c1"] == [{"value": 1.0, "step": 0}]
    assert metrics["spire.failed.c2"] == [{"value": 1.0, "step": 1}]
    assert [m["value"] for m in metrics["spire.clients_failed"]] == [1.0, 1.0, 2.0]


def test_below_min_clients_the_run_stops_with_the_checkpoint_intact_then_resumes(
    monkeypatch, tmp_path
) -> None:
    cfg, clients, checkpoint = make_cfg(), make_clients(), tmp_path / "ck.pt"
    reference, _ = pretrain("spire", cfg, clients, progress=False)  # no fault at all
    faults = {(1, "c0"): "raise", (1, "c1"): "nan", (1, "c2"): "raise"}
    FaultyTrainer(monkeypatch, faults)
    with pytest.raises(NotEnoughClientsError) as err:
        pretrain("spire", cfg, clients, checkpoint, progress=False)
    message = str(err.value)
    assert "spire, round 2 of 3: only 1 of the 4 selected clients delivered an update" in message
    assert "(failed: c0, c1, c2)" in message and "min_clients = 2" in message
    assert "the checkpoint after round 1 is intact" in message
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["server"].round == 1 and len(saved["server"].history) == 1
    # the faults are gone: the same call resumes after round 1 and ends as if none happened
    faults.clear()
    bundle, history = pretrain("spire", cfg, clients, checkpoint, progress=False)
    assert [h["round"] for h in history] == [0, 1, 2] and not any(h["failed"] for h in history)
    for name, value in reference.backbone.items():
        assert torch.equal(bundle.backbone[name], value), name


def test_flower_client_whose_training_raises_replies_failed_with_the_reason(
    monkeypatch, tmp_path
) -> None:
    """The ``flower`` engine's side of the same contract: the ClientApp answers a crash in its
    training with a ``failed`` reply naming the client and the reason, which the server reads
    as the same :class:`ClientFault` (a NaN update is caught by :class:`RoundLoop` itself)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from spire_pipeline.flower.client_app import train as client_train
    from spire_pipeline.flower.server_app import FlowerRounds
    from spire_pipeline.flower.task import ClientSite, Job, save_client_data, to_record

    cfg, clients = make_cfg(), make_clients()
    job = Job(
        ["spire"],
        cfg,
        [c.client for c in clients],
        {"spire": "fp"},
        client_data=str(tmp_path / "data"),
        client_storage=str(tmp_path / "own"),
    )
    site = ClientSite.of(job, {"partition-id": 1})
    save_client_data(site.data, clients[1])
    trainer = Trainer("spire", cfg)
    content = RecordDict(
        {
            "arrays": to_record({n: trainer.initial_backbone()[n] for n in trainer.uploaded}),
            "config": ConfigRecord({"method": "spire", "round": 0, "index": 1, "after-round": -1}),
        }
    )
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_task_id", "_run_id", "_node_id"):  # as the ServerApp's process sets them
        monkeypatch.setattr(TaskIdentity, attr, 1)
    message = Message(content, dst_node_id=1, message_type="train")
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 1},
        state=RecordDict(),
        run_config=job.to_run_config(),
    )
    FaultyTrainer(monkeypatch, {(0, "c1"): "raise"})
    reply = client_train(message, context)
    outcome = FlowerRounds._outcome("c1", True, reply)
    assert outcome == ClientFault(
        "failed",
        "client c1: training raised RuntimeError: CUDA error: device-side assert (simulated)",
    )
    assert "arrays" not in reply.content  # nothing of the failed training is sent


def test_update_fault_names_the_client_and_the_array() -> None:
    ok = ClientUpdate({"a": torch.ones(3), "b": torch.zeros(2)}, 5, 0.3)
    assert update_fault("x", ok) is None
    bad = ClientUpdate({"a": torch.ones(3), "b": torch.tensor([0.0, float("-inf")])}, 5, 0.3)
    assert update_fault("x", bad) == ClientFault(
        "failed", "client x: its update holds NaN or infinity in 1 of 2 arrays (first: b)"
    )
    nan_loss = ClientUpdate({"a": torch.ones(3)}, 5, float("nan"))
    assert update_fault("x", nan_loss) == ClientFault("failed", "client x: its loss is nan")
