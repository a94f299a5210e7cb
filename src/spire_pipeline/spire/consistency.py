"""Checks across parameter sections, and against the raw data: combinations that every section
accepts alone but that cannot run together.

:func:`check_consistency` runs after each section has passed its own schema
(:mod:`.config`), before any node; it raises one :class:`~.validation.ParameterError` whose
message names each culprit as ``parameter <section>.<key> = <value>: <problem> (allowed:
...)``. Checks that concern one pipeline apply only when that pipeline runs (``stages``):
``num_unseen_clients: 0`` is fine for a pretraining-only run, not for adaptation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from spire_pipeline.spire.config import (
    AdaptationConfig,
    ExportConfig,
    GenerateConfig,
    KIDConfig,
    PartitionConfig,
    PretrainingConfig,
    SweepConfig,
)
from spire_pipeline.spire.methods import ADAPTATION, PRETRAINING
from spire_pipeline.spire.validation import ParameterError, shown


@dataclass(frozen=True)
class Sections:
    """The validated sections the checks read; ``None`` where a section is absent (a check
    over an absent section is skipped: only what is configured is checked)."""

    partition: PartitionConfig | None
    pretraining: PretrainingConfig | None
    adaptation: AdaptationConfig | None
    kid: KIDConfig | None
    sweep: SweepConfig | None
    generate: GenerateConfig | None
    export: ExportConfig | None

    @classmethod
    def of(cls, parameters: dict[str, Any]) -> Sections:
        def get(model, section: str):
            if section not in parameters:
                return None
            return model.model_validate(parameters[section] or {})

        return cls(
            get(PartitionConfig, "data_partitioning"),
            get(PretrainingConfig, "federated_pretraining"),
            get(AdaptationConfig, "client_adaptation"),
            get(KIDConfig, "kid_evaluation"),
            get(SweepConfig, "robustness_sweep"),
            get(GenerateConfig, "generate"),
            get(ExportConfig, "diffusers_export"),
        )


@dataclass(frozen=True)
class RawData:
    """What the raw image set holds, when it can be read before the run (labels are small)."""

    #: the pooled labels (train then test), as ``data_partitioning`` pools them
    labels: np.ndarray
    #: (height, width, channels) of one image
    image_shape: tuple[int, int, int]
    #: where they come from (for messages)
    source: str = "raw_train + raw_test"


def problem(name: str, value: Any, what: str, allowed: str) -> str:
    """One culprit: ``parameter <name> = <value>: <what> (allowed: <allowed>)``."""
    return f"parameter {name} = {shown(value)}: {what} (allowed: {allowed})"


Check = Callable[[Sections, Collection[str], "RawData | None"], Iterable[str]]
_CHECKS: list[Check] = []


def _check(func: Check) -> Check:
    _CHECKS.append(func)
    return func


def _runs(stages: Collection[str], *names: str) -> bool:
    return any(n in stages for n in names)


# ----------------------------------------------------------------------------- partitioning


def seen_split_sizes(cfg: PartitionConfig, n: int) -> tuple[int, int, int]:
    """(train, validation, test) images of a seen client of ``n`` images (as the partitioner
    splits it)."""
    n_test = max(cfg.min_test_size, math.ceil(cfg.test_fraction * n))
    n_val = round(cfg.validation_fraction * (n - n_test))
    return n - n_test - n_val, n_val, n_test


@_check
def _seen_train_split(s: Sections, stages, data) -> Iterable[str]:
    cfg = s.partition
    if cfg is None or cfg.seen_client_size is None:
        return
    train, val, test = seen_split_sizes(cfg, cfg.seen_client_size)
    if train < 1:
        yield problem(
            "data_partitioning.test_fraction",
            cfg.test_fraction,
            f"a seen client of {cfg.seen_client_size} images (seen_client_size) keeps {test} for "
            f"test (test_fraction, min_test_size {cfg.min_test_size}) and {val} for validation "
            f"(validation_fraction {cfg.validation_fraction}): no train image is left",
            "test and validation shares that leave at least one train image",
        )


@_check
def _partition_fits_the_data(s: Sections, stages, data) -> Iterable[str]:
    """A dry run of the partitioner on the labels alone (the same seed, so the same draw)."""
    if s.partition is None or data is None or not _runs(stages, "data_partitioning"):
        return
    from spire_pipeline.spire.partition import partition  # numpy only; imported when needed

    n = len(data.labels)
    dummy = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (n, 1, 1))  # no image is read
    try:
        splits = partition(dummy, data.labels, s.partition)
    except ParameterError as exc:
        yield str(exc).removeprefix("Invalid parameters: ")
        return
    if s.partition.seen_client_size is None:  # sizes known only now
        seen = [sp for sp in splits if sp.role == "seen"]
        if seen and min(len(sp.train_labels) for sp in seen) < 1:
            yield problem(
                "data_partitioning.test_fraction",
                s.partition.test_fraction,
                "the seen clients' shares of the data leave no train image",
                "smaller test and validation shares, or fewer seen clients",
            )


@_check
def _image_shape(s: Sections, stages, data) -> Iterable[str]:
    if s.pretraining is None:
        return
    bb = s.pretraining.backbone
    levels = len(bb.block_out_channels) - 1
    if bb.image_size % 2**levels:
        yield problem(
            "federated_pretraining.backbone.image_size",
            bb.image_size,
            f"the UNet halves it {levels} times (block_out_channels "
            f"{bb.block_out_channels}), which needs a multiple of {2**levels}",
            f"a multiple of {2**levels}, or fewer block_out_channels",
        )
    if data is None or not _runs(stages, "federated_pretraining"):
        return
    h, w, c = data.image_shape
    if (bb.image_size, bb.image_size) != (h, w):
        yield problem(
            "federated_pretraining.backbone.image_size",
            bb.image_size,
            f"the images of {data.source} are {h} x {w}",
            f"{h}" if h == w else "square images",
        )
    if bb.channels != c:
        yield problem(
            "federated_pretraining.backbone.channels",
            bb.channels,
            f"the images of {data.source} have {c} channel(s)",
            str(c),
        )


# ----------------------------------------------------------------------------- pretraining


@_check
def _clients_per_round(s: Sections, stages, data) -> Iterable[str]:
    if s.pretraining is None or s.partition is None:
        return
    fp, n = s.pretraining, s.partition.num_seen_clients
    if fp.min_clients > n:
        per_round = min(n, max(fp.min_clients, round(fp.client_fraction * n)))
        yield problem(
            "federated_pretraining.min_clients",
            fp.min_clients,
            f"more than the {n} seen clients (data_partitioning.num_seen_clients): a round "
            f"selects at most {per_round} (client_fraction {fp.client_fraction} x {n}, at "
            "least min_clients), so no round could reach min_clients",
            f"1 to {n}, or more seen clients",
        )


def _steps_problem(name: str, steps: int | None, timesteps: int, where: str) -> Iterable[str]:
    if steps is not None and steps > timesteps:
        yield problem(
            name,
            steps,
            f"more sampler steps than the {timesteps} training timesteps ({where})",
            f"1 to {timesteps}",
        )


@_check
def _sampler_steps(s: Sections, stages, data) -> Iterable[str]:
    if s.pretraining is None:
        return
    diff = s.pretraining.diffusion
    where = "federated_pretraining.diffusion.num_train_timesteps"
    yield from _steps_problem(
        "federated_pretraining.diffusion.sampler_steps",
        diff.sampler_steps,
        diff.num_train_timesteps,
        where,
    )
    if s.kid is not None:
        yield from _steps_problem(
            "kid_evaluation.sampler_steps", s.kid.sampler_steps, diff.num_train_timesteps, where
        )
    if s.generate is not None and _runs(stages, "generate"):
        yield from _steps_problem(
            "generate.steps", s.generate.steps, diff.num_train_timesteps, where
        )


# ----------------------------------------------------------------------------- methods


def _bases_missing(section: str, methods: list[str], pretrained: list[str]) -> Iterable[str]:
    needs: dict[str, list[str]] = {}
    for m in methods:
        base = ADAPTATION[m].base
        if base is not None and base not in pretrained:
            needs.setdefault(base, []).append(m)
    if needs:
        ok = [m for m, spec in ADAPTATION.items() if spec.base in (None, *pretrained)]
        what = "; ".join(
            f"{', '.join(ms)} start{'s' * (len(ms) == 1)} from the pretrained {b!r} model"
            for b, ms in needs.items()
        )
        yield problem(
            f"{section}.methods",
            methods,
            f"{what}, which federated_pretraining.methods = {pretrained} does not train",
            f"{', '.join(ok)}; or add {', '.join(map(repr, needs))} to "
            "federated_pretraining.methods",
        )


@_check
def _adaptation_bases(s: Sections, stages, data) -> Iterable[str]:
    if s.pretraining is None:
        return
    pretrained = list(s.pretraining.methods)
    if s.adaptation is not None and _runs(stages, "client_adaptation", "kid_evaluation"):
        yield from _bases_missing("client_adaptation", s.adaptation.methods, pretrained)
    if s.sweep is not None and _runs(stages, "robustness_sweep"):
        yield from _bases_missing("robustness_sweep", s.sweep.methods, pretrained)


@_check
def _named_methods(s: Sections, stages, data) -> Iterable[str]:
    known = [*PRETRAINING, *(m for m in ADAPTATION if m not in PRETRAINING)]
    if s.generate is not None and _runs(stages, "generate") and s.generate.method not in known:
        yield problem("generate.method", s.generate.method, "unknown method", ", ".join(known))
    conditional = [m for m, spec in PRETRAINING.items() if spec.conditional]
    if (
        s.export is not None
        and _runs(stages, "diffusers_export")
        and s.export.method not in conditional
    ):
        yield problem(
            "diffusers_export.method",
            s.export.method,
            "not a client-conditioned pretraining method",
            ", ".join(conditional),
        )


# ----------------------------------------------------------------------------- client roles


@_check
def _evaluation_clients(s: Sections, stages, data) -> Iterable[str]:
    p = s.partition
    if p is None:
        return
    if p.num_unseen_clients == 0 and _runs(stages, "client_adaptation", "kid_evaluation"):
        yield problem(
            "data_partitioning.num_unseen_clients",
            0,
            f"no evaluation clients to adapt and report on (num_tuning_clients = "
            f"{p.num_tuning_clients} only choose hyperparameters)",
            "at least 1 when client_adaptation or kid_evaluation runs",
        )
    forgetting = s.kid.forgetting_clients if s.kid is not None else None
    if (
        forgetting is not None
        and p.num_unseen_clients
        and forgetting > p.num_unseen_clients
        and _runs(stages, "kid_evaluation")
    ):
        yield problem(
            "kid_evaluation.forgetting_clients",
            forgetting,
            f"more than the {p.num_unseen_clients} evaluation clients "
            "(data_partitioning.num_unseen_clients)",
            f"1 to {p.num_unseen_clients}, or null (all of them)",
        )


@_check
def _sweep_clients(s: Sections, stages, data) -> Iterable[str]:
    if s.partition is None or not _runs(stages, "robustness_sweep"):
        return
    tuning = s.partition.num_tuning_clients
    if tuning == 0:
        yield problem(
            "data_partitioning.num_tuning_clients",
            0,
            "robustness_sweep runs on the tuning clients, and there would be none",
            "at least 1 when robustness_sweep runs",
        )
    elif s.sweep is not None and s.sweep.clients is not None and s.sweep.clients > tuning:
        yield problem(
            "robustness_sweep.clients",
            s.sweep.clients,
            f"more than the {tuning} tuning clients (data_partitioning.num_tuning_clients)",
            f"1 to {tuning}, or null (all of them)",
        )


# ----------------------------------------------------------------------------- entry point


def consistency_problems(
    parameters: dict[str, Any],
    stages: Collection[str],
    data: RawData | None = None,
) -> list[str]:
    """Every inconsistency of ``parameters`` (already valid section by section) for a run of
    the pipelines ``stages``, and against ``data`` when given."""
    sections = Sections.of(parameters)
    return [p for check in _CHECKS for p in check(sections, stages, data)]


def check_consistency(
    parameters: dict[str, Any],
    stages: Collection[str],
    data: RawData | None = None,
) -> None:
    """Raise one ``ParameterError`` naming every inconsistency (see
    :func:`consistency_problems`)."""
    problems = consistency_problems(parameters, stages, data)
    if problems:
        raise ParameterError("Invalid parameters: " + "; ".join(problems))
