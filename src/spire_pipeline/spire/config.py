"""Validated parameters of the SPIRE pipelines (pydantic; one message names a bad value)."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from spire_pipeline.spire.methods import ADAPTATION_METHODS, PRETRAINING_METHODS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneConfig(_Strict):
    """The shared UNet (diffusers ``UNet2DModel``); the embedding width is 4 x the first width."""

    block_out_channels: list[PositiveInt] = [16, 32]
    layers_per_block: PositiveInt = 1
    attention: bool = False
    norm_num_groups: PositiveInt = 8
    image_size: PositiveInt = 28
    channels: PositiveInt = 1

    @model_validator(mode="after")
    def _groups_divide(self) -> BackboneConfig:
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"norm_num_groups ({self.norm_num_groups}) must divide every block width, not {bad}"
            )
        return self


class DiffusionConfig(_Strict):
    """Noise schedule (diffusers ``DDPMScheduler``) and sampler."""

    num_train_timesteps: PositiveInt = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    sampler: Literal["ddpm", "ddim", "dpmsolver++"] = "ddim"
    sampler_steps: PositiveInt = 25


class LocalTrainConfig(_Strict):
    """One client's local training budget (shared by every method)."""

    steps: PositiveInt | None = 20
    epochs: PositiveInt | None = None
    batch_size: PositiveInt = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: PositiveFloat = 2e-3
    embedding_lr: PositiveFloat = 5e-2
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: PositiveFloat | None = 1.0

    @model_validator(mode="after")
    def _one_budget(self) -> LocalTrainConfig:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps and epochs")
        return self


class TLSConfig(_Strict):
    """Certificates of a SuperLink that serves TLS (paths; PEM files)."""

    ca_certfile: str  # the CA certificate SuperNodes and ``flwr`` verify the SuperLink with
    certfile: str  # the SuperLink's certificate
    keyfile: str  # the SuperLink's private key


class FlowerConfig(_Strict):
    """The ``flower`` engine: Flower's simulation runtime, or a SuperLink and SuperNodes.

    The number of clients is the number of seen clients: one virtual client each in simulation,
    one SuperNode each in deployment.
    """

    runtime: Literal["simulation", "deployment"] = "simulation"
    #: CPUs of one virtual client (simulation; Ray runs cores // num_cpus clients at a time)
    num_cpus: PositiveInt = 1
    #: GPU share of one virtual client (simulation; 0.5: two clients share a GPU)
    num_gpus: float = Field(0.0, ge=0)
    #: address the SuperLink binds (deployment: ``0.0.0.0`` to accept SuperNodes of other hosts)
    host: str = "127.0.0.1"
    #: the SuperLink's HTTP port (Fleet, Control and Runtime API); ``None``: a free port
    port: int | None = Field(None, ge=1, le=65535)
    #: start one ``flower-supernode`` per seen client on this machine; ``false``: wait for
    #: SuperNodes started elsewhere (docs/flower.md)
    start_supernodes: bool = True
    #: first Runtime-API port of the local SuperNodes (one each); ``None``: free ports
    supernode_port: int | None = Field(None, ge=1, le=65535)
    #: TLS for the SuperLink (deployment); ``None``: ``--insecure`` (loopback only)
    tls: TLSConfig | None = None
    #: seconds for the SuperLink to start and every client to connect
    connect_timeout: PositiveFloat = 120.0
    #: seconds a round waits at most for the selected clients' replies
    round_timeout: PositiveFloat = 600.0
    #: once a reply is in, seconds to wait at most for the others, or as long as the first
    #: reply took if that is longer (``None``: until round_timeout)
    straggler_timeout: PositiveFloat | None = 120.0
    #: Flower app, run configurations, client data copies and logs
    workdir: str = "tmp/flower"
    #: each local client's own folder (its embedding, head or model between runs, for resume)
    client_storage: str = "data/06_models/checkpoints/flower-clients"
    #: a folder where each client describes every message it sends (``<client>.jsonl``:
    #: record names, array names, shapes and sizes, scalar values); ``None``: off
    audit_dir: str | None = None

    @model_validator(mode="after")
    def _tls_only_in_deployment(self) -> FlowerConfig:
        if self.tls is not None and self.runtime != "deployment":
            raise ValueError("tls applies to runtime deployment only")
        if not self.start_supernodes and self.runtime != "deployment":
            raise ValueError("start_supernodes: false applies to runtime deployment only")
        return self


class PretrainingConfig(_Strict):
    """Parameters of ``federated_pretraining``."""

    seed: int = 0
    #: ``inprocess``: the rounds in this process; ``flower``: Flower ServerApp and ClientApps
    engine: Literal["inprocess", "flower"] = "inprocess"
    flower: FlowerConfig = FlowerConfig()
    methods: list[Literal[PRETRAINING_METHODS]] = ["spire", "fedavg"]  # type: ignore[valid-type]
    backbone: BackboneConfig = BackboneConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    rounds: PositiveInt = 20
    client_fraction: float = Field(0.5, gt=0, le=1)
    min_clients: PositiveInt = 2
    local: LocalTrainConfig = LocalTrainConfig()
    embedding_init: Literal["random", "zeros"] = "random"
    embedding_init_scale: PositiveFloat = 1.0
    resume: bool = True
    checkpoint_dir: str = "data/06_models/checkpoints"
    grid_samples_per_client: PositiveInt = 8
    threads: PositiveInt | None = None
    device: str = "auto"

    @field_validator("methods")
    @classmethod
    def _methods_unique(cls, methods: list[str]) -> list[str]:
        if len(set(methods)) != len(methods) or not methods:
            raise ValueError(f"must be a non-empty list without repeats, got {methods}")
        return methods


class KIDConfig(_Strict):
    """Parameters of ``kid_evaluation``."""

    seed: int = 0
    extractor: Literal["efficientnet_lite0", "inception"] = "efficientnet_lite0"
    image_size: PositiveInt | None = None
    num_generated: PositiveInt = 100
    max_real: PositiveInt = 400
    num_subsets: PositiveInt = 50
    max_subset_size: PositiveInt = 1000
    sampler_steps: PositiveInt | None = None
    grid_samples: PositiveInt = 8
    batch_size: PositiveInt = 100
    cache_dir: str | None = "data/04_feature/kid_cache"
    device: str = "auto"


class AdaptationConfig(_Strict):
    """Parameters of ``client_adaptation``."""

    seed: int = 0
    methods: list[Literal[ADAPTATION_METHODS]] = list(ADAPTATION_METHODS)  # type: ignore[valid-type]
    embedding_init: Literal["zeros", "mean_seen", "random"] = "mean_seen"
    local: LocalTrainConfig = LocalTrainConfig(steps=200, lr=1e-3, embedding_lr=5e-2)
    lora_rank: PositiveInt = 4
    lora_alpha: PositiveFloat = 4.0
    device: str = "auto"


class SweepConfig(_Strict):
    """Parameters of ``robustness_sweep``."""

    seed: int = 0
    methods: list[Literal[ADAPTATION_METHODS]] = ["spire", "full_finetune", "lora", "bitfit"]  # type: ignore[valid-type]
    learning_rates: list[PositiveFloat] = [1e-4, 1e-3, 1e-2, 1e-1]
    epochs: list[PositiveInt] = [1, 5, 20]
    clients: PositiveInt | None = 2
    num_generated: PositiveInt = 64
