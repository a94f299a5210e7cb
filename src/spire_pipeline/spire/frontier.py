"""The unseen-client frontier: where claim 2 (SPIRE beats the baselines on unseen clients) holds.

A grid of settings, one factor at a time around a centre setting
(:meth:`~spire_pipeline.spire.config.FrontierConfig`): the partition scheme (shards, Dirichlet
alpha), the unseen clients' train size (shots), the pretraining compute, the number of seen
clients (same total compute: the same clients per round), and SPIRE variants (``plain``;
``guidance``: embedding dropout in pretraining and personalisation guidance at sampling, its
scale chosen on the tuning clients; ``retrieval``: the new embedding starts from the seen
embedding with the lowest DDPM loss on the client's train data).

Work is shared wherever a setting changes less than everything:

- one partition per (scheme, alpha, seen clients), drawn with the largest train size; a setting
  with fewer shots takes a seeded, nested subset of each unseen client's train split (the test
  splits, hence the KID references, stay the same);
- one pretraining run per (partition, embedding dropout) to the largest compute, with the
  smaller computes kept as snapshots (a snapshot after r rounds is exactly an r-round run:
  clients, batches and noise are seeded per round), cached on disk by content;
- the baselines, which start from ``fedavg``, are adapted and scored once per (partition,
  compute, shots) and shared by the SPIRE variants.

Every adaptation method uses the learning rate and budget chosen on tuning clients (the main
job's ``adaptation_choices``); a budget in epochs becomes the same number of steps at every
shot count (epochs x steps per epoch at the main job's train size). Evaluation clients are
adapted once and their test splits scored once. Per setting, :func:`frontier_table` gives the
paired median KID difference SPIRE minus the toughest baseline, with a bootstrap CI over the
evaluation clients and a verdict decided as claim 2's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from spire_pipeline.spire.adaptation import adapt, build_adapted
from spire_pipeline.spire.bundle import ModelBundle
from spire_pipeline.spire.cache_files import read_or_set_aside
from spire_pipeline.spire.config import (
    AdaptationConfig,
    FrontierConfig,
    FrontierPartition,
    KIDConfig,
    LocalTrainConfig,
    PartitionConfig,
    PretrainingConfig,
)
from spire_pipeline.spire.diffusion import to_model_space
from spire_pipeline.spire.evaluation import EvalJob, cached_features, evaluate
from spire_pipeline.spire.features import FeatureExtractor
from spire_pipeline.spire.federated import (
    ClientData,
    config_fingerprint,
    derive_seed,
    pretrain,
)
from spire_pipeline.spire.methods import ADAPTATION, PRETRAINING, PROPOSED
from spire_pipeline.spire.partition import ClientSplit, partition
from spire_pipeline.spire.specificity import (
    cached_classifier,
    conditioning_table,
    label_histogram,
)
from spire_pipeline.spire.stats import paired, three_way
from spire_pipeline.spire.tuning import chosen_settings
from spire_pipeline.spire.validation import validate_params

log = logging.getLogger(__name__)

TABLE_COLUMNS = [
    "setting",
    "scheme",
    "alpha",
    "unseen_train_size",
    "num_seen_clients",
    "variant",
    "gap",
    "ci_low",
    "ci_high",
    "verdict",
    "specificity",
    # beyond the columns: what the row compares and with what
    "compute",
    "factor",
    "baseline",
    "spire_kid",
    "baseline_kid",
    "specificity_baseline",
    "guidance",
    "n_clients",
]


@dataclass(frozen=True)
class Setting:
    """One cell of the frontier grid; ``factor``: what it varies from the centre."""

    scheme: str
    alpha: float | None
    unseen_train_size: int
    num_seen_clients: int
    compute: int
    variant: str
    factor: str

    @property
    def partition_key(self) -> tuple[str, float | None, int]:
        return (self.scheme, self.alpha, self.num_seen_clients)

    @property
    def scheme_label(self) -> str:
        return self.scheme if self.alpha is None else f"{self.scheme}-{self.alpha:g}"

    @property
    def name(self) -> str:
        return (
            f"{self.scheme_label}/shots-{self.unseen_train_size}/seen-{self.num_seen_clients}/"
            f"compute-{self.compute}x/{self.variant}"
        )

    @property
    def dropout(self) -> bool:
        """Whether SPIRE is pretrained with embedding dropout (the ``guidance`` variant)."""
        return self.variant == "guidance"

    @property
    def baseline_key(self) -> tuple:
        """What the baselines' numbers depend on (not the SPIRE variant)."""
        return (*self.partition_key, self.compute, self.unseen_train_size)


def grid(cfg: FrontierConfig) -> list[Setting]:
    """The settings: one factor at a time around the centre, shots crossed with every variant
    and with the partitions marked ``all_shots``; no setting twice."""
    centre_p: FrontierPartition = cfg.partitions[0]
    n0, c0, s0 = cfg.num_seen_clients[0], cfg.compute[0], cfg.centre_train_size

    def make(p: FrontierPartition, shots=s0, n=n0, c=c0, variant="plain", factor="centre"):
        return Setting(p.scheme, p.alpha, shots, n, c, variant, factor)

    out: list[Setting] = []
    for variant in cfg.variants:
        for shots in cfg.unseen_train_sizes:
            out.append(make(centre_p, shots=shots, variant=variant, factor="shots"))
    for p in cfg.partitions[1:]:
        for shots in cfg.unseen_train_sizes if p.all_shots else [s0]:
            out.append(make(p, shots=shots, factor="scheme"))
    out += [make(centre_p, c=c, factor="compute") for c in cfg.compute[1:]]
    out += [make(centre_p, n=n, factor="num_seen_clients") for n in cfg.num_seen_clients[1:]]
    unique: dict[str, Setting] = {}
    for s in out:
        unique.setdefault(s.name, s)
    centre = make(centre_p).name
    unique[centre] = replace(unique[centre], factor="centre")
    return list(unique.values())


# --------------------------------------------------------------------------- data


def partition_config(base: PartitionConfig, cfg: FrontierConfig, s: Setting) -> PartitionConfig:
    """The partition of a setting: the main job's, with its scheme, seen clients (sharing
    ``seen_images``), the frontier's evaluation and tuning clients, the largest train size."""
    update = {
        "seed": cfg.seed,
        "scheme": s.scheme,
        "alpha": s.alpha if s.alpha is not None else base.alpha,
        "num_seen_clients": s.num_seen_clients,
        "seen_client_size": cfg.seen_images // s.num_seen_clients,
        "num_unseen_clients": cfg.evaluation_clients,
        "num_tuning_clients": cfg.tuning_clients,
        "unseen_train_size": max(cfg.unseen_train_sizes),
    }
    return validate_params(
        PartitionConfig,
        base.model_dump() | update,
        "personalization_frontier (the partition of setting " + s.name + ")",
    )


def shots_subset(split: ClientSplit, shots: int, seed: int) -> ClientData:
    """The first ``shots`` of a seeded permutation of the client's train split (nested: fewer
    shots are a subset of more), in model space."""
    order = np.random.default_rng(derive_seed(seed, "shots", split.client)).permutation(
        len(split.train_images)
    )
    if shots > len(order):
        raise ValueError(f"{split.client} has {len(order)} train images, fewer than {shots}")
    return ClientData(split.client, to_model_space(split.train_images[np.sort(order[:shots])]))


@dataclass
class Partition:
    """The clients of one (scheme, alpha, seen clients) partition, by role."""

    seen: list[ClientSplit]
    tuning: list[ClientSplit]
    unseen: list[ClientSplit]


def make_partition(images: np.ndarray, labels: np.ndarray, pcfg: PartitionConfig) -> Partition:
    splits = partition(images, labels, pcfg)
    return Partition(
        [s for s in splits if s.role == "seen"],
        [s for s in splits if s.role == "tuning"],
        [s for s in splits if s.role == "unseen"],
    )


# --------------------------------------------------------------------------- pretraining


def pretraining_config(
    base: PretrainingConfig, cfg: FrontierConfig, s: Setting, methods: list[str]
) -> PretrainingConfig:
    """The main job's pretraining with the frontier's rounds (1x), clients per round and, for
    the ``guidance`` variant, embedding dropout; in process, no checkpoints."""
    local = base.local
    if s.dropout:
        local = local.model_copy(update={"embedding_dropout": cfg.embedding_dropout})
    n = s.num_seen_clients
    return base.model_copy(
        update={
            "seed": cfg.seed,
            "engine": "inprocess",
            "methods": methods,
            "rounds": cfg.rounds,
            "client_fraction": min(1.0, cfg.clients_per_round / n),
            "min_clients": min(base.min_clients, cfg.clients_per_round, n),
            "local": local,
            "resume": False,
        }
    )


def _cache_path(
    cache_dir: Path | None, method: str, cfg: PretrainingConfig, clients
) -> Path | None:
    if cache_dir is None:
        return None
    return cache_dir / f"{method}-{cfg.rounds}r-{config_fingerprint(method, cfg, clients)}"


def _save_bundle(bundle: ModelBundle, path: Path) -> None:
    from safetensors.torch import save_file

    tensors, meta = bundle.to_tensors()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path.with_suffix(".safetensors"))


def _load_bundle(path: Path | None) -> ModelBundle | None:
    if path is None or not path.with_suffix(".safetensors").exists():
        return None
    from safetensors import safe_open

    def read(file: Path) -> ModelBundle:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        return ModelBundle.from_tensors(tensors, meta)

    return read_or_set_aside(path.with_suffix(".safetensors"), read, "frontier model cache")


def pretrain_snapshots(
    method: str,
    cfg: PretrainingConfig,
    clients: Sequence[ClientData],
    computes: Sequence[int],
    cache_dir: Path | None,
    progress: bool = True,
) -> dict[int, ModelBundle]:
    """``method`` pretrained for ``c x cfg.rounds`` rounds for each ``c`` of ``computes``: one
    run to the largest, the others kept on the way; each cached by content (a run of r rounds
    and the snapshot after r rounds of a longer run are the same model, so they share a key)."""
    cfg = cfg.for_method(method)  # its own local steps, rounds to the same total
    rounds = {c: c * cfg.rounds for c in computes}
    cfgs = {c: cfg.model_copy(update={"rounds": r}) for c, r in rounds.items()}
    paths = {c: _cache_path(cache_dir, method, cfgs[c], clients) for c in computes}
    out = {c: b for c in computes if (b := _load_bundle(paths[c])) is not None}
    missing = [c for c in computes if c not in out]
    if not missing:
        log.info(
            "frontier: %s for %s rounds reused from %s", method, sorted(rounds.values()), cache_dir
        )
        return out
    wanted = {rounds[c]: c for c in missing}
    ids = [c.client for c in clients]

    def snapshot(server, states) -> None:
        c = wanted.get(server.round)
        if c is None:
            return
        out[c] = ModelBundle(
            method=method,
            backbone_cfg=cfg.backbone,
            diffusion_cfg=cfg.diffusion,
            backbone={k: v.detach().clone() for k, v in server.backbone.items()},
            embeddings={
                i: s.embedding.detach().clone()
                for i, s in zip(ids, states)
                if s.embedding is not None
            },
            info={"rounds": server.round, "clients": ids},
        )

    longest = cfgs[max(missing)]
    pretrain(method, longest, clients, checkpoint=None, progress=progress, callbacks=[snapshot])
    for c in missing:
        if paths[c] is not None:
            _save_bundle(out[c], paths[c])
    return out


# --------------------------------------------------------------------------- adaptation + KID


@dataclass(frozen=True)
class MethodPlan:
    """How a method adapts in the frontier: its config and budget (from the tuning choices)."""

    cfg: AdaptationConfig
    local: LocalTrainConfig


def method_plans(
    cfg: FrontierConfig,
    adaptation: AdaptationConfig,
    choices: pd.DataFrame,
    reference_train_size: int,
) -> dict[str, MethodPlan]:
    """Each method's chosen learning rate and budget; a budget in epochs becomes the steps it
    meant at the main job's train size (``reference_train_size``), the same at every shots."""
    missing = sorted(set(cfg.methods) - set(choices["method"]))
    if missing:
        raise ValueError(
            f"personalization_frontier: adaptation_choices has no row for {missing}; run the "
            "main job with these methods, or set personalization_frontier.choices: configured"
        )
    plans = {}
    base = adaptation.model_copy(update={"seed": cfg.seed})
    for method in cfg.methods:
        run_cfg, local = chosen_settings(base, choices, method)
        if local.epochs is not None:
            steps = local.epochs * math.ceil(reference_train_size / local.batch_size)
            local = local.model_copy(update={"steps": steps, "epochs": None})
        plans[method] = MethodPlan(run_cfg, local)
    return plans


def adapted_jobs(
    tag: str,
    methods: Sequence[str],
    pretrained: dict[str, ModelBundle],
    clients: Sequence[ClientData],
    plans: dict[str, MethodPlan],
    role: str,
    init: str | None = None,
    guidance: Sequence[float] = (1.0,),
    progress: bool = True,
) -> list[EvalJob]:
    """Adapt each method to each client (``init``: a conditional method's embedding
    initialisation instead of its chosen one) and one KID job per guidance scale."""
    jobs = []
    runs = [(m, c) for m in methods for c in clients]
    for method, client in tqdm(runs, desc=f"adapt {tag}", disable=not progress, leave=False):
        plan = plans[method]
        conditional = ADAPTATION[method].conditional
        run_cfg = plan.cfg
        if init is not None and conditional:
            run_cfg = run_cfg.model_copy(update={"embedding_init": init})
        a = adapt(method, pretrained, client, run_cfg, local=plan.local)
        for w in guidance if conditional else (1.0,):
            jobs.append(
                EvalJob(
                    client.client,
                    role,
                    method,
                    "adapted",
                    f"frontier/{tag}/{method}/{client.client}/w{w:g}",
                    client.client if conditional else None,
                    build=lambda b=a.bundle, c=client.client: build_adapted(b, pretrained, c),
                    bundle=a.bundle,
                    extra={
                        "guidance": w,
                        "embedding_init": run_cfg.embedding_init if conditional else "",
                    },
                    guidance=w,
                )
            )
    return jobs


@dataclass
class FrontierResult:
    """Per (setting, client, method) KID and conditioning; the guidance-scale tuning grid."""

    kid: pd.DataFrame
    guidance: pd.DataFrame


@dataclass
class Scorer:
    """KID of adapted models against clients' test splits, with their samples' conditioning
    strength (share in the client's classes, TV distance of the predicted label histogram)."""

    kid_cfg: KIDConfig
    extractor: FeatureExtractor
    extractor_label: str
    classifier: torch.nn.Module
    num_classes: int

    def __call__(self, jobs: list[EvalJob], splits: Sequence[ClientSplit]) -> pd.DataFrame:
        tests = {s.client: s.test_images[: self.kid_cfg.max_real] for s in splits}
        cache = Path(self.kid_cfg.cache_dir) if self.kid_cfg.cache_dir else None
        x = self.extractor
        feats = cached_features(tests, x, x.name, x.image_size, cache)
        samples: dict = {}
        table, _ = evaluate(
            jobs, feats, x, self.extractor_label, self.kid_cfg, False, samples=samples
        )
        if len(samples) != len(jobs):
            raise ValueError("frontier: score one job per (client, method) at a time")
        dists = {s.client: label_histogram(s.test_labels, self.num_classes) for s in splits}
        cond = conditioning_table(samples, dists, {}, self.classifier)
        cond = cond[["client", "method", "own_class_share", "tv_distance"]]
        return table.merge(cond, on=["client", "method"], how="left")


def labels_classifier(
    seen: Sequence[ClientSplit], kid_cfg: KIDConfig, num_classes: int, seed: int
) -> torch.nn.Module:
    """The conditioning-strength classifier, trained on (a seeded subset of) the seen clients'
    train splits, cached by content (as ``kid_evaluation``'s)."""
    images = np.concatenate([s.train_images for s in seen])
    labels = np.concatenate([s.train_labels for s in seen])
    pick = np.random.default_rng(derive_seed(seed, "classifier")).permutation(len(labels))
    pick = np.sort(pick[: kid_cfg.conditioning.max_images])
    return cached_classifier(
        images[pick],
        labels[pick],
        num_classes,
        derive_seed(seed, "classifier"),
        epochs=kid_cfg.conditioning.epochs,
        batch_size=kid_cfg.conditioning.batch_size,
        cache_dir=kid_cfg.cache_dir,
    )


def pretrained_models(
    settings: Sequence[Setting],
    parts: dict[tuple, Partition],
    cfg: FrontierConfig,
    base: PretrainingConfig,
    methods: Sequence[str],
    progress: bool,
) -> dict[tuple, dict[str, ModelBundle]]:
    """(partition key, dropout, compute) -> pretrained bundle per base method; the dropout
    runs train only the conditional methods (the others come from the plain run)."""
    bases = sorted({ADAPTATION[m].base for m in methods} - {None})
    conditional = [b for b in bases if PRETRAINING[b].conditional]
    needs: dict[tuple, set[int]] = {}
    for s in settings:
        needs.setdefault((s.partition_key, False), set()).add(s.compute)
        if s.dropout:
            needs.setdefault((s.partition_key, True), set()).add(s.compute)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
    runs = [
        (key, dropout, m) for (key, dropout) in needs for m in (conditional if dropout else bases)
    ]
    models: dict[tuple, dict[str, ModelBundle]] = {}
    for key, dropout, method in tqdm(runs, desc="frontier: pretrain", disable=not progress):
        probe = Setting(key[0], key[1], 0, key[2], 1, "guidance" if dropout else "plain", "")
        pcfg = pretraining_config(base, cfg, probe, [method])
        clients = [ClientData(s.client, to_model_space(s.train_images)) for s in parts[key].seen]
        computes = sorted(needs[(key, dropout)])
        log.info(
            "frontier: pretrain %s on %s (%d seen clients, dropout %s) for %s x %d rounds",
            method, key[0] if key[1] is None else f"{key[0]} {key[1]:g}", key[2],
            pcfg.local.embedding_dropout, computes, cfg.rounds,
        )  # fmt: skip
        snaps = pretrain_snapshots(method, pcfg, clients, computes, cache_dir, progress)
        for c, bundle in snaps.items():
            models.setdefault((key, dropout, c), {})[method] = bundle
    return models


def run_frontier(
    images: np.ndarray,
    labels: np.ndarray,
    cfg: FrontierConfig,
    partition_base: PartitionConfig,
    pretraining_base: PretrainingConfig,
    adaptation: AdaptationConfig,
    choices: pd.DataFrame,
    kid_cfg: KIDConfig,
    extractor: FeatureExtractor,
    extractor_label: str,
    progress: bool = True,
    score_on: Literal["unseen", "tuning"] = "unseen",
) -> FrontierResult:
    """Every setting of :func:`grid`: per evaluation client and method, KID and the samples'
    conditioning strength; and the guidance scales tried on the tuning clients.

    ``score_on="tuning"`` adapts and scores the tuning clients instead of the evaluation
    clients: the evidence a default may be chosen on (``benchmarks/frontier_defaults.py``)."""
    settings = grid(cfg)
    log.info("frontier: %d settings:\n%s", len(settings), "\n".join(s.name for s in settings))
    kid_cfg = kid_cfg.model_copy(update={"num_generated": cfg.num_generated, "seed": cfg.seed})
    plans = method_plans(cfg, adaptation, choices, partition_base.unseen_train_size)
    conditional = [m for m in cfg.methods if ADAPTATION[m].conditional]
    baselines = [m for m in cfg.methods if not ADAPTATION[m].conditional]
    labels = np.asarray(labels).astype(np.int64)
    num_classes = int(labels.max()) + 1
    parts: dict[tuple, Partition] = {}
    for s in settings:
        if s.partition_key not in parts:
            pcfg = partition_config(partition_base, cfg, s)
            parts[s.partition_key] = make_partition(images, labels, pcfg)
    centre = settings[0].partition_key
    classifier = labels_classifier(parts[centre].seen, kid_cfg, num_classes, cfg.seed)
    score = Scorer(kid_cfg, extractor, extractor_label, classifier, num_classes)
    models = pretrained_models(settings, parts, cfg, pretraining_base, cfg.methods, progress)

    def pretrained_for(s: Setting) -> dict[str, ModelBundle]:
        plain = models[(s.partition_key, False, s.compute)]
        return plain | models.get((s.partition_key, True, s.compute), {}) if s.dropout else plain

    # the guidance scale, per dropout model, on the tuning clients at the centre's shots
    scales: dict[tuple, float] = {}
    tuning_rows = []
    for s in settings:
        key = (s.partition_key, s.compute)
        if not s.dropout or key in scales:
            continue
        part = parts[s.partition_key]
        clients = [shots_subset(t, cfg.centre_train_size, cfg.seed) for t in part.tuning]
        tag = f"tuning/{s.scheme_label}/seen-{s.num_seen_clients}/compute-{s.compute}x"
        jobs = adapted_jobs(
            tag, conditional, pretrained_for(s), clients, plans, "tuning",
            guidance=cfg.guidance_scales, progress=progress,
        )  # fmt: skip
        tables = [
            score([j for j in jobs if j.guidance == w], part.tuning) for w in cfg.guidance_scales
        ]
        table = pd.concat(tables, ignore_index=True)
        medians = table.groupby("guidance")["kid_mean"].median()
        scales[key] = float(medians.idxmin())
        log.info("frontier: guidance scale %g chosen on the tuning clients (%s)", scales[key], tag)
        tuning_rows.append(
            table.assign(
                scheme=s.scheme,
                alpha=s.alpha,
                num_seen_clients=s.num_seen_clients,
                compute=s.compute,
                unseen_train_size=cfg.centre_train_size,
                chosen=table["guidance"] == scales[key],
            )
        )

    baseline_rows: dict[tuple, pd.DataFrame] = {}
    spire_rows: dict[tuple, pd.DataFrame] = {}
    rows = []
    for s in tqdm(settings, desc="frontier: settings", disable=not progress):
        part = parts[s.partition_key]
        targets = part.unseen if score_on == "unseen" else part.tuning
        clients = [shots_subset(u, s.unseen_train_size, cfg.seed) for u in targets]
        pretrained = pretrained_for(s)
        if s.baseline_key not in baseline_rows:
            tag = f"{s.scheme_label}/shots-{s.unseen_train_size}/seen-{s.num_seen_clients}/"
            tag += f"compute-{s.compute}x"
            jobs = adapted_jobs(
                tag, baselines, pretrained, clients, plans, score_on, progress=progress
            )
            baseline_rows[s.baseline_key] = score(jobs, targets)
        w = scales[(s.partition_key, s.compute)] if s.dropout else 1.0
        init = "retrieval" if s.variant == "retrieval" else None
        # a variant that changes nothing (retrieval when it is already the chosen start) is
        # the same computation: its rows are reused
        inits = tuple(init or plans[m].cfg.embedding_init for m in conditional)
        key = (s.baseline_key, s.dropout, inits, w)
        if key not in spire_rows:
            jobs = adapted_jobs(
                s.name, conditional, pretrained, clients, plans, score_on, init, (w,), progress
            )
            spire_rows[key] = score(jobs, targets)
        else:
            log.info("frontier: %s is the same computation as an earlier setting", s.name)
        table = pd.concat([baseline_rows[s.baseline_key], spire_rows[key]])
        rows.append(
            table.assign(
                setting=s.name,
                scheme=s.scheme,
                alpha=s.alpha,
                unseen_train_size=s.unseen_train_size,
                num_seen_clients=s.num_seen_clients,
                compute=s.compute,
                variant=s.variant,
                factor=s.factor,
            )
        )
    kid = pd.concat(rows, ignore_index=True)
    first = ["setting", "scheme", "alpha", "unseen_train_size", "num_seen_clients", "compute"]
    first += ["variant", "factor", "client", "method"]
    kid = kid[first + [c for c in kid.columns if c not in first]]
    guidance = pd.concat(tuning_rows, ignore_index=True) if tuning_rows else pd.DataFrame()
    return FrontierResult(kid, guidance)


def frontier_table(
    kid: pd.DataFrame, confidence: float = 0.95, bootstrap: int = 10_000, seed: int = 0
) -> pd.DataFrame:
    """One row per setting: SPIRE minus its toughest baseline, paired over the evaluation
    clients (median of the per-client KID differences, bootstrap CI), and the verdict of claim
    2 (holds against every baseline: each CI below 0; fails: some CI above 0).

    The toughest baseline is the one whose CI reaches highest (as the claims table shows it).
    ``specificity``: 1 - the median TV distance between the samples' predicted label histogram
    and the client's (1: the client's label mix exactly; the same for the baseline).
    """
    rows = []
    for name, sub in kid.groupby("setting", sort=False):
        per = {m: dict(zip(g["client"], g["kid_mean"])) for m, g in sub.groupby("method")}
        tv = sub.groupby("method")["tv_distance"].median()
        if PROPOSED not in per:
            raise ValueError(f"frontier: setting {name} has no {PROPOSED} rows")
        comparisons = []
        for b in sorted(m for m in per if m != PROPOSED):
            iv = paired(per[PROPOSED], per[b], confidence, bootstrap, seed)
            verdict = three_way(iv.below(0.0) or iv.ci_high == 0.0, iv.above(0.0))
            comparisons.append((iv, b, verdict))
        verdicts = {v for _, _, v in comparisons}
        overall = three_way(verdicts == {"holds"}, "fails" in verdicts)
        iv, b, _ = max(comparisons, key=lambda r: (r[0].ci_high, r[0].effect))
        first = sub.iloc[0]
        spire = sub[sub["method"] == PROPOSED]
        rows.append(
            {
                "setting": name,
                "scheme": first["scheme"],
                "alpha": first["alpha"],
                "unseen_train_size": int(first["unseen_train_size"]),
                "num_seen_clients": int(first["num_seen_clients"]),
                "variant": first["variant"],
                "gap": iv.effect,
                "ci_low": iv.ci_low,
                "ci_high": iv.ci_high,
                "verdict": overall,
                "specificity": 1.0 - float(tv[PROPOSED]),
                "compute": int(first["compute"]),
                "factor": first["factor"],
                "baseline": b,
                "spire_kid": float(np.median(list(per[PROPOSED].values()))),
                "baseline_kid": float(np.median(list(per[b].values()))),
                "specificity_baseline": 1.0 - float(tv[b]),
                "guidance": float(spire["guidance"].iloc[0]),
                "n_clients": iv.n,
            }
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
