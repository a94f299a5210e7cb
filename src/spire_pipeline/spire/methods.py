"""What each method is, defined once: what it trains, shares, keeps on the client, starts from.

Both engines, adaptation, evaluation and the nodes read these specs; nothing else tests a
method's name. Adding a method means adding one spec here (and its name to the tables).

Pretraining (DESIGN, Baselines):

===============  ===========  ===============================  ==========================
method           conditional  kept on the client               sent to the server
===============  ===========  ===============================  ==========================
``spire``        yes          its embedding                    every backbone weight
``fedavg``       no           nothing                          every backbone weight
``fedper``       no           its output head                  every weight but the head
``local``        no           its whole model                  nothing (no federation)
``centralized``  yes          (pooled data: no clients)        nothing (no federation)
===============  ===========  ===============================  ==========================

Unseen-client adaptation: see :data:`ADAPTATION`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # annotations only: parameter schemas import this module, fast, without torch
    from torch import nn

#: parameter-name prefixes of the personal output head (FedPer, the ``head`` baseline)
HEAD_PREFIXES = ("conv_norm_out.", "conv_out.")


def head_names(names: Iterable[str]) -> list[str]:
    """The output-head parameters among ``names``."""
    return [n for n in names if n.startswith(HEAD_PREFIXES)]


def _parameter_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


@dataclass(frozen=True)
class PretrainingMethod:
    """A federated-pretraining method: what each client trains, keeps and sends."""

    name: str
    description: str
    #: conditions the backbone on a per-client embedding, trained and kept by the client
    conditional: bool = False
    #: the output head stays on the client (FedPer)
    personal_head: bool = False
    #: the whole model stays on the client; nothing is shared (``local``)
    personal_model: bool = False
    #: trains on the pooled data of every client at once (the ``centralized`` reference)
    pooled: bool = False

    @property
    def federated(self) -> bool:
        """Whether clients send backbone arrays to a server that averages them."""
        return not (self.personal_model or self.pooled)

    @property
    def per_client(self) -> bool:
        """Whether the model that serves a client depends on which client it is."""
        return self.conditional or self.personal_head or self.personal_model

    def shared_names(self, model: nn.Module) -> list[str]:
        """The backbone arrays a client sends to the server (none when not federated)."""
        if not self.federated:
            return []
        personal = set(self.personal_names(model))
        return [n for n in _parameter_names(model) if n not in personal]

    def personal_names(self, model: nn.Module) -> list[str]:
        """The model tensors a client keeps to itself between rounds."""
        if self.personal_model:
            return list(model.state_dict())
        if self.personal_head:
            return head_names(_parameter_names(model))
        return []


TrainedPart = Literal["embedding", "all", "lora", "bias", "head"]


@dataclass(frozen=True)
class AdaptationMethod:
    """An unseen-client adaptation method: what it trains and which pretrained model it starts
    from."""

    name: str
    description: str
    #: the pretrained method whose model it starts from (``None``: random initialisation)
    base: str | None
    #: what it trains: a new client embedding, every weight, LoRA adapters, biases, the head
    trains: TrainedPart

    @property
    def conditional(self) -> bool:
        """Whether it serves the client through a client embedding (the backbone stays frozen)."""
        return self.trains == "embedding"

    @property
    def uses_lora(self) -> bool:
        return self.trains == "lora"

    @property
    def shares_weights(self) -> bool:
        """Whether it changes weights that the seen clients are served with (so it may forget)."""
        return self.base is not None and not self.conditional

    def trainable_names(self, model: nn.Module) -> list[str]:
        """Names of the model tensors it trains (none when it trains only an embedding)."""
        names = _parameter_names(model)
        select = {
            "embedding": lambda: [],
            "all": lambda: names,
            "lora": lambda: [n for n in names if "lora_" in n],
            "bias": lambda: [n for n in names if n.endswith(".bias")],
            "head": lambda: head_names(names),
        }
        return select[self.trains]()


PRETRAINING: dict[str, PretrainingMethod] = {
    m.name: m
    for m in (
        PretrainingMethod(
            "spire",
            "backbone + one embedding per client; FedAvg on the backbone",
            conditional=True,
        ),
        PretrainingMethod("fedavg", "one unconditional model for everybody, FedAvg"),
        PretrainingMethod(
            "fedper", "FedAvg on everything but a personal output head", personal_head=True
        ),
        PretrainingMethod("local", "each client trains its own model alone", personal_model=True),
        PretrainingMethod(
            "centralized",
            "a conditional model on pooled data (an upper reference)",
            conditional=True,
            pooled=True,
        ),
    )
}

ADAPTATION: dict[str, AdaptationMethod] = {
    m.name: m
    for m in (
        AdaptationMethod("spire", "a new client embedding, backbone frozen", "spire", "embedding"),
        AdaptationMethod("full_finetune", "every backbone weight", "fedavg", "all"),
        AdaptationMethod("lora", "low-rank adapters (peft)", "fedavg", "lora"),
        AdaptationMethod("bitfit", "biases only", "fedavg", "bias"),
        AdaptationMethod("head", "the output head only (FedPer-style)", "fedavg", "head"),
        AdaptationMethod("scratch", "a new local model from random initialisation", None, "all"),
    )
}

#: the method the claims are about (every other method is a baseline or a reference)
PROPOSED = "spire"
PRETRAINING_METHODS: tuple[str, ...] = tuple(PRETRAINING)
ADAPTATION_METHODS: tuple[str, ...] = tuple(ADAPTATION)
