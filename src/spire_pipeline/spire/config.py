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
    #: compute precision of the network (``spire.precision``); weights and loss stay float32
    precision: Literal["fp32", "bf16", "auto"] = "fp32"

    @model_validator(mode="after")
    def _one_budget(self) -> LocalTrainConfig:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps and epochs")
        return self


class PretrainingConfig(_Strict):
    """Parameters of ``federated_pretraining``."""

    seed: int = 0
    engine: Literal["inprocess"] = "inprocess"  # the only engine so far
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
    #: compute precision of the sampler's network passes (features and KID stay float32)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"


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
