"""Will the run fit? Memory for the requested batch and backbone, disk for the outputs, estimated
before any node runs and compared with what the machine has.

Memory: the largest of local training (weights, gradients, two Adam moments, and the
activations kept for the backward pass: every module output of one forward pass, measured on
PyTorch's ``meta`` device, so nothing is allocated; on the CPU also the seen clients' images and
the whole models the ``inprocess`` engine keeps per client for ``personal_model`` methods) and
sampling (the weights and a few live activations of the widest layer). Disk: the partition, the
models and checkpoints, the adapted models and the caches of finished work (:mod:`.job_cache`),
the figures. Both are estimates (``benchmarks/memory_estimate.py`` measures the memory ones
against real peaks: within 10 % for training); a run is refused only when an estimate exceeds
:data:`HEADROOM` of the limit, with the estimate, the limit and what would fit.

Runs that train or sample nothing (partitioning, theory, reporting) import no torch here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from spire_pipeline.spire.config import (
    AdaptationConfig,
    BackboneConfig,
    GenerateConfig,
    KIDConfig,
    PartitionConfig,
    PretrainingConfig,
)
from spire_pipeline.spire.methods import ADAPTATION, PRETRAINING
from spire_pipeline.spire.validation import ParameterError, shown

GIB = 1024**3
#: bytes of one feature vector (float32) of the KID extractors (Inception-v3's is 2048 wide)
FEATURE_BYTES = 2048 * 4
#: bytes of one figure (PNG) and of the other small outputs of a run, generously
FIGURE_BYTES = 300_000
#: what an estimate may use of the limit (the rest: Python, torch, the data, other processes)
HEADROOM = 0.9
#: live activations of the widest layer per sample while sampling, float32 and bfloat16
#: (measured: 4.8-5.4 and 2.5-2.7, ``benchmarks/memory_estimate.py``; docs/reliability.md)
SAMPLING_LIVE = {"fp32": 6, "bf16": 3}

#: the pipelines that train the backbone from scratch, adapt it, or sample it
PRETRAINS = ("federated_pretraining", "personalization_frontier")
ADAPTS = ("client_adaptation", "robustness_sweep", "personalize", "personalization_frontier")
SAMPLES = ("kid_evaluation", "robustness_sweep", "personalization_frontier")
USES_MODEL = (*PRETRAINS, *ADAPTS, *SAMPLES, "generate", "diffusers_export")


class ResourceError(ParameterError):
    """The configuration would not fit in this machine's memory or disk."""


@dataclass(frozen=True)
class Limit:
    """What the machine offers: bytes, and where (for the message)."""

    bytes: int
    where: str


@dataclass(frozen=True)
class BackboneCost:
    """What one backbone costs: its weights and its activations per sample."""

    params: int
    #: bytes per sample of every module output of a forward pass (kept for the backward pass)
    train_activations: int
    #: bytes per sample of the largest module output (a forward pass without gradients)
    peak_activation: int


def backbone_cost(cfg: BackboneConfig) -> BackboneCost:
    """Weights and float32 activations per sample of ``cfg``'s UNet, from one forward pass on
    the ``meta`` device (shapes only, no memory, milliseconds)."""
    return _backbone_cost(cfg.model_dump_json())


@cache
def _backbone_cost(cfg_json: str) -> BackboneCost:
    import torch

    from spire_pipeline.spire.model import build_backbone, embedding_dim

    cfg = BackboneConfig.model_validate_json(cfg_json)
    with torch.device("meta"):
        model = build_backbone(cfg)
        sizes: list[int] = []

        def count(module, inputs, output) -> None:
            if isinstance(output, torch.Tensor):
                sizes.append(output.numel() * 4)
            elif hasattr(output, "sample"):
                sizes.append(output.sample.numel() * 4)

        leaves = [m for m in model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(count) for m in leaves]
        x = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
        t = torch.zeros(1, dtype=torch.long)
        c = torch.zeros(1, embedding_dim(model))
        with torch.no_grad():
            model(x, t, class_labels=c)
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return BackboneCost(params, sum(sizes), max(sizes))


def _fmt(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.0f} MiB"


def device_type(device: str, key: str) -> str:
    """``cpu`` or ``cuda``: where a section's ``device`` parameter puts the model; one
    :class:`ResourceError` naming ``key`` for a device torch does not know or does not see."""
    from spire_pipeline.spire.model import resolve_device

    try:
        return resolve_device(device).type
    except RuntimeError as exc:
        text = str(exc).split("\n")[0]
        reason = "not a device type torch knows" if text.startswith("Expected one of") else text
        raise ResourceError(
            f"parameter {key} = {shown(device)}: {reason} (allowed: auto, cpu, cuda, cuda:<n>)"
        ) from None


def compute_precision(precision: str, device: str) -> str:
    """``fp32`` or ``bf16``: what ``precision`` (``auto`` too) computes in on ``device``."""
    from spire_pipeline.spire.precision import compute_dtype

    return "fp32" if compute_dtype(precision, device) is None else "bf16"


def training_bytes(cost: BackboneCost, precision: str) -> tuple[int, int]:
    """Local training of every weight: (fixed bytes, bytes per sample): weights, gradients and
    Adam's two moments (float32), and the activations of a sample (bf16: half of them)."""
    return 4 * 4 * cost.params, cost.train_activations // (2 if precision == "bf16" else 1)


def sampling_bytes(cost: BackboneCost, precision: str = "fp32") -> tuple[int, int]:
    """Sampling: (fixed bytes, bytes per sample): the weights, and the live activations of the
    widest layer per sample (:data:`SAMPLING_LIVE`)."""
    return 4 * cost.params, SAMPLING_LIVE[precision] * cost.peak_activation


@dataclass(frozen=True)
class Need:
    """The memory one part of the run needs on ``device`` (``cpu`` or ``cuda``):
    ``fixed + per_sample x value`` of the batch-size parameter ``key``."""

    key: str
    value: int
    what: str
    fixed: int
    per_sample: int
    device: str = "cpu"

    @property
    def bytes(self) -> int:
        return self.fixed + self.per_sample * self.value

    def fits(self, limit: int) -> int:
        """The largest batch that fits in ``limit`` bytes (0: none)."""
        return max(0, (limit - self.fixed) // max(1, self.per_sample))


def memory_needs(parameters: dict[str, Any], stages: Collection[str]) -> list[Need]:
    """The memory each part of the run needs (only the parts of the pipelines that run)."""
    if "federated_pretraining" not in parameters or not set(stages) & set(USES_MODEL):
        return []
    fp = PretrainingConfig.model_validate(parameters["federated_pretraining"])
    cost = backbone_cost(fp.backbone)
    bb = f"{fp.backbone.block_out_channels} ({cost.params:,} weights)"
    needs = []
    if set(stages) & set(PRETRAINS):
        device = device_type(fp.device, "federated_pretraining.device")
        p = PartitionConfig.model_validate(parameters.get("data_partitioning") or {})
        fixed, per = training_bytes(cost, compute_precision(fp.local.precision, device))
        what = f"training the backbone {bb} on batches of {fp.local.batch_size}"
        if device == "cpu":  # the clients' images (float32) and kept models are in memory too
            kept = p.num_seen_clients * sum(PRETRAINING[m].personal_model for m in fp.methods)
            shape = fp.backbone.channels * fp.backbone.image_size**2
            images = p.num_seen_clients * (p.seen_client_size or 70_000 // p.num_seen_clients)
            fixed += 4 * (kept * cost.params + images * shape)
            what += f" (with the seen clients' {images:,} images"
            what += f" and {kept} models the clients keep)" if kept else ")"
        key = "federated_pretraining.local.batch_size"
        needs.append(Need(key, fp.local.batch_size, what, fixed, per, device))
    if set(stages) & set(ADAPTS) and "client_adaptation" in parameters:
        ad = AdaptationConfig.model_validate(parameters["client_adaptation"])
        device = device_type(ad.device, "client_adaptation.device")
        fixed, per = training_bytes(cost, compute_precision(ad.local.precision, device))
        what = f"fine-tuning the backbone {bb} on batches of {ad.local.batch_size}"
        key = "client_adaptation.local.batch_size"
        needs.append(Need(key, ad.local.batch_size, what, fixed, per, device))
    if set(stages) & set(SAMPLES) and "kid_evaluation" in parameters:
        kid = KIDConfig.model_validate(parameters["kid_evaluation"])
        device = device_type(kid.device, "kid_evaluation.device")
        fixed, per = sampling_bytes(cost, compute_precision(kid.precision, device))
        what = f"sampling the backbone {bb} in batches of {kid.batch_size}"
        needs.append(Need("kid_evaluation.batch_size", kid.batch_size, what, fixed, per, device))
    if "generate" in stages and "generate" in parameters:
        gen = GenerateConfig.model_validate(parameters["generate"])
        device = device_type(gen.device, "generate.device")
        fixed, per = sampling_bytes(cost)
        what = f"sampling the backbone {bb} in batches of {gen.batch_size}"
        needs.append(Need("generate.batch_size", gen.batch_size, what, fixed, per, device))
    return needs


def disk_needs(
    parameters: dict[str, Any], stages: Collection[str], image_bytes: int = 28 * 28
) -> list[tuple[str, int]]:
    """The bytes the main job's pipelines in ``stages`` write, per kind of output (a rough
    upper estimate; other pipelines write little beside what these do)."""
    if "federated_pretraining" not in parameters or "data_partitioning" not in parameters:
        return []
    p = PartitionConfig.model_validate(parameters["data_partitioning"])
    fp = PretrainingConfig.model_validate(parameters["federated_pretraining"])
    per_seen = p.seen_client_size or 70_000 // max(1, p.num_seen_clients)
    out: list[tuple[str, int]] = []
    if "data_partitioning" in stages:
        small = p.num_unseen_clients + p.num_tuning_clients
        images = p.num_seen_clients * per_seen + small * 2 * p.unseen_train_size
        out.append(("the client splits", images * image_bytes))
    if not set(stages) & {"federated_pretraining", "client_adaptation", "kid_evaluation"}:
        return out
    model = 4 * backbone_cost(fp.backbone).params
    if "federated_pretraining" in stages:
        copies = sum(p.num_seen_clients if PRETRAINING[m].personal_model else 1 for m in fp.methods)
        # the versioned models, and a checkpoint each (server, clients and optimizer-free states)
        out.append(("the pretrained models and checkpoints", 2 * copies * model))
    if "client_adaptation" in stages and "client_adaptation" in parameters:
        ad = AdaptationConfig.model_validate(parameters["client_adaptation"])
        full = sum(ADAPTATION[m].trains == "all" for m in ad.methods)  # a whole model each
        grid = len(ad.tuning.learning_rates) * len(ad.tuning.epochs) if p.num_tuning_clients else 0
        # adapted models (versioned, and cached) and the tuning grid's snapshots (cached)
        cached = p.num_unseen_clients + p.num_tuning_clients * grid if ad.cache_dir else 0
        out.append(
            (
                "the adapted models and the adaptation cache",
                (p.num_unseen_clients + cached) * full * model,
            )
        )
    if "kid_evaluation" in stages and "kid_evaluation" in parameters:
        kid = KIDConfig.model_validate(parameters["kid_evaluation"])
        if kid.cache_dir:
            jobs = (p.num_seen_clients + p.num_unseen_clients) * (len(fp.methods) + 6)
            per_job = kid.num_generated * (FEATURE_BYTES + image_bytes)
            out.append(("the KID sample cache", jobs * per_job))
        out.append(("the figures", FIGURE_BYTES * (p.num_seen_clients + p.num_unseen_clients + 30)))
    return out


def check_resources(
    parameters: dict[str, Any],
    stages: Collection[str],
    memory: Mapping[str, Limit],
    disk: Limit,
) -> None:
    """Raise one :class:`ResourceError` naming each part of the run that would not fit: the
    parameter that sets it, the estimate, the limit and the largest value that fits.
    ``memory``: the limit per device type (``cpu``, ``cuda``) of the needs."""
    problems = []
    for need in memory_needs(parameters, stages):
        limit = memory[need.device]
        usable = int(HEADROOM * limit.bytes)
        if need.bytes > usable:
            fits = need.fits(usable)
            allowed = f"at most {fits}" if fits >= 1 else "a smaller backbone"
            problems.append(
                f"parameter {need.key} = {shown(need.value)}: {need.what} needs about "
                f"{_fmt(need.bytes)}, more than {int(HEADROOM * 100)} % of the "
                f"{_fmt(limit.bytes)} of {limit.where} (allowed: {allowed})"
            )
    needs = disk_needs(parameters, stages)
    total = sum(b for _, b in needs)
    if total > HEADROOM * disk.bytes:
        parts = ", ".join(f"{what} {_fmt(b)}" for what, b in sorted(needs, key=lambda x: -x[1]))
        problems.append(
            f"the outputs need about {_fmt(total)} ({parts}), more than "
            f"{int(HEADROOM * 100)} % of the {_fmt(disk.bytes)} of {disk.where} (allowed: "
            "fewer clients, methods or samples, or a disk with more room)"
        )
    if problems:
        raise ResourceError("Would not fit: " + "; ".join(problems))


# ----------------------------------------------------------------------------- the machine


def available_memory() -> int:
    """Bytes of memory this process may still take: the system's available memory, or less
    when a container (cgroup v2) limits it."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit.isdigit():
            used = int((cgroup / "memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def memory_limit(device: str) -> Limit:
    """What ``device`` (``cpu`` or ``cuda``) has free: the memory available to this process, or
    the free memory of the current GPU."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return Limit(free, "free GPU memory")
    return Limit(available_memory(), "memory available")


def disk_limit(project: Path) -> Limit:
    """Free bytes on the disk of the project's ``data`` folder."""
    folder = project / "data" if (project / "data").is_dir() else project
    return Limit(shutil.disk_usage(folder).free, f"free disk at {folder}")


def check_machine(parameters: dict[str, Any], stages: Collection[str], project: Path) -> None:
    """:func:`check_resources` against this machine's free memory (of each device the run
    uses) and the free disk under ``project``."""
    devices = {need.device for need in memory_needs(parameters, stages)}
    memory = {device: memory_limit(device) for device in devices}
    check_resources(parameters, stages, memory, disk_limit(project))
