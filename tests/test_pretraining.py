"""Federated pretraining, embedded engine (issue 3): FedAvg, privacy of client embeddings and
FedPer heads, client schedule, determinism, checkpoint resume, every method, NaN clients,
bundle (de)serialization and parameter validation.

Everything runs on a tiny UNet (widths [8, 16], 16x16 or 28x28 images), 3-4 clients with
8-56 images, 1-4 rounds of 1-2 local steps, on one CPU thread.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.io import Version

from spire_pipeline.datasets import ModelBundleDataset
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import PRETRAINING_METHODS, PretrainingConfig
from spire_pipeline.spire.diffusion import to_model_space
from spire_pipeline.spire.federated import (
    ClientData,
    ClientState,
    ClientUpdate,
    NotEnoughClientsError,
    ServerState,
    Trainer,
    WeightedAverage,
    config_fingerprint,
    fedavg,
    pretrain,
    select_clients,
)
from spire_pipeline.spire.generate import generate
from spire_pipeline.spire.methods import HEAD_PREFIXES
from spire_pipeline.spire.model import head_names
from spire_pipeline.spire.validation import ParameterError, validate_params

SECTION = "federated_pretraining"
#: a tiny but complete configuration (every client in every round unless a test says otherwise)
TINY = dict(
    seed=0,
    methods=["spire"],
    backbone=dict(block_out_channels=[8, 16], norm_num_groups=4, image_size=16),
    diffusion=dict(num_train_timesteps=100, sampler_steps=2),
    rounds=2,
    client_fraction=1.0,
    min_clients=1,
    local=dict(steps=2, batch_size=8),
)
#: different client sizes, so that the sample-count weights of FedAvg matter
SIZES = (8, 24, 56)


def make_cfg(**overrides) -> PretrainingConfig:
    params = copy.deepcopy(TINY)
    for key, value in overrides.items():
        if isinstance(value, dict):
            params[key] = {**params.get(key, {}), **value}
        else:
            params[key] = value
    return PretrainingConfig.model_validate(params)


def make_clients(sizes=SIZES, seed: int = 0, size: int = 16) -> list[ClientData]:
    g = torch.Generator().manual_seed(seed)
    return [
        ClientData(f"c{k}", torch.rand(n, 1, size, size, generator=g) * 2 - 1)
        for k, n in enumerate(sizes)
    ]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def captured_updates(monkeypatch) -> list[dict]:
    """Every ``Trainer.train`` call: round, client, what was sent and the states around it."""
    calls: list[dict] = []
    original = Trainer.train

    def train(self, backbone, client, state, round_idx, index):
        update, new_state = original(self, backbone, client, state, round_idx, index)
        calls.append(
            dict(
                method=self.method,
                round=round_idx,
                client=client.client,
                index=index,
                update=update,
                before=state,
                after=new_state,
            )
        )
        return update, new_state

    monkeypatch.setattr(Trainer, "train", train)
    return calls


def snapshots() -> tuple[list[tuple[ServerState, list[ClientState]]], object]:
    """A round callback that keeps deep copies of the states it is shown."""
    seen: list[tuple[ServerState, list[ClientState]]] = []

    def callback(server: ServerState, states: list[ClientState]) -> None:
        seen.append((copy.deepcopy(server), copy.deepcopy(states)))

    return seen, callback


def assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k, v in a.items():
        assert torch.equal(v, b[k]), f"{k} differs"


def weighted_mean64(states, weights) -> dict[str, torch.Tensor]:
    """The reference: sum_k w_k x_k / sum_k w_k in float64."""
    total = float(sum(weights))
    return {
        k: sum(s[k].double() * float(w) for s, w in zip(states, weights)) / total for k in states[0]
    }


def tensors_in(obj, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor reachable from ``obj`` (dataclasses, dicts, lists), with its path."""
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    if dataclasses.is_dataclass(obj):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return [t for k, v in obj.items() for t in tensors_in(v, f"{path}/{k}")]
    if isinstance(obj, (list, tuple)):
        return [t for i, v in enumerate(obj) for t in tensors_in(v, f"{path}/{i}")]
    return []


def keys_in(obj) -> list[str]:
    """Every dict key and dataclass field name reachable from ``obj``."""
    if dataclasses.is_dataclass(obj):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return [str(k) for k in obj] + [k for v in obj.values() for k in keys_in(v)]
    if isinstance(obj, (list, tuple)):
        return [k for v in obj for k in keys_in(v)]
    return []


# ----------------------------------------------------------------------------- FedAvg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fedavg_is_the_float64_weighted_mean(dtype) -> None:
    g = torch.Generator().manual_seed(1)
    states = [
        {"w": torch.randn(5, 7, generator=g, dtype=dtype), "b": torch.randn(7, generator=g)}
        for _ in range(4)
    ]
    weights = [3, 17, 40, 1]
    ref = weighted_mean64(states, weights)
    streaming = WeightedAverage()
    for s, w in zip(states, weights):
        streaming.add(s, w)
    for result in (fedavg(states, weights), streaming.result(states[0])):
        assert set(result) == set(ref)
        for k, v in result.items():
            assert v.dtype == states[0][k].dtype and v.shape == states[0][k].shape
            tol = 1e-12 if v.dtype == torch.float64 else 1e-6
            torch.testing.assert_close(v.double(), ref[k], rtol=tol, atol=tol)
    # the weights matter: the unweighted mean is far from it
    plain = weighted_mean64(states, [1] * 4)
    assert not torch.allclose(plain["w"], ref["w"], atol=1e-3)


def test_fedavg_is_exact_on_small_integers() -> None:
    g = torch.Generator().manual_seed(2)
    states = [
        {
            "w": torch.randint(-50, 50, (6, 3), generator=g).float(),
            "b": torch.randint(0, 9, (3,), generator=g).float(),
        }
        for _ in range(3)
    ]
    weights = [2, 5, 9]
    ref = weighted_mean64(states, weights)
    avg = WeightedAverage()
    for s, w in zip(states, weights):
        avg.add(s, w)
    for result in (fedavg(states, weights), avg.result(states[0])):
        for k, v in result.items():
            assert torch.equal(v, ref[k].float()), k
    # weights only matter through their ratios; one client's average is itself
    doubled = fedavg(states, [2 * w for w in weights])
    assert all(torch.equal(doubled[k], ref[k].float()) for k in ref)
    alone = fedavg(states[:1], [123])
    assert all(torch.equal(alone[k], states[0][k]) for k in ref)
    with pytest.raises(ValueError, match="no client update"):
        WeightedAverage().result(states[0])


def test_round_backbone_is_sample_weighted_mean_of_uploads(captured_updates) -> None:
    cfg = make_cfg(rounds=2)
    clients = make_clients()
    seen, callback = snapshots()
    pretrain("spire", cfg, clients, progress=False, callbacks=[callback])
    assert len(seen) == 2
    for r, (server, _) in enumerate(seen):
        calls = [c for c in captured_updates if c["round"] == r]
        assert [c["client"] for c in calls] == [c.client for c in clients]
        uploads = [c["update"].upload for c in calls]
        weights = [c["update"].num_samples for c in calls]
        assert weights == list(SIZES)
        ref = weighted_mean64(uploads, weights)
        unweighted = weighted_mean64(uploads, [1] * len(uploads))
        assert set(ref) == set(server.backbone)
        for k, v in server.backbone.items():
            assert v.dtype == torch.float32
            torch.testing.assert_close(v.double(), ref[k], rtol=1e-6, atol=1e-7)
        # with these sizes the weighting is visible (local training moved the weights apart)
        differs = [
            k for k in ref if not torch.allclose(ref[k], unweighted[k], rtol=1e-6, atol=1e-7)
        ]
        assert differs, "uploads are identical: the test cannot see the weights"


# ----------------------------------------------------------------------------- privacy


def test_server_never_holds_a_client_embedding(captured_updates, tmp_path) -> None:
    cfg = make_cfg(rounds=2)
    clients = make_clients()
    ckpt = tmp_path / "spire.pt"
    seen, callback = snapshots()
    bundle, _ = pretrain(
        "spire", cfg, clients, checkpoint=ckpt, progress=False, callbacks=[callback]
    )
    trainer = Trainer("spire", cfg)
    model_keys = set(trainer.model.state_dict())
    embeddings = [e for _, states in seen for s in states for e in [s.embedding]]
    embeddings += [c["before"].embedding for c in captured_updates]
    embeddings += list(bundle.embeddings.values())
    assert all(e is not None and e.shape == (trainer.dim,) for e in embeddings)
    servers = [("callback", s) for s, _ in seen]
    servers.append(("checkpoint", torch.load(ckpt, weights_only=False)["server"]))
    for where, server in servers:
        assert isinstance(server, ServerState), where
        assert set(server.backbone) == model_keys, where
        # the only keys naming an embedding are the UNet's own timestep-embedding layers
        for key in keys_in(server):
            if "embed" in key.lower():
                assert key.startswith("time_embedding."), (where, key)
        for path, t in tensors_in(server):
            for e in embeddings:
                if t.shape == e.shape:
                    assert not torch.allclose(t, e), f"{where}{path} holds a client embedding"
        for record in server.history:  # per-client numbers there are losses, not tensors
            assert not tensors_in(record), where
            assert all(isinstance(v, float) for v in record["client_losses"].values())
    # what a client sends: backbone parameters only
    assert {f.name for f in dataclasses.fields(ClientUpdate)} == {"upload", "num_samples", "loss"}
    params = {n for n, _ in trainer.model.named_parameters()}
    for call in captured_updates:
        upload = call["update"].upload
        assert set(upload) == params == set(trainer.uploaded)
        for e in (call["before"].embedding, call["after"].embedding):
            for name, t in upload.items():
                if t.shape == e.shape:
                    assert not torch.allclose(t, e), name


def test_embedding_changes_only_when_its_client_trains() -> None:
    cfg = make_cfg(rounds=4, client_fraction=0.5, local=dict(steps=1))
    clients = make_clients((8, 8, 16, 16))
    k = len(clients)
    trainer = Trainer("spire", cfg)
    before = [trainer.initial_client_state(i, k).embedding for i in range(k)]
    seen, callback = snapshots()
    bundle, history = pretrain("spire", cfg, clients, progress=False, callbacks=[callback])
    schedule = [select_clients(cfg, r, k) for r in range(cfg.rounds)]
    assert all(len(s) == 2 for s in schedule)
    # the schedule is informative: some client sits out a round and trains in another
    assert any(i not in s for s in schedule for i in range(k))
    assert len({tuple(s) for s in schedule}) > 1
    for r, (_, states) in enumerate(seen):
        assert history[r]["clients"] == [clients[i].client for i in schedule[r]]
        for i in range(k):
            after = states[i].embedding
            if i in schedule[r]:
                assert not torch.equal(after, before[i]), f"round {r}: c{i} trained, no change"
            else:
                assert torch.equal(after, before[i]), f"round {r}: c{i} did not train"
        before = [s.embedding.clone() for s in states]
    assert all(torch.equal(bundle.embeddings[c.client], before[i]) for i, c in enumerate(clients))


def test_fedper_head_never_leaves_its_client(captured_updates) -> None:
    cfg = make_cfg(rounds=2)
    clients = make_clients()
    bundle, _ = pretrain("fedper", cfg, clients, progress=False)
    trainer = Trainer("fedper", cfg)
    head = set(head_names(trainer.model))
    assert head and all(n.startswith(HEAD_PREFIXES) for n in head)
    params = {n for n, _ in trainer.model.named_parameters()}
    assert len(captured_updates) == 2 * len(clients)
    for call in captured_updates:
        upload = call["update"].upload
        assert set(upload) == params - head
        assert not any(n.startswith(("conv_norm_out.", "conv_out.")) for n in upload)
    # each client keeps its own head; the server's copy of the head is never averaged
    assert set(bundle.heads) == {c.client for c in clients}
    assert all(set(h) == head for h in bundle.heads.values())
    for a, b in itertools.combinations(bundle.heads.values(), 2):
        assert any(not torch.equal(a[n], b[n]) for n in head)
    initial = trainer.initial_backbone()
    for n in head:
        assert torch.equal(bundle.backbone[n], initial[n]), n
    assert any(not torch.equal(bundle.backbone[n], initial[n]) for n in params - head)
    assert not bundle.embeddings and not bundle.local
    # the model built for a client carries that client's head
    model, emb = bundle.build("c1")
    assert emb is None
    state = model.state_dict()
    assert all(torch.equal(state[n], bundle.heads["c1"][n]) for n in head)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_backbone_bitwise() -> None:
    clients = make_clients()
    a, hist_a = pretrain("spire", make_cfg(seed=7), clients, progress=False)
    b, hist_b = pretrain("spire", make_cfg(seed=7), clients, progress=False)
    c, _ = pretrain("spire", make_cfg(seed=8), clients, progress=False)
    assert_states_equal(a.backbone, b.backbone)
    assert_states_equal(a.embeddings, b.embeddings)
    assert [h["client_losses"] for h in hist_a] == [h["client_losses"] for h in hist_b]
    assert any(not torch.equal(a.backbone[k], c.backbone[k]) for k in a.backbone)
    assert any(not torch.equal(a.embeddings[k], c.embeddings[k]) for k in a.embeddings)


def test_a_method_with_its_own_local_steps_makes_the_same_number_of_steps() -> None:
    """``method_local_steps``: fedavg with 4 local steps over 4 x 2 / 4 = 2 rounds is the same
    run (fingerprint, history, backbone) as a config that says so; spire keeps the shared
    schedule."""
    cfg = make_cfg(rounds=4, method_local_steps={"fedavg": 4})
    same = make_cfg(rounds=2, local={"steps": 4})
    clients = make_clients()
    assert cfg.for_method("fedavg").rounds == 2 and cfg.for_method("spire").rounds == 4
    assert config_fingerprint("fedavg", cfg, clients) == config_fingerprint("fedavg", same, clients)
    assert config_fingerprint("spire", cfg, clients) == config_fingerprint(
        "spire", make_cfg(rounds=4), clients
    )
    a, hist_a = pretrain("fedavg", cfg, clients, progress=False)
    b, hist_b = pretrain("fedavg", same, clients, progress=False)
    assert len(hist_a) == 2 and a.info["rounds"] == 2
    assert_states_equal(a.backbone, b.backbone)
    _, hist_s = pretrain("spire", cfg, clients, progress=False)
    assert len(hist_s) == 4
    # rounds that do not divide: the nearest whole number
    assert make_cfg(rounds=5, method_local_steps={"fedavg": 3}).for_method("fedavg").rounds == 3
    with pytest.raises(ValueError, match="method_local_steps needs local.steps"):
        make_cfg(method_local_steps={"fedavg": 4}, local={"steps": None, "epochs": 1})
    with pytest.raises(ValueError):
        make_cfg(method_local_steps={"full_finetune": 4})


class _Crash(BaseException):
    """The process dies (like SIGKILL): not a client's fault, which an ``Exception`` raised in
    a client's training is (it is recorded and the round goes on, tests/test_client_faults.py)."""


def _crash_after_round(n: int):
    def callback(server: ServerState, states) -> None:
        if server.round == n:
            raise _Crash(f"crash after round {n}")

    return callback


@pytest.mark.parametrize("method", ["spire", "fedper"])
def test_resume_after_crash_between_rounds_is_bitwise_identical(method, tmp_path) -> None:
    cfg = make_cfg(rounds=3, client_fraction=0.7, local=dict(steps=1))
    clients = make_clients()
    reference, ref_hist = pretrain(method, cfg, clients, progress=False)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(_Crash):
        pretrain(
            method, cfg, clients, checkpoint=ckpt, progress=False, callbacks=[_crash_after_round(1)]
        )
    assert torch.load(ckpt, weights_only=False)["server"].round == 1
    rounds: list[int] = []
    resumed, hist = pretrain(
        method,
        cfg,
        clients,
        checkpoint=ckpt,
        progress=False,
        callbacks=[lambda s, _: rounds.append(s.round)],
    )
    assert rounds == [2, 3]  # it resumed, it did not start over
    assert_states_equal(resumed.backbone, reference.backbone)
    assert_states_equal(resumed.embeddings, reference.embeddings)
    for c in reference.heads:
        assert_states_equal(resumed.heads[c], reference.heads[c])
    assert [h["client_losses"] for h in hist] == [h["client_losses"] for h in ref_hist]
    # a finished run's checkpoint gives the same result without training again
    again, _ = pretrain(
        method,
        cfg,
        clients,
        checkpoint=ckpt,
        progress=False,
        callbacks=[lambda s, _: rounds.append(-1)],
    )
    assert rounds == [2, 3]
    assert_states_equal(again.backbone, reference.backbone)


def test_resume_after_crash_inside_a_round(monkeypatch, tmp_path) -> None:
    cfg = make_cfg(rounds=3, local=dict(steps=1))
    clients = make_clients()
    reference, _ = pretrain("spire", cfg, clients, progress=False)
    original = Trainer.train

    def crashing(self, backbone, client, state, round_idx, index):
        result = original(self, backbone, client, state, round_idx, index)
        if round_idx == 1 and index == 1:  # two clients of round 1 trained, then a crash
            raise _Crash("crash inside round 1")
        return result

    monkeypatch.setattr(Trainer, "train", crashing)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(_Crash):
        pretrain("spire", cfg, clients, checkpoint=ckpt, progress=False)
    assert torch.load(ckpt, weights_only=False)["server"].round == 1
    monkeypatch.setattr(Trainer, "train", original)
    resumed, _ = pretrain("spire", cfg, clients, checkpoint=ckpt, progress=False)
    assert_states_equal(resumed.backbone, reference.backbone)
    assert_states_equal(resumed.embeddings, reference.embeddings)


def test_checkpoint_of_other_parameters_is_ignored(tmp_path, caplog) -> None:
    clients = make_clients()
    ckpt = tmp_path / "ckpt.pt"
    pretrain("spire", make_cfg(rounds=1), clients, checkpoint=ckpt, progress=False)
    other = make_cfg(rounds=1, local=dict(lr=1e-3))
    fresh, _ = pretrain("spire", other, clients, progress=False)
    rounds: list[int] = []
    with caplog.at_level(logging.INFO, logger="spire_pipeline.spire.federated"):
        result, _ = pretrain(
            "spire",
            other,
            clients,
            checkpoint=ckpt,
            progress=False,
            callbacks=[lambda s, _: rounds.append(s.round)],
        )
    assert rounds == [1]
    assert "starting over" in caplog.text
    assert_states_equal(result.backbone, fresh.backbone)
    # other data is another run too, and resume=false ignores even a matching checkpoint
    rounds.clear()
    pretrain(
        "spire",
        other,
        make_clients(seed=1),
        checkpoint=ckpt,
        progress=False,
        callbacks=[lambda s, _: rounds.append(s.round)],
    )
    no_resume = make_cfg(rounds=1, local=dict(lr=1e-3), resume=False)
    pretrain(
        "spire",
        no_resume,
        make_clients(seed=1),
        checkpoint=ckpt,
        progress=False,
        callbacks=[lambda s, _: rounds.append(s.round)],
    )
    assert rounds == [1, 1]


# ----------------------------------------------------------------------------- every method


@pytest.fixture(scope="module")
def real_clients(fashion_mnist) -> list[ClientData]:
    """Three clients of real 28x28 Fashion-MNIST images, of sizes 20, 30, 40."""
    out, start = [], 0
    for k, n in enumerate((20, 30, 40)):
        out.append(
            ClientData(
                f"seen_{k:02d}", to_model_space(fashion_mnist.train_images[start : start + n])
            )
        )
        start += n
    return out


def method_cfg() -> PretrainingConfig:
    return make_cfg(
        backbone=dict(image_size=28), client_fraction=0.6, rounds=2, local=dict(steps=1)
    )


@pytest.fixture(scope="module")
def method_runs(real_clients) -> dict[str, tuple[ModelBundle, list[dict]]]:
    """Every method, 2 rounds on the real clients (2 of 3 clients per round)."""
    cfg = method_cfg()
    return {m: pretrain(m, cfg, real_clients, progress=False) for m in PRETRAINING_METHODS}


@pytest.mark.parametrize("method", PRETRAINING_METHODS)
def test_every_method_returns_a_bundle(method, method_runs, real_clients) -> None:
    bundle, history = method_runs[method]
    ids = [c.client for c in real_clients]
    trainer = Trainer(method, method_cfg())
    params = {n for n, _ in trainer.model.named_parameters()}
    assert bundle.method == method
    assert bundle.info["clients"] == ids and bundle.info["rounds"] == 2
    assert [h["round"] for h in history] == [0, 1]
    for h in history:
        assert not h["failed"] and np.isfinite(h["loss_mean"])
    assert set(bundle.embeddings) == (set(ids) if method in ("spire", "centralized") else set())
    assert set(bundle.heads) == (set(ids) if method == "fedper" else set())
    assert set(bundle.local) == (set(ids) if method == "local" else set())
    if method == "local":
        assert bundle.backbone == {}
        assert all(set(s) == params for s in bundle.local.values())
        assert all(h["bytes_up"] == 0 for h in history)
    else:
        assert set(bundle.backbone) == params
    for e in bundle.embeddings.values():
        assert e.shape == (trainer.dim,) and torch.isfinite(e).all()
    if method == "centralized":
        assert all(h["clients"] == ids for h in history)
    else:
        assert all(
            h["clients"] == [ids[k] for k in select_clients(trainer.cfg, h["round"], 3)]
            for h in history
        )
    client = None if method == "fedavg" else ids[0]
    images = generate(bundle, client, num=2, seed=0, steps=2)
    assert images.shape == (2, 28, 28) and images.dtype == np.uint8


@pytest.mark.parametrize("method", PRETRAINING_METHODS)
def test_bundle_tensors_round_trip(method, method_runs) -> None:
    bundle, _ = method_runs[method]
    tensors, meta = bundle.to_tensors()
    assert all(isinstance(v, str) for v in meta.values())
    back = ModelBundle.from_tensors(tensors, meta)
    _assert_bundles_equal(back, bundle)


def _assert_bundles_equal(a: ModelBundle, b: ModelBundle) -> None:
    assert (a.method, a.backbone_cfg, a.diffusion_cfg, a.info) == (
        b.method,
        b.backbone_cfg,
        b.diffusion_cfg,
        b.info,
    )
    assert_states_equal(a.backbone, b.backbone)
    assert_states_equal(a.embeddings, b.embeddings)
    for attr in ("heads", "local"):
        assert set(getattr(a, attr)) == set(getattr(b, attr))
        for c in getattr(a, attr):
            assert_states_equal(getattr(a, attr)[c], getattr(b, attr)[c])


def test_model_bundle_dataset_versioned_round_trip(method_runs, tmp_path) -> None:
    path = tmp_path / "pretrained" / "spire.safetensors"
    first, second = method_runs["spire"][0], method_runs["fedper"][0]
    v1, v2 = "2025-01-01T00.00.00.000Z", "2025-01-02T00.00.00.000Z"
    ModelBundleDataset(filepath=str(path), version=Version(None, v1)).save(first)
    ModelBundleDataset(filepath=str(path), version=Version(None, v2)).save(second)
    assert sorted(p.name for p in path.iterdir()) == [v1, v2]
    assert (path / v1 / "spire.safetensors").is_file()
    latest = ModelBundleDataset(filepath=str(path), version=Version(None, None))
    assert latest.exists()
    _assert_bundles_equal(latest.load(), second)
    pinned = ModelBundleDataset(filepath=str(path), version=Version(v1, None)).load()
    _assert_bundles_equal(pinned, first)


def test_nan_client_is_dropped_with_a_warning(captured_updates, caplog) -> None:
    clients = make_clients()
    bad = ClientData("c1", torch.full_like(clients[1].images, float("nan")))
    clients[1] = bad
    cfg = make_cfg(rounds=2)
    initial = Trainer("spire", cfg).initial_client_state(1, 3).embedding
    seen, callback = snapshots()
    with caplog.at_level(logging.WARNING, logger="spire_pipeline.spire.federated"):
        bundle, history = pretrain("spire", cfg, clients, progress=False, callbacks=[callback])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("c1" in w and "dropped" in w for w in warnings), warnings
    assert [h["round"] for h in history] == [0, 1]
    for h in history:
        assert h["failed"] == ["c1"]
        assert set(h["client_losses"]) == {"c0", "c2"}
        assert np.isfinite(h["loss_mean"])
        assert h["bytes_up"] * 3 == h["bytes_down"] * 2
    assert all(torch.isfinite(v).all() for v in bundle.backbone.values())
    assert torch.equal(bundle.embeddings["c1"], initial)  # it never trained
    # each round's backbone is the average of the two healthy clients' uploads alone
    for r, (server, _) in enumerate(seen):
        calls = [c for c in captured_updates if c["round"] == r]
        assert [c["client"] for c in calls] == ["c0", "c2"]
        ref = weighted_mean64([c["update"].upload for c in calls], [SIZES[0], SIZES[2]])
        for k, v in server.backbone.items():
            torch.testing.assert_close(v.double(), ref[k], rtol=1e-6, atol=1e-7)


def test_a_round_where_every_client_fails_stops_before_saving(caplog, tmp_path) -> None:
    # fewer than min_clients took part (issue 16): one clear error, nothing of the round saved
    clients = [ClientData(f"c{k}", torch.full((8, 1, 16, 16), float("nan"))) for k in range(2)]
    cfg = make_cfg(rounds=1, methods=["fedavg"])
    checkpoint = tmp_path / "fedavg.pt"
    with caplog.at_level(logging.WARNING, logger="spire_pipeline.spire.federated"):
        with pytest.raises(NotEnoughClientsError) as err:
            pretrain("fedavg", cfg, clients, checkpoint, progress=False)
    message = str(err.value)
    assert "only 0 of the 2 selected clients delivered an update (failed: c0, c1)" in message
    assert "no round was completed" in message and "loss is nan" in message
    assert not checkpoint.exists()


# ----------------------------------------------------------------------------- parameters

BAD_PARAMS = [
    ({"client_fraction": 0}, "client_fraction = 0"),
    ({"client_fraction": 1.5}, "client_fraction = 1.5"),
    ({"rounds": 0}, "rounds = 0"),
    ({"min_clients": 0}, "min_clients = 0"),
    ({"methods": ["spire", "fedprox"]}, "methods.1 = 'fedprox'"),
    ({"methods": []}, "methods = []"),
    ({"methods": ["spire", "spire"]}, "methods = ['spire', 'spire']"),
    ({"engine": "ray"}, "engine = 'ray'"),
    (
        {"backbone": {"block_out_channels": [8, 12], "norm_num_groups": 8}},
        "backbone.norm_num_groups = 8",
    ),
    ({"local": {"steps": 3, "epochs": 2}}, "local = "),
    ({"local": {"lr": -1}}, "local.lr = -1"),
    ({"embedding_init": "ones"}, "embedding_init = 'ones'"),
    ({"lr": 0.1}, "lr = 0.1"),  # unknown key
]


@pytest.mark.parametrize(
    ("override", "named"),
    BAD_PARAMS,
    ids=[p[1] for p in BAD_PARAMS],
)
def test_parameter_validation_names_the_parameter(override, named) -> None:
    params = {**copy.deepcopy(TINY), **override}
    with pytest.raises(ParameterError) as err:
        validate_params(PretrainingConfig, params, SECTION)
    message = str(err.value)
    assert f"parameter {SECTION}.{named}" in message, message
    assert len(re.findall(r"parameter [\w.]+ = ", message)) == 1, message
    if "backbone" in override:
        assert "norm_num_groups (8) must divide every block width, not [12]" in message


def test_quick_and_base_parameters_are_valid() -> None:
    import yaml

    root = Path(__file__).resolve().parents[1] / "conf"
    for env in ("base", "quick"):
        params = yaml.safe_load((root / env / "parameters_federated_pretraining.yml").read_text())
        cfg = validate_params(PretrainingConfig, params[SECTION], SECTION)
        assert set(cfg.methods) <= set(PRETRAINING_METHODS)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_every_sampler_is_reproducible_per_seed(sampler, method_runs) -> None:
    bundle = method_runs["spire"][0]
    bundle = dataclasses.replace(
        bundle, diffusion_cfg=bundle.diffusion_cfg.model_copy(update={"sampler": sampler})
    )
    client = bundle.clients()[0]
    a, b = (generate(bundle, client, num=3, seed=5, steps=4) for _ in range(2))
    c = generate(bundle, client, num=3, seed=6, steps=4)
    assert a.shape == (3, 28, 28) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("damage", [b"", b"not a checkpoint", None])
def test_a_damaged_checkpoint_is_set_aside_and_the_run_starts_over(
    damage, tmp_path, caplog
) -> None:
    clients = make_clients()
    cfg = make_cfg(rounds=2)
    reference, _ = pretrain("spire", cfg, clients, progress=False)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(_Crash):
        pretrain("spire", cfg, clients, checkpoint=ckpt, callbacks=[_crash_after_round(1)])
    assert torch.load(ckpt, weights_only=False)["server"].round == 1
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage is None else damage)
    rounds: list[int] = []
    with caplog.at_level(logging.WARNING, logger="spire_pipeline.spire.cache_files"):
        result, _ = pretrain(
            "spire",
            cfg,
            clients,
            checkpoint=ckpt,
            progress=False,
            callbacks=[lambda s, _: rounds.append(s.round)],
        )
    assert rounds == [1, 2]  # started over
    assert_states_equal(result.backbone, reference.backbone)
    assert f"spire: checkpoint {ckpt} is unreadable (" in caplog.text
    assert (tmp_path / "ckpt.pt.corrupt").exists()
    assert torch.load(ckpt, weights_only=False)["server"].round == 2
