"""Validated parameters of every pipeline, in one place (pydantic; extra keys are rejected and
``validation.validate_params`` turns an error into one message that names the bad value).

One model per ``conf/<env>/parameters_<section>.yml`` section: ``PartitionConfig``
(``data_partitioning``), ``PretrainingConfig`` (``federated_pretraining``), ``AdaptationConfig``
(``client_adaptation``), ``KIDConfig`` (``kid_evaluation``), ``SweepConfig``
(``robustness_sweep``), ``GMMTheoryConfig`` (``gmm_theory``) and ``DatasetConfig`` (``dataset``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from spire_pipeline.spire.methods import (
    ADAPTATION,
    ADAPTATION_METHODS,
    PRETRAINING_METHODS,
    PROPOSED,
)


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
    #: conditional training only: each image's conditioning vector is replaced by the null (zero)
    #: embedding with this probability (0: never; what personalisation guidance needs)
    embedding_dropout: float = Field(0.0, ge=0, le=1)

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
    #: a method's own local steps per round (chosen on validation images); its rounds scale so
    #: that it makes the same number of local steps as the others (``rounds x local.steps``)
    method_local_steps: dict[Literal[PRETRAINING_METHODS], PositiveInt] = {}  # type: ignore[valid-type]
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

    @model_validator(mode="after")
    def _steps_to_scale(self) -> PretrainingConfig:
        if self.method_local_steps and self.local.steps is None:
            raise ValueError("method_local_steps needs local.steps (not local.epochs)")
        return self

    def for_method(self, method: str) -> PretrainingConfig:
        """The schedule ``method`` runs: its own local steps from ``method_local_steps`` and
        rounds scaled to the same total, ``round(rounds x local.steps / steps)`` (at least 1)."""
        steps = self.method_local_steps.get(method)
        if steps is None or steps == self.local.steps:
            return self.model_copy(update={"method_local_steps": {}})
        rounds = max(1, round(self.rounds * self.local.steps / steps))
        local = self.local.model_copy(update={"steps": steps})
        return self.model_copy(update={"rounds": rounds, "local": local, "method_local_steps": {}})


class ConditioningConfig(_Strict):
    """``kid_evaluation.conditioning``: the classifier that labels generated samples (trained on
    the seen clients' train splits, cached by content; ``spire.specificity``)."""

    enabled: bool = True
    #: seen-client train images it is trained on (a seeded subset), and passes over them
    max_images: PositiveInt = 6000
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 128


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
    #: forgetting: adaptations to the first N evaluation clients (None: all of them) ...
    forgetting_clients: PositiveInt | None = 4
    #: ... against this many independent draws of each pretrained model (the measure's noise)
    forgetting_draws: int = Field(3, ge=2)
    #: compute precision of the sampler's network passes (features and KID stay float32)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    #: conditioning strength of the samples KID draws (client specificity)
    conditioning: ConditioningConfig = ConditioningConfig()


EmbeddingInit = Literal["zeros", "mean_seen", "random", "retrieval"]


class TuningConfig(_Strict):
    """The grid every adaptation method is tuned on, on the tuning clients (the same cells for
    every method); ``embedding_inits``: the initialisations a conditional method chooses from."""

    learning_rates: list[PositiveFloat] = Field([1e-4, 1e-3, 1e-2, 1e-1], min_length=1)
    epochs: list[PositiveInt] = Field([2, 8], min_length=1)
    embedding_inits: list[EmbeddingInit] = Field(
        ["zeros", "mean_seen", "random", "retrieval"], min_length=1
    )
    #: personalisation guidance scales a conditional method chooses from, at its chosen cell
    #: (1: none; more than that needs a model pretrained with ``local.embedding_dropout``)
    guidance_scales: list[PositiveFloat] = Field([1.0], min_length=1)
    num_generated: PositiveInt = 50


class AdaptationConfig(_Strict):
    """Parameters of ``client_adaptation``.

    With tuning clients, each method's learning rate and epochs (and a conditional method's
    embedding initialisation) are chosen on them from ``tuning``; ``local.lr``, ``local.steps``
    and ``embedding_init`` are the values used when there are no tuning clients.
    """

    seed: int = 0
    methods: list[Literal[ADAPTATION_METHODS]] = Field(  # type: ignore[valid-type]
        list(ADAPTATION_METHODS), min_length=1
    )
    embedding_init: EmbeddingInit = "mean_seen"
    local: LocalTrainConfig = LocalTrainConfig(steps=200, lr=1e-3, embedding_lr=5e-2)
    tuning: TuningConfig = TuningConfig()
    lora_rank: PositiveInt = 4
    lora_alpha: PositiveFloat = 4.0
    device: str = "auto"
    #: finished adaptations (per method, client and settings; keyed by content), so that a run
    #: killed half-way redoes only the others (``spire.job_cache``); ``None``: off
    cache_dir: str | None = "data/06_models/adaptation_cache"


class SweepConfig(_Strict):
    """Parameters of ``robustness_sweep``."""

    seed: int = 0
    methods: list[Literal[ADAPTATION_METHODS]] = Field(  # type: ignore[valid-type]
        ["spire", "full_finetune", "lora", "bitfit"], min_length=1
    )
    learning_rates: list[PositiveFloat] = Field([1e-4, 1e-3, 1e-2, 1e-1], min_length=1)
    epochs: list[PositiveInt] = Field([1, 5, 20], min_length=1)
    clients: PositiveInt | None = 2
    num_generated: PositiveInt = 64


FrontierVariant = Literal["plain", "guidance", "retrieval"]


class FrontierPartition(_Strict):
    """One partition scheme of the frontier (``alpha``: Dirichlet only)."""

    scheme: Literal["dirichlet", "shards"]
    alpha: float | None = Field(None, gt=0)
    #: cross it with every ``unseen_train_sizes`` (else: the centre's size only)
    all_shots: bool = False

    @model_validator(mode="after")
    def _alpha_for_dirichlet(self) -> FrontierPartition:
        if (self.scheme == "dirichlet") != (self.alpha is not None):
            raise ValueError("give alpha for scheme dirichlet, and only for it")
        return self


class FrontierConfig(_Strict):
    """Parameters of ``personalization_frontier`` (``spire.frontier``): a one-factor-at-a-time
    grid around a centre setting (the first partition, ``centre_train_size``, the first
    ``num_seen_clients`` and the first ``compute``), shots crossed with every variant (and with
    the partitions marked ``all_shots``)."""

    seed: int = 0
    partitions: list[FrontierPartition] = Field(
        [FrontierPartition(scheme="dirichlet", alpha=0.3, all_shots=True)], min_length=1
    )
    unseen_train_sizes: list[PositiveInt] = Field([10, 30, 100, 300], min_length=1)
    centre_train_size: PositiveInt = 100
    #: pretraining compute in multiples of ``rounds`` (one run to the largest, snapshots kept)
    compute: list[PositiveInt] = Field([1, 2, 4], min_length=1)
    num_seen_clients: list[PositiveInt] = Field([10, 30, 100], min_length=1)
    variants: list[FrontierVariant] = Field(["plain", "guidance", "retrieval"], min_length=1)
    #: rounds of 1x pretraining compute (other pretraining settings: federated_pretraining)
    rounds: PositiveInt = 150
    #: clients per round, whatever the federation size (the same total pretraining compute)
    clients_per_round: PositiveInt = 3
    #: seen-client images (train + validation + test) shared evenly by the seen clients
    seen_images: PositiveInt = 20_000
    #: evaluation clients per partition (6: the fewest a 95 % interval of a median needs)
    evaluation_clients: int = Field(6, ge=6)
    #: tuning clients per partition (they choose the guidance scale)
    tuning_clients: PositiveInt = 4
    #: variant ``guidance``: embedding dropout in pretraining, then a guidance scale chosen
    #: on the tuning clients from ``guidance_scales``
    embedding_dropout: float = Field(0.1, gt=0, lt=1)
    guidance_scales: list[PositiveFloat] = Field([1.0, 1.5, 2.0, 3.0], min_length=1)
    methods: list[Literal[ADAPTATION_METHODS]] = [  # type: ignore[valid-type]
        PROPOSED,
        *(m for m in ADAPTATION_METHODS if m != PROPOSED and ADAPTATION[m].base is not None),
    ]
    #: adaptation learning rates and budgets: ``main_job`` (the newest adaptation_choices, chosen
    #: on the main job's tuning clients) or ``configured`` (client_adaptation's values)
    choices: Literal["main_job", "configured"] = "main_job"
    #: samples per (setting, client, method)
    num_generated: PositiveInt = 64
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_samples: PositiveInt = 10_000
    #: pretrained models per (partition, method, rounds), reused by the next run; None: off
    cache_dir: str | None = "data/06_models/frontier"

    @model_validator(mode="after")
    def _centre(self) -> FrontierConfig:
        if self.centre_train_size not in self.unseen_train_sizes:
            raise ValueError(
                f"centre_train_size ({self.centre_train_size}) must be one of unseen_train_sizes "
                f"{self.unseen_train_sizes}"
            )
        if PROPOSED not in self.methods or len(self.methods) < 2:
            raise ValueError(f"methods must hold {PROPOSED!r} and at least one baseline")
        if "plain" not in self.variants:
            raise ValueError("variants must hold 'plain' (every other factor uses it)")
        for name in ("unseen_train_sizes", "compute", "num_seen_clients", "variants"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat values, got {values}")
        return self


class DatasetConfig(_Strict):
    """Parameters of ``dataset``: what the raw images are, for figures and the report."""

    name: str = ""
    #: class names in label order (label k is ``class_names[k]``); empty: figures show numbers
    class_names: list[str] = []


# --------------------------------------------------------------------------- partitioning


class PartitionConfig(BaseModel):
    """Parameters of ``data_partitioning`` (see ``conf/base/parameters_data_partitioning.yml``)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    scheme: Literal["dirichlet", "shards"] = "shards"
    alpha: float = Field(0.3, gt=0)
    classes_per_client: PositiveInt = 2
    num_seen_clients: PositiveInt = 10
    num_unseen_clients: int = Field(4, ge=0)
    num_tuning_clients: int = Field(0, ge=0)
    seen_client_size: PositiveInt | None = 2000
    unseen_train_size: PositiveInt = 200
    test_fraction: float = Field(0.2, gt=0, lt=1)
    min_test_size: PositiveInt = 100
    validation_fraction: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _check_sizes(self) -> PartitionConfig:
        if self.seen_client_size is not None and self.seen_client_size <= self.min_test_size:
            raise ValueError(
                f"seen_client_size ({self.seen_client_size}) must exceed min_test_size "
                f"({self.min_test_size}) so that a train split remains"
            )
        return self


# --------------------------------------------------------------------------- theory (gmm.py)


class DDPMConfig(BaseModel):
    """DDPM loss (noise schedule, noise levels, quadrature) and gradient descent on ``b``."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(5.0, gt=0)
    iterations: PositiveInt = 40
    b_init: float = 0.0
    num_train_timesteps: PositiveInt = 1000
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    noise_levels: PositiveInt = 8
    noise_level_sampling: Literal["grid", "random"] = "grid"
    hermite_nodes: PositiveInt = 12

    @model_validator(mode="after")
    def _check(self) -> DDPMConfig:
        if self.beta_end < self.beta_start:
            raise ValueError(
                f"beta_end ({self.beta_end}) must be >= beta_start ({self.beta_start})"
            )
        if self.noise_levels > self.num_train_timesteps:
            raise ValueError(
                f"noise_levels ({self.noise_levels}) must be <= num_train_timesteps "
                f"({self.num_train_timesteps})"
            )
        return self


class MLEConfig(BaseModel):
    """Newton iterations for the maximum-likelihood mixing weight."""

    model_config = ConfigDict(extra="forbid")

    max_iterations: PositiveInt = 100
    tol: float = Field(1e-12, gt=0)


class GMMTheoryConfig(BaseModel):
    """Parameters of ``gmm_theory`` (see ``conf/base/parameters_gmm_theory.yml``)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0)
    replicates: int = Field(6, ge=2)
    dims: list[PositiveInt] = Field(default_factory=lambda: [4**k for k in range(7)], min_length=1)
    sample_sizes: list[Annotated[int, Field(ge=2)]] = Field(
        default_factory=lambda: [100, 316, 1000, 3162, 10000], min_length=1
    )
    pi: float = Field(0.3, gt=0, lt=1)
    mu_norm: float = Field(2.0, gt=0)
    sample_in_full_dimension: bool = True
    #: also estimate the means from the same samples (spectral; needs the full dimension): the
    #: contrast whose error does grow with the dimension
    estimated_means: bool = True
    confidence: float = Field(0.95, gt=0, lt=1)
    ddpm: DDPMConfig = Field(default_factory=DDPMConfig)
    mle: MLEConfig = Field(default_factory=MLEConfig)

    @field_validator("dims", "sample_sizes")
    @classmethod
    def _distinct(cls, values: list[int]) -> list[int]:
        if len(set(values)) != len(values):
            raise ValueError(f"values must not repeat, got {values}")
        return values


class ClaimsConfig(_Strict):
    """Parameters of ``reporting``: how the claims are decided (see ``spire.claims``)."""

    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_samples: PositiveInt = 10_000
    seed: int = 0
    #: claim 1: "matches" = not worse than a baseline by more than this share of its median KID
    noninferiority_margin: float = Field(0.1, ge=0)
    #: claim 5: the error's slope against log10(dimension), relative to the error's mean
    theory_dimension_margin: PositiveFloat = 0.5
    #: claim 5: the band the slope of log10(error) against log10(n) must lie in (-1/2 expected)
    theory_n_slope: tuple[float, float] = (-0.7, -0.3)

    @model_validator(mode="after")
    def _band(self) -> ClaimsConfig:
        lo, hi = self.theory_n_slope
        if not lo < -0.5 < hi:
            raise ValueError(f"theory_n_slope must contain -0.5, got {list(self.theory_n_slope)}")
        return self


# --------------------------------------------------------------------------- your own client


#: a client name is also a file name: letters, digits, ``_ . -``; no ``__`` (adapted keys use it)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class PersonalizeConfig(BaseModel):
    """Parameters of ``personalize``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("my_client", pattern=NAME_PATTERN)
    #: folder or .npz of the images; the catalog entry ``personal_images`` reads it
    images: str | None = None
    seed: int = 0
    validation_share: float = Field(0.2, gt=0, lt=1)
    min_images: PositiveInt = Field(10, ge=2)
    #: ``None``: the method's chosen value (``adaptation_choices``, else ``client_adaptation``)
    steps: PositiveInt | None = None
    lr: PositiveFloat | None = None
    embedding_init: EmbeddingInit | None = None
    #: held-out DDPM loss every this many steps (``None``: about 20 points)
    validation_every: PositiveInt | None = None
    #: noise draws per held-out image in each validation loss
    validation_repeats: PositiveInt = 4
    grid_samples: PositiveInt = 16
    device: str = "auto"

    @field_validator("name")
    @classmethod
    def _no_double_underscore(cls, name: str) -> str:
        if "__" in name:
            raise ValueError("must not contain '__'")
        return name


class GenerateConfig(BaseModel):
    """Parameters of ``generate``."""

    model_config = ConfigDict(extra="forbid")

    client: str | None = None
    #: a pretraining or adaptation method (``spire`` serves seen, adapted and personal clients)
    method: str = PROPOSED
    num: PositiveInt = 16
    seed: int = 0
    #: ``None``: the sampler and step count the model was trained with (its diffusion config)
    sampler: Literal["ddpm", "ddim", "dpmsolver++"] | None = None
    steps: PositiveInt | None = None
    columns: PositiveInt = 8
    batch_size: PositiveInt = 100
    device: str = "auto"
    #: personalisation guidance towards the client's embedding (1: none; see ``diffusion.guided``)
    guidance: float = Field(1.0, ge=0)


class ExportConfig(BaseModel):
    """Parameters of ``diffusers_export``."""

    model_config = ConfigDict(extra="forbid")

    #: the pretrained, client-conditioned method to export
    method: str = ADAPTATION[PROPOSED].base or PROPOSED
    #: also export the personal embeddings trained on this backbone
    personal: bool = True
