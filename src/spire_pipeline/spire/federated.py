"""Federated pretraining, embedded engine (``inprocess``): rounds, client sampling, FedAvg.

One model object is reused for every client, so memory grows with the number of clients only
by what each client owns: its embedding (``spire``), its head (``fedper``) or, for ``local``,
its whole model (that method *is* one model per client). Every method follows the same client
schedule and local step budget, so their compute is the same.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.config import PretrainingConfig
from spire_pipeline.spire.diffusion import make_scheduler
from spire_pipeline.spire.model import (
    build_backbone,
    embedding_dim,
    head_names,
    init_embeddings,
    load_partial,
    state_of,
)
from spire_pipeline.spire.training import ClientTrainingError, ParamGroup, local_train, num_steps

log = logging.getLogger(__name__)

CONDITIONAL = {"spire", "centralized"}


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
    h = hashlib.sha256(method.encode())
    h.update(cfg.model_dump_json(exclude={"resume", "checkpoint_dir", "threads"}).encode())
    for c in clients:
        h.update(c.client.encode())
        h.update(c.images.numpy().tobytes())
    return h.hexdigest()[:16]


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pretrain(
    method: str,
    cfg: PretrainingConfig,
    clients: Sequence[ClientData],
    checkpoint: Path | None = None,
    progress: bool = True,
) -> tuple[ModelBundle, list[dict]]:
    """Run ``cfg.rounds`` rounds of ``method``; return the bundle and one record per round.

    With ``checkpoint``, the state is saved after each round and a run that finds a checkpoint
    of the same method, parameters and data resumes after its last completed round.
    """
    model = build_backbone(cfg.backbone, seed=derive_seed(cfg.seed, "init"))
    model.requires_grad_(False)
    scheduler = make_scheduler(cfg.diffusion)
    dim = embedding_dim(model)
    ids = [c.client for c in clients]
    shared = [n for n, _ in model.named_parameters()]
    personal_head = head_names(model) if method == "fedper" else []
    uploaded = [n for n in shared if n not in personal_head]
    zero = torch.zeros(dim)

    state = {
        "round": 0,
        "backbone": state_of(model),
        "embeddings": init_embeddings(
            len(ids),
            dim,
            cfg.embedding_init,
            derive_seed(cfg.seed, "embeddings"),
            cfg.embedding_init_scale,
        ),
        "heads": {c: state_of(model, personal_head) for c in ids} if personal_head else {},
        "local": {c: state_of(model) for c in ids} if method == "local" else {},
        "history": [],
        "fingerprint": config_fingerprint(method, cfg, clients),
    }
    if checkpoint is not None and cfg.resume and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        if saved.get("fingerprint") == state["fingerprint"]:
            state = saved
            log.info("%s: resuming from %s after round %d", method, checkpoint, state["round"])
        else:
            log.info(
                "%s: checkpoint %s is for other parameters or data; starting over",
                method,
                checkpoint,
            )

    def denoise(x, t, c):
        c = zero.expand(x.shape[0], -1) if c is None else c
        return model(x, t, class_labels=c).sample

    bar = tqdm(
        total=cfg.rounds,
        initial=state["round"],
        desc=f"pretrain {method}",
        disable=not progress,
        unit="round",
    )
    for r in range(state["round"], cfg.rounds):
        t0 = time.perf_counter()
        selected = select_clients(cfg, r, len(ids))
        avg = WeightedAverage()
        losses: dict[str, float] = {}
        failed: list[str] = []
        if method == "centralized":
            selected = list(range(len(ids)))
            losses, failed = _train_centralized(model, denoise, state, cfg, clients, scheduler, r)
        for k in selected if method != "centralized" else []:
            client = clients[k]
            bar.set_postfix_str(client.client)
            load_partial(
                model, state["local"][client.client] if method == "local" else state["backbone"]
            )
            if personal_head:
                load_partial(model, state["heads"][client.client])
            emb = state["embeddings"][k].clone() if method in CONDITIONAL else None
            groups = [
                ParamGroup(dict(model.named_parameters()), cfg.local.lr, cfg.local.weight_decay)
            ]
            if emb is not None:
                groups.append(ParamGroup({"embedding": emb}, cfg.local.embedding_lr))
            try:
                res = local_train(
                    denoise,
                    groups,
                    client.images,
                    cfg.local,
                    scheduler,
                    seed=derive_seed(cfg.seed, "train", r, k),
                    cond=emb,
                    client=client.client,
                )
            except ClientTrainingError as exc:
                log.warning("round %d: %s; its update is dropped", r, exc)
                failed.append(client.client)
                continue
            losses[client.client] = res.final_loss
            if emb is not None:
                state["embeddings"][k] = res.params["embedding"]
            if method == "local":
                state["local"][client.client] = state_of(model)
                continue
            if personal_head:
                state["heads"][client.client] = {n: res.params[n] for n in personal_head}
            avg.add({n: res.params[n] for n in uploaded}, client.num_samples)
        if method not in ("local", "centralized") and losses:
            state["backbone"] = {**state["backbone"], **avg.result(state["backbone"])}
        down = (
            state_bytes({n: state["backbone"][n] for n in uploaded})
            if method not in ("local", "centralized")
            else 0
        )
        record = {
            "method": method,
            "round": r,
            "clients": [ids[k] for k in selected],
            "failed": failed,
            "loss_mean": float(np.mean(list(losses.values()))) if losses else float("nan"),
            "client_losses": losses,
            "bytes_down": down * len(selected),
            "bytes_up": down * (len(selected) - len(failed)),
            "seconds": time.perf_counter() - t0,
        }
        state["history"].append(record)
        state["round"] = r + 1
        if checkpoint is not None:
            _atomic_save(state, checkpoint)
        bar.set_postfix(loss=f"{record['loss_mean']:.4f}")
        bar.update()
    bar.close()

    bundle = ModelBundle(
        method=method,
        backbone_cfg=cfg.backbone,
        diffusion_cfg=cfg.diffusion,
        backbone={} if method == "local" else state["backbone"],
        embeddings=(
            {c: state["embeddings"][k] for k, c in enumerate(ids)} if method in CONDITIONAL else {}
        ),
        heads=state["heads"],
        local=state["local"],
        info={"rounds": cfg.rounds, "clients": ids},
    )
    return bundle, state["history"]


def _train_centralized(model, denoise, state, cfg, clients, scheduler, r):
    """One round of the centralized reference: pooled data, the same total steps as a round."""
    load_partial(model, state["backbone"])
    images = torch.cat([c.images for c in clients])
    owner = torch.cat([torch.full((c.num_samples,), k) for k, c in enumerate(clients)])
    table = state["embeddings"].clone()
    m = min(len(clients), max(cfg.min_clients, round(cfg.client_fraction * len(clients))))
    per_client = num_steps(cfg.local, int(np.mean([c.num_samples for c in clients])))
    budget = cfg.local.model_copy(update={"steps": per_client * m, "epochs": None})
    groups = [
        ParamGroup(dict(model.named_parameters()), cfg.local.lr, cfg.local.weight_decay),
        ParamGroup({"embeddings": table}, cfg.local.embedding_lr),
    ]
    try:
        res = local_train(
            denoise,
            groups,
            images,
            budget,
            scheduler,
            seed=derive_seed(cfg.seed, "train", r, "pooled"),
            cond=lambda idx: table[owner[idx]],
            client="pooled",
        )
    except ClientTrainingError as exc:
        log.warning("round %d: %s", r, exc)
        return {}, ["pooled"]
    state["embeddings"] = res.params["embeddings"]
    state["backbone"] = state_of(model)
    return {"pooled": res.final_loss}, []
