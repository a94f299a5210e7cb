"""Finished work cached by content, so that a run killed half-way redoes only what was unfinished.

A job's key is a hash of everything that determines its result: its parameters, the input
model's weights, the client's images, the device type and the torch version. A run started again
with the same command finds every finished job under its key and computes only the others; a
changed parameter, model or image set gives another key, so a stale result is never reused.
Each result is written to a temporary name and renamed when complete, so a kill during a write
leaves no half-written entry. Two kinds of jobs are cached:

- an adaptation of one method to one client (:func:`cached_adapt`: the adapted tensors, the
  snapshots a grid asks for, the loss history, the parameter counts and the measured seconds);
- a set of generated samples and their features (:func:`cached_samples`: per KID job, per
  tuning or sweep cell, per forgetting draw).

The KID of a job is then recomputed from the cached features (milliseconds, deterministic).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel

from spire_pipeline.spire.adaptation import Adapted, adapt
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.cache_files import read_or_set_aside
from spire_pipeline.spire.config import AdaptationConfig, LocalTrainConfig
from spire_pipeline.spire.federated import ClientData
from spire_pipeline.spire.model import resolve_device
from spire_pipeline.spire.training import LocalResult

log = logging.getLogger(__name__)

T = TypeVar("T")

#: bump when what a cached job holds, or how it is computed, changes
CACHE_FORMAT = 1


def _feed(h: Any, part: Any) -> None:
    """Feed one part of a key into the hash ``h`` (tensors and arrays by dtype, shape, bytes)."""
    if isinstance(part, torch.Tensor):
        part = part.detach().cpu().contiguous()
        h.update(f"tensor{tuple(part.shape)}{part.dtype}".encode())
        h.update(part.reshape(-1).view(torch.uint8).numpy().tobytes() if part.numel() else b"")
    elif isinstance(part, np.ndarray):
        h.update(f"array{part.shape}{part.dtype}".encode())
        h.update(np.ascontiguousarray(part).tobytes())
    elif isinstance(part, ModelBundle):
        tensors, meta = part.to_tensors()
        _feed(h, meta)
        for name in sorted(tensors):
            _feed(h, name)
            _feed(h, tensors[name])
    elif isinstance(part, BaseModel):
        _feed(h, part.model_dump(mode="json"))
    elif isinstance(part, dict) and all(isinstance(v, torch.Tensor) for v in part.values()):
        for name in sorted(part):
            _feed(h, name)
            _feed(h, part[name])
    else:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    h.update(b"\x00")


def content_key(*parts: Any) -> str:
    """A hex digest of ``parts`` (strings, numbers, dicts, pydantic models, tensors, arrays,
    state dicts, bundles), with the cache format and the torch version."""
    h = hashlib.sha256()
    for part in (CACHE_FORMAT, torch.__version__, *parts):
        _feed(h, part)
    return h.hexdigest()[:32]


@dataclass
class JobCache:
    """A folder of finished jobs of one kind, one file per key; counts what it found."""

    folder: Path
    suffix: str
    #: jobs found finished (reused) and jobs computed, since this object was made
    hits: int = 0
    misses: int = 0

    @classmethod
    def at(cls, folder: str | Path | None, kind: str, suffix: str = ".pt") -> JobCache | None:
        """The cache ``<folder>/<kind>``, or ``None`` (no caching) when ``folder`` is ``None``."""
        return None if folder is None else cls(Path(folder) / kind, suffix)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{self.suffix}"

    def found(self, key: str) -> Path | None:
        """The finished entry of ``key``, if there is one (counted as a hit, else a miss)."""
        path = self.path(key)
        if path.exists():
            self.hits += 1
            return path
        self.misses += 1
        return None

    def read(self, key: str, read: Callable[[Path], T]) -> T | None:
        """The finished entry of ``key`` read by ``read``, or ``None`` (a miss): not there, or
        unreadable (set aside with a warning, :func:`.cache_files.read_or_set_aside`)."""
        path = self.found(key)
        if path is None:
            return None
        value = read_or_set_aside(path, read, "cache entry")
        if value is None:
            self.hits, self.misses = self.hits - 1, self.misses + 1
        return value

    def mark(self) -> tuple[int, int]:
        """The lookups so far (hits, misses), for :meth:`summary` of a later part only."""
        return self.hits, self.misses

    def summary(self, since: tuple[int, int] = (0, 0)) -> str:
        """``"3 of 5 reused from <folder>"``: the lookups after ``since`` (a :meth:`mark`)."""
        hits, misses = self.hits - since[0], self.misses - since[1]
        return f"{hits} of {hits + misses} reused from {self.folder}"

    def write(self, key: str, save: Callable[[Path], None]) -> None:
        """``save(tmp)`` writes the entry to a temporary name, renamed when complete."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.stem}.{os.getpid()}.partial{self.suffix}")
        try:
            save(tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


def adaptation_cache(folder: str | Path | None) -> JobCache | None:
    """Finished adaptations under ``folder`` (``client_adaptation.cache_dir``)."""
    return JobCache.at(folder, "adapt", ".pt")


def sample_cache(folder: str | Path | None) -> JobCache | None:
    """Generated samples and their features under ``folder`` (``kid_evaluation.cache_dir``,
    beside the real-image features)."""
    return JobCache.at(folder, "samples", ".npz")


# ----------------------------------------------------------------------------- adaptations


def adapt_key(
    method: str,
    pretrained: dict[str, ModelBundle],
    client: ClientData,
    cfg: AdaptationConfig,
    local: LocalTrainConfig,
    snapshot_steps: Sequence[int],
) -> str:
    """Everything :func:`~spire_pipeline.spire.adaptation.adapt` reads."""
    from spire_pipeline.spire.methods import ADAPTATION

    base = ADAPTATION[method].base
    first = next(iter(pretrained.values()))
    return content_key(
        "adapt",
        method,
        cfg.model_dump(mode="json", include={"seed", "embedding_init", "lora_rank", "lora_alpha"}),
        resolve_device(cfg.device).type,
        local,
        sorted(set(snapshot_steps)),
        client.client,
        client.images,
        first.backbone_cfg,
        first.diffusion_cfg,
        pretrained[base] if base is not None and base in pretrained else None,
    )


def _bundle_record(bundle: ModelBundle) -> dict[str, Any]:
    tensors, meta = bundle.to_tensors()
    return {"tensors": tensors, "meta": meta}


def _bundle_of(record: dict[str, Any]) -> ModelBundle:
    return ModelBundle.from_tensors(record["tensors"], record["meta"])


def _read_adaptation(path: Path, client: str) -> Adapted:
    """A finished adaptation from its entry (raises on a damaged entry)."""
    saved = torch.load(path, weights_only=True)
    bundle = _bundle_of(saved["bundle"])
    params = dict(bundle.local.get(client, {}))
    if client in bundle.embeddings:
        params["embedding"] = bundle.embeddings[client]
    result = LocalResult(params, saved["num_samples"], saved["losses"], saved["seconds"])
    snapshots = {int(s): _bundle_of(b) for s, b in saved["snapshots"].items()}
    return Adapted(
        bundle, saved["trained_params"], saved["total_params"], saved["seconds"], result, snapshots
    )


def cached_adapt(
    cache: JobCache | None,
    method: str,
    pretrained: dict[str, ModelBundle],
    client: ClientData,
    cfg: AdaptationConfig,
    local: LocalTrainConfig | None = None,
    snapshot_steps: Sequence[int] = (),
    compute: Callable[..., Adapted] = adapt,
) -> Adapted:
    """``compute(...)`` (:func:`~spire_pipeline.spire.adaptation.adapt`), or its result from
    ``cache`` when the same adaptation has finished before (``seconds``: what it took then)."""
    local = local or cfg.local
    if cache is None:
        return compute(method, pretrained, client, cfg, local=local, snapshot_steps=snapshot_steps)
    key = adapt_key(method, pretrained, client, cfg, local, snapshot_steps)
    found = cache.read(key, lambda path: _read_adaptation(path, client.client))
    if found is not None:
        log.debug("adaptation of %s to %s reused from %s", method, client.client, cache.folder)
        return found
    a = compute(method, pretrained, client, cfg, local=local, snapshot_steps=snapshot_steps)
    record = {
        "bundle": _bundle_record(a.bundle),
        "snapshots": {str(s): _bundle_record(b) for s, b in a.snapshots.items()},
        "trained_params": a.trained_params,
        "total_params": a.total_params,
        "seconds": a.seconds,
        "losses": list(a.result.losses),
        "num_samples": a.result.num_samples,
    }
    cache.write(key, lambda tmp: torch.save(record, tmp))
    return a


# ----------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class SampleRequest:
    """How a set of samples is drawn from a model (everything but the model itself)."""

    num: int
    seed: int
    steps: int | None
    batch_size: int
    device: torch.device
    precision: str
    guidance: float = 1.0  # personalisation guidance (1: none)


Samples = tuple[np.ndarray, np.ndarray]


def _read_samples(path: Path) -> Samples:
    with np.load(path, allow_pickle=False) as saved:
        return saved["features"], saved["images"]


def cached_samples(
    cache: JobCache | None,
    model: torch.nn.Module,
    cond: torch.Tensor | None,
    bundle: ModelBundle,
    request: SampleRequest,
    extractor_name: str,
    draw: Callable[[], Samples],
) -> Samples:
    """``draw()`` (the samples of ``model`` conditioned on ``cond``, drawn as ``request`` says,
    and their features): ``(features, images)``, from ``cache`` when the same weights,
    condition, sampler and extractor drew them before."""
    if cache is None:
        return draw()
    key = content_key(
        "samples",
        model.state_dict(),
        cond,
        bundle.backbone_cfg,
        bundle.diffusion_cfg,
        request.num,
        request.seed,
        request.steps,
        request.batch_size,
        request.device.type,
        request.precision,
        request.guidance,
        extractor_name,
    )
    saved = cache.read(key, _read_samples)
    if saved is not None:
        return saved
    features, images = draw()
    features = np.asarray(features)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, features=features, images=images)

    cache.write(key, save)
    return features, images
