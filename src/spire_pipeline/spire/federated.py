"""Federated pretraining: the server's rounds (shared by both engines) and the ``inprocess`` engine.

:class:`RoundLoop` is the server side that every engine shares: which clients train in a round
(:func:`select_clients`), FedAvg of what they send (:class:`WeightedAverage`), one record per
round, the minimum number of clients, a checkpoint after each round. An engine only delivers
the selected clients' updates: :func:`pretrain` trains them here, one after the other (the
``inprocess`` engine); :mod:`spire_pipeline.flower` sends them to Flower ``ClientApp``s. Both
call :meth:`Trainer.train`, the one local-training step of a client.

In process, one model object is reused for every client, so memory grows with the number of
clients only by what each client owns: its embedding (``spire``), its head (``fedper``) or, for
``local``, its whole model (that method *is* one model per client). Every method follows the
same client schedule and local step budget, so their compute is the same.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.cache_files import read_or_set_aside
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.diffusion import make_scheduler
from spire_pipeline.spire.methods import PRETRAINING
from spire_pipeline.spire.model import (
    build_backbone,
    embedding_dim,
    init_embeddings,
    load_partial,
    resolve_device,
    state_of,
)
from spire_pipeline.spire.training import ClientTrainingError, ParamGroup, local_train, num_steps

log = logging.getLogger(__name__)

#: bump when the checkpoint layout changes, so that old checkpoints are not resumed
CHECKPOINT_FORMAT = 2


@dataclass(frozen=True)
class ClientData:
    """A client's training images, (N,C,H,W) float in [-1, 1]."""

    client: str
    images: torch.Tensor

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])


def derive_seed(*parts: int | str) -> int:
    """A 32-bit seed from a tuple (stable across processes and platforms)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def select_clients(cfg: PretrainingConfig, round_idx: int, num_clients: int) -> list[int]:
    """The clients taking part in ``round_idx`` (a fraction, at least ``min_clients``)."""
    m = min(num_clients, max(cfg.min_clients, round(cfg.client_fraction * num_clients)))
    rng = np.random.default_rng(derive_seed(cfg.seed, "select", round_idx))
    return sorted(rng.choice(num_clients, size=m, replace=False).tolist())


class WeightedAverage:
    """Streaming FedAvg: ``sum_k n_k theta_k / sum_k n_k`` without keeping the ``theta_k``."""

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._weight = 0.0

    def add(self, state: dict[str, torch.Tensor], weight: float) -> None:
        for k, v in state.items():
            acc = self._sum.get(k)
            contrib = v.double() * weight
            self._sum[k] = contrib if acc is None else acc + contrib
        self._weight += weight

    def result(self, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self._weight <= 0:
            raise ValueError("no client update to average")
        return {k: (self._sum[k] / self._weight).to(like[k].dtype) for k in self._sum}


def fedavg(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]):
    """FedAvg of ``states`` weighted by ``weights`` (sample counts)."""
    avg = WeightedAverage()
    for s, w in zip(states, weights):
        avg.add(s, w)
    return avg.result(states[0])


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes on the wire for these tensors."""
    return sum(v.numel() * v.element_size() for v in state.values())


def config_fingerprint(method: str, cfg: PretrainingConfig, clients: Sequence[ClientData]) -> str:
    """Identifies a run: same method, parameters and data -> same checkpoint."""
    h = hashlib.sha256(f"{method}/checkpoint-format-{CHECKPOINT_FORMAT}".encode())
    cfg = cfg.for_method(method)  # the schedule it runs
    unrelated = {
        "method_local_steps",
        "resume",
        "checkpoint_dir",
        "threads",
        "methods",
        "engine",
        "flower",
        "grid_samples_per_client",
    }
    exclude: dict = dict.fromkeys(unrelated, True)
    if cfg.local.embedding_dropout == 0:  # the default: fingerprints of runs made before it exist
        exclude["local"] = {"embedding_dropout"}
    h.update(cfg.model_dump_json(exclude=exclude).encode())
    for c in clients:
        h.update(c.client.encode())
        h.update(c.images.numpy().tobytes())
    return h.hexdigest()[:16]


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path | None, fingerprint: str, cfg: PretrainingConfig, method: str, device=None
) -> dict | None:
    """The checkpoint at ``path`` when it belongs to this run (same fingerprint), else ``None``
    (also when it is unreadable: set aside with a warning, and the run starts over)."""
    if path is None or not cfg.resume or not path.exists():
        return None

    def read(p: Path) -> dict:
        saved = torch.load(p, weights_only=False, map_location=device)
        saved["server"].round  # noqa: B018 - a checkpoint without a server state is damaged
        return saved

    saved = read_or_set_aside(path, read, f"{method}: checkpoint")
    if saved is None:
        return None
    if saved.get("fingerprint") != fingerprint:
        log.info("%s: %s is for other parameters or data; starting over", method, path)
        return None
    log.info("%s: resuming from %s after round %d", method, path, saved["server"].round)
    return saved


@dataclass
class ClientState:
    """What a client keeps to itself between rounds (never sent to the server)."""

    embedding: torch.Tensor | None = None
    head: dict[str, torch.Tensor] | None = None
    model: dict[str, torch.Tensor] | None = None


@dataclass
class ServerState:
    """What the server holds: the round counter, the shared backbone and the round records."""

    round: int
    backbone: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)


@dataclass
class ClientUpdate:
    """What a client sends back after a round: backbone arrays, its sample count, its loss."""

    upload: dict[str, torch.Tensor]
    num_samples: int
    loss: float


@dataclass(frozen=True)
class ClientFault:
    """A selected client that delivered no update: ``failed`` (its training raised, e.g. a NaN
    loss; it is dropped from the round) or ``missing`` (no reply: unreachable, crashed or too
    slow; a round needs ``min_clients`` that are not missing)."""

    kind: Literal["failed", "missing"]
    reason: str


def update_fault(client: str, update: ClientUpdate) -> ClientFault | None:
    """A ``failed`` fault when an update cannot be averaged: a loss or an array that holds NaN
    or infinity (from any engine: the server never averages such an update)."""
    bad = [n for n, v in update.upload.items() if not torch.isfinite(v).all()]
    if bad:
        return ClientFault(
            "failed",
            f"client {client}: its update holds NaN or infinity in {len(bad)} of "
            f"{len(update.upload)} arrays (first: {bad[0]})",
        )
    if not np.isfinite(update.loss):
        return ClientFault("failed", f"client {client}: its loss is {update.loss}")
    return None


def training_fault(client: str, exc: Exception) -> ClientFault:
    """A ``failed`` fault for a client whose local training raised ``exc``."""
    if isinstance(exc, ClientTrainingError):  # its message already names the client
        return ClientFault("failed", str(exc))
    return ClientFault("failed", f"client {client}: training raised {type(exc).__name__}: {exc}")


class NotEnoughClientsError(RuntimeError):
    """Fewer than ``min_clients`` of a round's selected clients delivered an update (the others
    could not be reached, or their training failed).

    The round is not recorded and the checkpoint of the previous round stays as it was, so the
    same command resumes from it once the clients are back.
    """


#: one round of an engine: (round, selected client indices, server backbone) -> for every
#: selected client, in the order given, its update or why there is none
RoundTraining = Callable[
    [int, list[int], dict[str, torch.Tensor]], Iterable[tuple[int, ClientUpdate | ClientFault]]
]
#: one round of a method on pooled data: (round, server state) -> (losses, failed clients)
PooledRound = Callable[[int, "ServerState"], tuple[dict[str, float], list[str]]]


class Trainer:
    """Local training of one method on one client, starting from the server's backbone.

    What the method trains, keeps and sends comes from its spec (:mod:`.methods`).
    """

    def __init__(self, method: str, cfg: PretrainingConfig) -> None:
        cfg = cfg.for_method(method)
        self.method, self.cfg = method, cfg
        self.spec = PRETRAINING[method]
        self.device = resolve_device(cfg.device)
        self.model = build_backbone(cfg.backbone, seed=derive_seed(cfg.seed, "init"))
        self.model.to(self.device).requires_grad_(False)
        self.scheduler = make_scheduler(cfg.diffusion)
        self.dim = embedding_dim(self.model)
        self.personal_head = self.spec.personal_names(self.model) if self.spec.personal_head else []
        #: the backbone arrays a client uploads (none when the method does not federate)
        self.uploaded = self.spec.shared_names(self.model)
        self._zero = torch.zeros(self.dim, device=self.device)
        #: the weights before any training (a Trainer may train many clients, one after another)
        self._initial = state_of(self.model)

    def initial_backbone(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self._initial.items()}

    def initial_client_state(self, index: int, num_clients: int) -> ClientState:
        """A client's own state before its first round."""
        emb = None
        if self.spec.conditional:
            table = init_embeddings(
                num_clients,
                self.dim,
                self.cfg.embedding_init,
                derive_seed(self.cfg.seed, "embeddings"),
                self.cfg.embedding_init_scale,
            )
            emb = table[index].clone().to(self.device)
        head = {n: self._initial[n].clone() for n in self.personal_head} or None
        model = self.initial_backbone() if self.spec.personal_model else None
        return ClientState(emb, head, model)

    def denoise(self, x, t, c):
        c = self._zero.expand(x.shape[0], -1) if c is None else c
        return self.model(x, t, class_labels=c).sample

    def train(
        self,
        backbone: dict[str, torch.Tensor],
        client: ClientData,
        state: ClientState,
        round_idx: int,
        index: int,
    ) -> tuple[ClientUpdate, ClientState]:
        """One round of local training; returns what is sent and the client's new state."""
        cfg = self.cfg
        load_partial(self.model, state.model if state.model is not None else backbone)
        if state.head is not None:
            load_partial(self.model, state.head)
        emb = None if state.embedding is None else state.embedding.clone()
        groups = [
            ParamGroup(dict(self.model.named_parameters()), cfg.local.lr, cfg.local.weight_decay)
        ]
        if emb is not None:
            groups.append(ParamGroup({"embedding": emb}, cfg.local.embedding_lr))
        res = local_train(
            self.denoise,
            groups,
            client.images,
            cfg.local,
            self.scheduler,
            seed=derive_seed(cfg.seed, "train", round_idx, index),
            cond=emb,
            client=client.client,
        )
        new_state = ClientState(
            embedding=res.params.get("embedding"),
            head={n: res.params[n] for n in self.personal_head} if self.personal_head else None,
            model=state_of(self.model) if state.model is not None else None,
        )
        upload = {n: res.params[n] for n in self.uploaded}
        return ClientUpdate(upload, client.num_samples, res.final_loss), new_state


RoundCallback = Callable[[ServerState, list[ClientState]], None]


@dataclass
class RoundLoop:
    """The server side of federated pretraining, the same for every engine.

    Each round: select the clients (:func:`select_clients`), let the engine deliver their
    updates, average the backbone arrays weighted by sample count in the order of the client
    indices (:class:`WeightedAverage`, so the result does not depend on who answered first),
    append one record (who was selected, who failed, who was missing, losses, bytes, seconds),
    save the checkpoint, call ``on_round``. A round in which fewer than ``min_clients`` of the
    selected clients could be reached stops the run with :class:`NotEnoughClientsError` before
    anything of that round is recorded or saved.
    """

    method: str
    cfg: PretrainingConfig
    clients: list[str]
    #: names of the backbone arrays a client sends (none when the method does not federate)
    uploaded: list[str]
    federated: bool
    server: ServerState
    save: Callable[[ServerState], None] | None = None
    on_round: Sequence[Callable[[ServerState], None]] = ()

    def run(
        self,
        train_round: RoundTraining | None = None,
        pooled_round: PooledRound | None = None,
        progress: bool = True,
    ) -> ServerState:
        """Play the rounds after the last completed one until ``cfg.rounds``."""
        bar = tqdm(
            total=self.cfg.rounds,
            initial=self.server.round,
            desc=f"pretrain {self.method}",
            disable=not progress,
            unit="round",
        )
        try:
            for r in range(self.server.round, self.cfg.rounds):
                record = self.play(r, train_round, pooled_round)
                bar.set_postfix(loss=f"{record['loss_mean']:.4f}")
                bar.update()
        finally:
            bar.close()
        return self.server

    def play(
        self, r: int, train_round: RoundTraining | None, pooled_round: PooledRound | None
    ) -> dict:
        """One round: updates in, FedAvg, record, checkpoint."""
        t0 = time.perf_counter()
        server, ids = self.server, self.clients
        missing: list[str] = []
        if pooled_round is not None:
            selected = list(range(len(ids)))
            losses, failed = pooled_round(r, server)
        else:
            if train_round is None:
                raise ValueError("an engine must deliver the clients' updates")
            selected = select_clients(self.cfg, r, len(ids))
            losses, failed = {}, []
            avg = WeightedAverage()
            reasons: dict[str, str] = {}
            for k, delivered in train_round(r, selected, server.backbone):
                outcome = delivered
                if isinstance(delivered, ClientUpdate):
                    outcome = update_fault(ids[k], delivered) or delivered
                if isinstance(outcome, ClientFault):
                    reasons[ids[k]] = outcome.reason
                    # the round as the error and the progress bar count it (the history's
                    # ``round`` column counts from 0)
                    where = f"{self.method}, round {r + 1} of {self.cfg.rounds}"
                    if outcome.kind == "failed":
                        log.warning("%s: %s; its update is dropped", where, outcome.reason)
                        failed.append(ids[k])
                    else:
                        log.warning("%s: client %s is missing (%s)", where, ids[k], outcome.reason)
                        missing.append(ids[k])
                    continue
                losses[ids[k]] = outcome.loss
                if outcome.upload:
                    avg.add(outcome.upload, outcome.num_samples)
            self._check_reached(r, selected, missing, failed, reasons)
            if self.federated and losses:
                server.backbone = {**server.backbone, **avg.result(server.backbone)}
        sent = state_bytes({n: server.backbone[n] for n in self.uploaded})
        record = {
            "method": self.method,
            "round": r,
            "clients": [ids[k] for k in selected],
            "failed": failed,
            "missing": missing,
            "loss_mean": float(np.mean(list(losses.values()))) if losses else float("nan"),
            "client_losses": losses,
            "bytes_down": sent * len(selected),
            "bytes_up": sent * (len(selected) - len(failed) - len(missing)),
            "seconds": time.perf_counter() - t0,
        }
        server.history.append(record)
        server.round = r + 1
        if self.save is not None:
            self.save(server)
        for cb in self.on_round:
            cb(server)
        return record

    def _check_reached(
        self,
        r: int,
        selected: list[int],
        missing: list[str],
        failed: Sequence[str] = (),
        reasons: dict[str, str] | None = None,
    ) -> None:
        needed = min(self.cfg.min_clients, len(selected))
        took_part = len(selected) - len(missing) - len(failed)
        if took_part >= needed:
            return
        kept = f"the checkpoint after round {r} is intact" if r else "no round was completed"
        what = "delivered an update" if failed else "could be reached"
        left_out = "; ".join(
            f"{kind}: {', '.join(clients)}"
            for kind, clients in (("missing", missing), ("failed", failed))
            if clients
        )
        then = "the same command resumes once the clients are back"
        if failed:
            first = (reasons or {}).get(failed[0], "")
            then = (
                f"a failed client fails again unless its data or the parameters change "
                f"({first}), and the same command then resumes from it"
            )
        raise NotEnoughClientsError(
            f"{self.method}, round {r + 1} of {self.cfg.rounds}: only {took_part} of the "
            f"{len(selected)} selected clients {what} ({left_out}), fewer than min_clients = "
            f"{self.cfg.min_clients}. The run stops here; {kept}; {then}."
        )


def pretrain(
    method: str,
    cfg: PretrainingConfig,
    clients: Sequence[ClientData],
    checkpoint: Path | None = None,
    progress: bool = True,
    callbacks: Sequence[RoundCallback] = (),
) -> tuple[ModelBundle, list[dict]]:
    """Run ``cfg.rounds`` rounds of ``method`` in this process (the ``inprocess`` engine);
    return the bundle and one record per round.

    With ``checkpoint``, the server and client states are saved after each round, and a run
    that finds a checkpoint of the same method, parameters and data resumes after its last
    completed round. ``callbacks`` see the states after each round (tests, monitoring).
    """
    trainer = Trainer(method, cfg)
    cfg = trainer.cfg  # the method's own schedule (PretrainingConfig.for_method)
    ids = [c.client for c in clients]
    fingerprint = config_fingerprint(method, cfg, clients)
    server = ServerState(0, trainer.initial_backbone())
    states = [trainer.initial_client_state(k, len(ids)) for k in range(len(ids))]
    saved = load_checkpoint(checkpoint, fingerprint, cfg, method, trainer.device)
    if saved is not None:
        server, states = saved["server"], saved["clients"]

    def save(s: ServerState) -> None:
        if checkpoint is not None:
            atomic_save({"fingerprint": fingerprint, "server": s, "clients": states}, checkpoint)

    def train_round(r: int, selected: list[int], backbone: dict[str, torch.Tensor]):
        for k in selected:
            try:
                update, states[k] = trainer.train(backbone, clients[k], states[k], r, k)
            except Exception as exc:  # noqa: BLE001 - a client's fault, recorded, not the run's
                yield k, training_fault(clients[k].client, exc)
                continue
            yield k, update

    def pooled_round(r: int, s: ServerState) -> tuple[dict[str, float], list[str]]:
        return _train_centralized(trainer, s, states, clients, r)

    loop = RoundLoop(
        method,
        cfg,
        ids,
        trainer.uploaded,
        trainer.spec.federated,
        server,
        save=save,
        on_round=[lambda s, cb=cb: cb(s, states) for cb in callbacks],
    )
    if trainer.spec.pooled:
        server = loop.run(pooled_round=pooled_round, progress=progress)
    else:
        server = loop.run(train_round, progress=progress)
    bundle = make_bundle(trainer, cfg, ids, server, states)
    return bundle, server.history


class InProcessEngine:
    """The ``inprocess`` engine behind the interface every engine offers the Kedro node: a
    context manager whose :meth:`pretrain` yields each method's bundle and round records."""

    def __init__(self, cfg: PretrainingConfig, clients: Sequence[ClientData]) -> None:
        self.cfg, self.clients = cfg, list(clients)

    def __enter__(self) -> InProcessEngine:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def checkpoint(self, method: str) -> Path:
        """Where the server and client states of ``method`` are saved after each round."""
        fingerprint = config_fingerprint(method, self.cfg, self.clients)
        return Path(self.cfg.checkpoint_dir) / f"{method}-{fingerprint}.pt"

    def pretrain(
        self, methods: Sequence[str], progress: bool = True
    ) -> Iterator[tuple[str, ModelBundle, list[dict]]]:
        for method in methods:
            bundle, history = pretrain(
                method, self.cfg, self.clients, self.checkpoint(method), progress
            )
            yield method, bundle, history


def make_bundle(
    trainer: Trainer,
    cfg: PretrainingConfig,
    ids: Sequence[str],
    server: ServerState,
    states: Sequence[ClientState],
) -> ModelBundle:
    """The bundle of a finished run: the server's backbone and each client's own tensors."""
    return ModelBundle(
        method=trainer.method,
        backbone_cfg=cfg.backbone,
        diffusion_cfg=cfg.diffusion,
        backbone={} if trainer.spec.personal_model else server.backbone,
        embeddings={c: s.embedding for c, s in zip(ids, states) if s.embedding is not None},
        heads={c: s.head for c, s in zip(ids, states) if s.head is not None},
        local={c: s.model for c, s in zip(ids, states) if s.model is not None},
        info={"rounds": cfg.rounds, "clients": list(ids)},
    )


def _train_centralized(
    trainer: Trainer,
    server: ServerState,
    states: list[ClientState],
    clients: Sequence[ClientData],
    r: int,
) -> tuple[dict, list]:
    """One round of the centralized reference: pooled data, as many steps as a round has."""
    cfg, model = trainer.cfg, trainer.model
    load_partial(model, server.backbone)
    images = torch.cat([c.images for c in clients])
    owner = torch.cat([torch.full((c.num_samples,), k) for k, c in enumerate(clients)])
    owner = owner.to(trainer.device)
    table = torch.stack([s.embedding for s in states])
    m = len(select_clients(cfg, r, len(clients)))
    per_client = num_steps(cfg.local, int(np.mean([c.num_samples for c in clients])))
    budget = cfg.local.model_copy(update={"steps": per_client * m, "epochs": None})
    groups = [
        ParamGroup(dict(model.named_parameters()), cfg.local.lr, cfg.local.weight_decay),
        ParamGroup({"embeddings": table}, cfg.local.embedding_lr),
    ]
    try:
        res = local_train(
            trainer.denoise,
            groups,
            images,
            budget,
            trainer.scheduler,
            seed=derive_seed(cfg.seed, "train", r, "pooled"),
            cond=lambda idx: table[owner[idx]],
            client="pooled",
        )
    except ClientTrainingError as exc:
        log.warning("%s, round %d of %d: %s", trainer.method, r + 1, cfg.rounds, exc)
        return {}, ["pooled"]
    for k, s in enumerate(states):
        s.embedding = res.params["embeddings"][k].clone()
    server.backbone = state_of(model)
    return {"pooled": res.final_loss}, []
