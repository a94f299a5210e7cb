"""What the Flower apps share: the job of a run, where a client is, what it keeps, and the
conversions between the core's tensors and Flower records.

A run's job travels in Flower's run config (strings only, so that ``flwr run --run-config``
can carry it); a client learns which client it is from its SuperNode's node config
(``client``, ``data``, ``storage``) or, in simulation, from its ``partition-id``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from spire_pipeline.flower.protocol import STATE_ARRAYS, STATE_META, held_state, state_meta
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.diffusion import to_model_space
from spire_pipeline.spire.federated import (
    ClientData,
    ClientState,
    ServerState,
    Trainer,
    atomic_save,
)

log = logging.getLogger(__name__)

#: the run config of the Flower app, with its defaults (``[tool.flwr.app.config]``)
RUN_CONFIG_DEFAULTS: dict[str, str] = {
    # the methods to pretrain, one after the other, as a JSON list
    "methods": "[]",
    # PretrainingConfig as JSON
    "pretraining": "{}",
    # the seen clients' ids as a JSON list; a client's index is its position there
    "clients": "[]",
    # per method, what identifies its parameters and data (the checkpoints' key), JSON
    "fingerprints": "{}",
    # server side: progress, results and error of the run
    "run-dir": "",
    # server side: per method, its round checkpoint (JSON; none when absent)
    "checkpoints": "{}",
    # where a client finds <client>.npz when its node config has no `data`
    "client-data": "",
    # under which a client has its own folder <client>/ when its node config has no `storage`
    "client-storage": "",
    # "": off; else every message a client sends is described in <audit-dir>/<client>.jsonl
    "audit-dir": "",
}


@dataclass(frozen=True)
class Job:
    """A Flower run of federated pretraining (one method after the other), as its apps see it."""

    methods: list[str]
    cfg: PretrainingConfig
    clients: list[str]
    fingerprints: dict[str, str]
    run_dir: Path | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    client_data: str = ""
    client_storage: str = ""
    audit_dir: Path | None = None

    def checkpoint(self, method: str) -> Path | None:
        return Path(self.checkpoints[method]) if method in self.checkpoints else None

    @classmethod
    def from_run_config(cls, run_config: Mapping) -> Job:
        def path(key: str) -> Path | None:
            value = str(run_config.get(key, ""))
            return Path(value) if value else None

        return cls(
            methods=list(json.loads(str(run_config["methods"]))),
            cfg=PretrainingConfig.model_validate_json(str(run_config["pretraining"])),
            clients=list(json.loads(str(run_config["clients"]))),
            fingerprints=dict(json.loads(str(run_config["fingerprints"]))),
            run_dir=path("run-dir"),
            checkpoints=dict(json.loads(str(run_config.get("checkpoints", "{}")))),
            client_data=str(run_config.get("client-data", "")),
            client_storage=str(run_config.get("client-storage", "")),
            audit_dir=path("audit-dir"),
        )

    def to_run_config(self) -> dict[str, str]:
        return {
            "methods": json.dumps(self.methods),
            "pretraining": self.cfg.model_dump_json(),
            "clients": json.dumps(self.clients),
            "fingerprints": json.dumps(self.fingerprints),
            "run-dir": str(self.run_dir or ""),
            "checkpoints": json.dumps(self.checkpoints),
            "client-data": self.client_data,
            "client-storage": self.client_storage,
            "audit-dir": str(self.audit_dir or ""),
        }


@dataclass(frozen=True)
class ClientSite:
    """Which client a ClientApp serves, and where its data and its own folder are."""

    index: int
    client: str
    data: Path
    storage: Path

    @classmethod
    def of(cls, job: Job, node_config: Mapping) -> ClientSite:
        """From the SuperNode's node config (``client``, ``data``, ``storage``), falling back
        on ``partition-id`` and the job's folders (simulation, local SuperNodes)."""
        if "client" in node_config:
            client = str(node_config["client"])
            if client not in job.clients:
                raise ValueError(
                    f"SuperNode node config client={client!r} is not one of this run's "
                    f"clients {job.clients}"
                )
            index = job.clients.index(client)
        elif "partition-id" in node_config:
            index = int(node_config["partition-id"])
            if not 0 <= index < len(job.clients):
                raise ValueError(
                    f"partition-id {index} is out of range: the run has {len(job.clients)} clients"
                )
            client = job.clients[index]
        else:
            raise ValueError(
                "this SuperNode does not say which client it is: start it with "
                '--node-config \'client="<id>" data="<file.npz>" storage="<folder>"\''
            )
        data = node_config.get("data") or Path(job.client_data) / f"{client}.npz"
        storage = node_config.get("storage") or Path(job.client_storage) / client
        return cls(index, client, Path(str(data)), Path(str(storage)))


def save_client_data(path: Path, data: ClientData) -> None:
    """Write a client's training images (model space, float32) for its ClientApp."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=data.images.numpy())
    tmp.replace(path)


@lru_cache(maxsize=4)
def _load_images(path: str, mtime: float) -> torch.Tensor:
    with np.load(path) as f:
        if "images" not in f:
            raise ValueError(f"{path} holds no 'images' array")
        images = f["images"]
    if images.dtype == np.uint8:  # raw (N,H,W[,C]) images
        return to_model_space(images)
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def load_client_data(site: ClientSite) -> ClientData:
    """A client's training images: ``images`` in its ``.npz``, either uint8 (N,H,W[,C]) as
    stored by ``data_partitioning`` or float32 (N,C,H,W) in [-1, 1]."""
    if not site.data.is_file():
        raise FileNotFoundError(f"client {site.client}: no data file {site.data}")
    return ClientData(site.client, _load_images(str(site.data), site.data.stat().st_mtime))


def flatten_state(state: ClientState) -> dict[str, torch.Tensor]:
    """A client's own tensors as one flat dict (``embedding``, ``head/*``, ``model/*``)."""
    flat: dict[str, torch.Tensor] = {}
    if state.embedding is not None:
        flat["embedding"] = state.embedding
    for prefix, part in (("head", state.head), ("model", state.model)):
        for name, value in (part or {}).items():
            flat[f"{prefix}/{name}"] = value
    return {k: v.detach().cpu().contiguous() for k, v in flat.items()}


def unflatten_state(flat: Mapping[str, torch.Tensor], device=None) -> ClientState:
    """Inverse of :func:`flatten_state`."""
    parts: dict[str, dict[str, torch.Tensor]] = {"head": {}, "model": {}}
    embedding = None
    for key, value in flat.items():
        if key == "embedding":
            embedding = value.to(device) if device is not None else value
        else:
            prefix, name = key.split("/", 1)
            parts[prefix][name] = value
    return ClientState(embedding, parts["head"] or None, parts["model"] or None)


@lru_cache(maxsize=2)
def _trainer(method: str, cfg_json: str) -> Trainer:
    cfg = PretrainingConfig.model_validate_json(cfg_json)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return Trainer(method, cfg)


def trainer_for(job: Job, method: str) -> Trainer:
    """The method's :class:`Trainer` (one per process; every round loads all its weights)."""
    return _trainer(method, job.cfg.model_dump_json())


def to_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


class ClientStore:
    """What a client keeps to itself between rounds: in Flower's ``Context.state`` during a
    run, and in its own folder on disk, so that a rerun resumes with it.

    The server tells the client after which round its state must be (the last round whose
    update the server received from it); a state of another round is never used. On disk the
    client keeps that state and the one it is training, so that a reply the server never got
    (a timeout, a crash before the round's checkpoint) is simply trained again.
    """

    def __init__(self, job: Job, site: ClientSite, method: str) -> None:
        self.job, self.site, self.method = job, site, method
        self.fingerprint = job.fingerprints[method]
        self.path = site.storage / f"{method}-{self.fingerprint}.pt"

    def load(self, context: Context, after_round: int, trainer: Trainer) -> ClientState:
        """The client's state after ``after_round`` (``-1``: before its first round)."""
        if after_round < 0 or not trainer.spec.per_client:  # nothing of its own yet, or ever
            return trainer.initial_client_state(self.site.index, len(self.job.clients))
        held = held_state(context, self.method, after_round)
        if held is not None:
            return unflatten_state(held.to_torch_state_dict(), trainer.device)
        snapshots = self._snapshots()
        if after_round not in snapshots:
            raise RuntimeError(
                f"client {self.site.client}: its own state after round {after_round} is not in "
                f"{self.path} (it holds rounds {sorted(snapshots)}); it cannot continue this "
                "run. Start the run over (federated_pretraining.resume: false)."
            )
        return unflatten_state(snapshots[after_round], trainer.device)

    def save(self, context: Context, state: ClientState, round_idx: int, after_round: int) -> None:
        """Keep the state after ``round_idx`` (trained from the one after ``after_round``) in
        the context and on disk."""
        flat = flatten_state(state)
        if not flat:  # the method keeps nothing on the client
            return
        context.state[STATE_ARRAYS] = to_record(flat)
        context.state[STATE_META] = ConfigRecord(
            state_meta(self.method, self.fingerprint, round_idx)
        )
        old = self._snapshots()
        snapshots = {after_round: old[after_round]} if after_round in old else {}
        snapshots[round_idx] = flat
        atomic_save({"fingerprint": self.fingerprint, "snapshots": snapshots}, self.path)

    def _snapshots(self) -> dict[int, dict[str, torch.Tensor]]:
        if not self.path.exists():
            return {}
        saved = torch.load(self.path, weights_only=True)
        return dict(saved["snapshots"]) if saved.get("fingerprint") == self.fingerprint else {}


class RunFiles:
    """A run's folder on the server side: per method, one line per finished round
    (``<method>/progress.jsonl``) and its result (``<method>/result.pt``: the bundle and the
    round records); the run's error, if it fails (``error.txt``)."""

    def __init__(self, folder: Path | None) -> None:
        if folder is None:
            raise ValueError("the run config has no run-dir")
        self.folder = folder
        self.error = folder / "error.txt"

    def append_progress(self, server: ServerState) -> None:
        path = self.folder / server.history[-1]["method"] / "progress.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(server.history[-1]) + "\n")

    def read_progress(self, method: str, offset: int = 0) -> tuple[list[dict], int]:
        """The complete round records written after byte ``offset``, and the new offset."""
        path = self.folder / method / "progress.jsonl"
        if not path.exists():
            return [], offset
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        lines = data[:end].decode().splitlines()
        return [json.loads(line) for line in lines if line], offset + end

    def write_result(self, bundle: ModelBundle, history: list[dict]) -> None:
        tensors, meta = bundle.to_tensors()
        path = self.folder / bundle.method / "result.pt"
        atomic_save({"tensors": tensors, "meta": meta, "history": history}, path)

    def read_result(self, method: str) -> tuple[ModelBundle, list[dict]] | None:
        path = self.folder / method / "result.pt"
        if not path.exists():
            return None
        saved = torch.load(path, weights_only=True)
        return ModelBundle.from_tensors(saved["tensors"], saved["meta"]), saved["history"]

    def write_error(self, exc: BaseException) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.error.write_text(f"{type(exc).__name__}: {exc}")

    def read_error(self) -> str | None:
        return self.error.read_text() if self.error.exists() else None
