"""The ``flower`` engine's parts that need no Flower process (issue 15): the rounds shared by
both engines (missing clients, ``min_clients``), what a client keeps and where, the run
config, the ``inprocess`` engine's uploads (privacy), the process-group bookkeeping.

The Flower runs themselves are in ``test_flower_e2e.py`` and ``test_flower_faults.py``.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from spire_pipeline.flower.processes import ProcessGroups, alive_groups, process_table
from spire_pipeline.flower.task import (
    ClientSite,
    ClientStore,
    Job,
    flatten_state,
    load_client_data,
    save_client_data,
    unflatten_state,
)
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.federated import (
    ClientData,
    ClientFault,
    NotEnoughClientsError,
    RoundLoop,
    ServerState,
    Trainer,
    WeightedAverage,
    pretrain,
)
from spire_pipeline.spire.history import history_metrics, history_rows
from spire_pipeline.spire.methods import PRETRAINING, PRETRAINING_METHODS
from spire_pipeline.spire.validation import ParameterError, validate_params

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(
    seed=0,
    methods=["spire"],
    backbone=dict(block_out_channels=[8, 16], norm_num_groups=4, image_size=16),
    diffusion=dict(num_train_timesteps=100, sampler_steps=2),
    rounds=2,
    client_fraction=1.0,
    min_clients=2,
    local=dict(steps=1, batch_size=8),
)


def make_cfg(**overrides) -> PretrainingConfig:
    return PretrainingConfig.model_validate({**copy.deepcopy(TINY), **overrides})


def make_clients(sizes=(8, 16, 24)) -> list[ClientData]:
    g = torch.Generator().manual_seed(0)
    return [
        ClientData(f"c{k}", torch.rand(n, 1, 16, 16, generator=g) * 2 - 1)
        for k, n in enumerate(sizes)
    ]


def context(node_config=None) -> Context:
    return Context(
        run_id=1, node_id=1, node_config=node_config or {}, state=RecordDict(), run_config={}
    )


# ----------------------------------------------------------------------------- privacy, inprocess


@pytest.mark.parametrize("method", [m for m in PRETRAINING_METHODS if not PRETRAINING[m].pooled])
def test_inprocess_uploads_are_exactly_the_shared_backbone_arrays(method, monkeypatch) -> None:
    """What a client of the ``inprocess`` engine sends: the spec's shared arrays, its sample
    count and its loss; never its embedding, head or model."""
    sent = []
    original = Trainer.train

    def train(self, backbone, client, state, round_idx, index):
        update, new_state = original(self, backbone, client, state, round_idx, index)
        sent.append((update, new_state))
        return update, new_state

    monkeypatch.setattr(Trainer, "train", train)
    cfg, clients = make_cfg(), make_clients()
    pretrain(method, cfg, clients, progress=False)
    trainer = Trainer(method, cfg)
    spec = PRETRAINING[method]
    shared = spec.shared_names(trainer.model)
    personal = set(spec.personal_names(trainer.model))
    assert len(sent) == cfg.rounds * len(clients)
    for update, state in sent:
        assert list(update.upload) == shared == trainer.uploaded
        assert not personal & set(update.upload)
        assert update.num_samples in {c.num_samples for c in clients}
        assert isinstance(update.loss, float)
        own = flatten_state(state)  # what stays on the client
        assert bool(own) == spec.per_client
        for name, value in update.upload.items():
            assert value.shape == trainer.initial_backbone()[name].shape
            for key, mine in own.items():
                if mine.shape == value.shape and not key.startswith("model/"):
                    assert not torch.equal(mine, value), (name, key)


# ----------------------------------------------------------------------------- rounds, faults


def _fake_engine(trainer: Trainer, clients, absent: dict[int, set[int]], states):
    def train_round(r, selected, backbone):
        for k in selected:
            if k in absent.get(r, set()):
                yield k, ClientFault("missing", "gone")
                continue
            update, states[k] = trainer.train(backbone, clients[k], states[k], r, k)
            yield k, update

    return train_round


def test_round_loop_goes_on_without_missing_clients_and_names_them() -> None:
    cfg, clients = make_cfg(rounds=3), make_clients()
    trainer = Trainer("spire", cfg)
    ids = [c.client for c in clients]
    states = [trainer.initial_client_state(k, 3) for k in range(3)]
    server = ServerState(0, trainer.initial_backbone())
    saved, uploads = [], []

    def save(s: ServerState) -> None:
        saved.append(copy.deepcopy(s.backbone))

    loop = RoundLoop("spire", cfg, ids, trainer.uploaded, True, server, save=save)
    engine = _fake_engine(trainer, clients, {1: {2}}, states)

    def recording(r, selected, backbone):
        for k, outcome in engine(r, selected, backbone):
            uploads.append((r, k, outcome))
            yield k, outcome

    loop.run(recording, progress=False)
    assert [rec["missing"] for rec in server.history] == [[], ["c2"], []]
    assert set(server.history[1]["client_losses"]) == {"c0", "c1"}
    assert server.history[1]["bytes_up"] * 3 == server.history[1]["bytes_down"] * 2
    assert len(saved) == 3
    # round 1's backbone is the sample-weighted mean of the two updates that came in
    avg = WeightedAverage()
    delivered = [(k, o) for r, k, o in uploads if r == 1 and not isinstance(o, ClientFault)]
    assert [k for k, _ in delivered] == [0, 1]
    for _, outcome in delivered:
        avg.add(outcome.upload, outcome.num_samples)
    expected = avg.result(saved[0])
    assert all(torch.equal(saved[1][k], v) for k, v in expected.items())
    rows = history_rows(server.history)
    assert {row["missing"] for row in rows if row["round"] == 1} == {"c2"}
    metrics = history_metrics("spire", server.history)
    assert metrics["spire.missing.c2"] == [{"value": 1.0, "step": 1}]
    assert [m["value"] for m in metrics["spire.clients_missing"]] == [0.0, 1.0, 0.0]


def test_below_min_clients_the_run_stops_and_the_checkpoint_stays(tmp_path) -> None:
    cfg, clients = make_cfg(rounds=3), make_clients()
    trainer = Trainer("spire", cfg)
    states = [trainer.initial_client_state(k, 3) for k in range(3)]
    server = ServerState(0, trainer.initial_backbone())
    saved = []
    loop = RoundLoop(
        "spire", cfg, [c.client for c in clients], trainer.uploaded, True, server, saved.append
    )
    with pytest.raises(NotEnoughClientsError) as err:
        loop.run(_fake_engine(trainer, clients, {1: {1, 2}}, states), progress=False)
    message = str(err.value)
    assert "round 2 of 3" in message and "missing: c1, c2" in message
    assert "min_clients = 2" in message and "checkpoint after round 1 is intact" in message
    assert server.round == 1 and len(server.history) == 1 and len(saved) == 1


# ----------------------------------------------------------------------------- the client side


def test_job_travels_in_the_run_config_and_a_client_finds_its_site(tmp_path) -> None:
    cfg = make_cfg(flower=dict(runtime="deployment", round_timeout=30))
    job = Job(
        methods=["spire", "fedper"],
        cfg=cfg,
        clients=["a", "b"],
        fingerprints={"spire": "f1", "fedper": "f2"},
        run_dir=tmp_path,
        checkpoints={"spire": str(tmp_path / "s.pt")},
        client_data=str(tmp_path / "data"),
        client_storage=str(tmp_path / "own"),
    )
    run_config = job.to_run_config()
    assert all(isinstance(v, str) for v in run_config.values())
    assert Job.from_run_config(run_config) == job
    assert job.checkpoint("fedper") is None
    by_partition = ClientSite.of(job, {"partition-id": 1})
    assert by_partition == ClientSite(1, "b", tmp_path / "data" / "b.npz", tmp_path / "own" / "b")
    by_name = ClientSite.of(job, {"client": "a", "data": "/x/a.npz", "storage": "/y"})
    assert by_name == ClientSite(0, "a", Path("/x/a.npz"), Path("/y"))
    with pytest.raises(ValueError, match="client='z' is not one of"):
        ClientSite.of(job, {"client": "z"})
    with pytest.raises(ValueError, match="partition-id 2 is out of range"):
        ClientSite.of(job, {"partition-id": 2})
    with pytest.raises(ValueError, match="--node-config"):
        ClientSite.of(job, {})


def test_client_data_file_round_trips_exactly(tmp_path, fashion_mnist) -> None:
    site = ClientSite(0, "a", tmp_path / "a.npz", tmp_path)
    data = make_clients()[1]
    save_client_data(site.data, data)
    assert torch.equal(load_client_data(site).images, data.images)
    raw = fashion_mnist.train_images[:5]  # a team's own uint8 images work too
    np.savez(site.data, images=raw)
    os.utime(site.data, (time.time() + 5, time.time() + 5))
    images = load_client_data(site).images
    assert images.shape == (5, 1, 28, 28) and images.min() >= -1 and images.max() <= 1


@pytest.mark.parametrize("method", ["spire", "fedper", "local"])
def test_client_keeps_the_state_the_server_received_last(method, tmp_path) -> None:
    cfg = make_cfg()
    trainer = Trainer(method, cfg)
    job = Job([method], cfg, ["a", "b"], {method: "fp"}, client_storage=str(tmp_path))
    site = ClientSite.of(job, {"partition-id": 1})
    store = ClientStore(job, site, method)
    client = make_clients()[1]
    ctx = context()
    state0 = store.load(ctx, -1, trainer)
    assert flatten_state(state0).keys() == flatten_state(trainer.initial_client_state(1, 2)).keys()
    backbone = trainer.initial_backbone()
    _, s0 = trainer.train(backbone, client, state0, 0, 1)
    store.save(ctx, s0, 0, -1)
    _, s1 = trainer.train(backbone, client, s0, 1, 1)
    store.save(ctx, s1, 1, 0)

    def same(a, b) -> bool:
        fa, fb = flatten_state(a), flatten_state(b)
        return fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)

    assert same(store.load(ctx, 1, trainer), s1)  # from Context.state
    fresh = context()  # a new run (a rerun after a crash): from the client's own folder
    assert same(store.load(fresh, 1, trainer), s1)
    assert same(store.load(fresh, 0, trainer), s0)  # round 1's reply never reached the server
    _, s2 = trainer.train(backbone, client, s0, 2, 1)
    store.save(fresh, s2, 2, 0)  # trained again from round 0: round 1's state is dropped
    assert same(store.load(context(), 2, trainer), s2)
    with pytest.raises(RuntimeError, match=r"client b: its own state after round 1 is not in"):
        store.load(context(), 1, trainer)
    assert not any(p.suffix == ".tmp" for p in tmp_path.rglob("*"))


def test_state_flattening_round_trips() -> None:
    trainer = Trainer("fedper", make_cfg())
    state = trainer.initial_client_state(0, 2)
    flat = flatten_state(state)
    assert flat and all(k.startswith("head/") for k in flat)
    back = unflatten_state(flat)
    assert back.embedding is None and back.model is None
    assert all(torch.equal(back.head[k], state.head[k]) for k in state.head)


def test_flower_parameters_are_validated() -> None:
    section = "federated_pretraining"
    ok = validate_params(PretrainingConfig, {**TINY, "engine": "flower"}, section)
    assert ok.flower.runtime == "simulation" and ok.flower.num_cpus == 1
    bad = [
        ({"flower": {"runtime": "cloud"}}, "flower.runtime = 'cloud'"),
        ({"flower": {"num_cpus": 0.5}}, "flower.num_cpus = 0.5"),
        ({"flower": {"port": 70000}}, "flower.port = 70000"),
        ({"flower": {"tls": {"ca_certfile": "ca.pem", "certfile": "c", "keyfile": "k"}}}, "tls"),
        ({"flower": {"start_supernodes": False}}, "start_supernodes: false"),
        ({"flower": {"timeout": 3}}, "flower.timeout = 3"),
    ]
    for override, named in bad:
        with pytest.raises(ParameterError, match="parameter federated_pretraining.flower"):
            validate_params(PretrainingConfig, {**TINY, **override}, section)
        try:
            validate_params(PretrainingConfig, {**TINY, **override}, section)
        except ParameterError as exc:
            assert named in str(exc), str(exc)


# ----------------------------------------------------------------------------- processes

#: a process that starts a grandchild in a session of its own (as flower-superlink starts
#: flower-superexec), prints both pids, and waits
_SPAWNER = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                             start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(300)
    """
)


def _running(pid: int) -> bool:
    entry = process_table().get(pid)
    return entry is not None and entry[2] not in "ZX"


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
def test_stopping_reaches_groups_started_below_in_other_sessions(tmp_path) -> None:
    groups = ProcessGroups(tmp_path / "registry.txt")
    started = groups.start(
        "spawner", [sys.executable, "-c", _SPAWNER], tmp_path / "log.txt", dict(os.environ)
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "log.txt").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int((tmp_path / "log.txt").read_text().split()[0])
    assert os.getpgid(grandchild) == grandchild != started.proc.pid  # another group
    groups.stop(grace=5)
    assert not _running(started.proc.pid) and not _running(grandchild)
    assert not alive_groups({started.proc.pid, grandchild})
    assert not groups.started and not (tmp_path / "registry.txt").exists()


#: a parent that starts the spawner through ProcessGroups, prints the pids, then waits to be
#: killed with SIGKILL (it cannot stop anything itself)
_PARENT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from spire_pipeline.flower.processes import ProcessGroups
    folder = Path(sys.argv[1])
    groups = ProcessGroups(folder / "registry.txt")
    s = groups.start("spawner", [sys.executable, "-c", sys.argv[2]], folder / "log.txt",
                     dict(os.environ))
    while not (folder / "log.txt").read_text().strip():
        time.sleep(0.05)
    groups.observe()
    print(s.proc.pid, (folder / "log.txt").read_text().split()[0], flush=True)
    time.sleep(300)
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
def test_a_killed_parent_leaves_nothing_running(tmp_path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path), _SPAWNER],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    child = grandchild = -1
    try:
        child, grandchild = (int(p) for p in parent.stdout.readline().split())
        time.sleep(1.5)  # the watchdog has looked at least once
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (_running(child) or _running(grandchild)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(child) and not _running(grandchild)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
        for pid in (child, grandchild):
            if _running(pid):
                os.killpg(pid, signal.SIGKILL)
