"""The run report: a markdown file that stands alone, with its figures next to it.

:func:`build_report` takes the run's tables, figures (PNG bytes) and metadata and returns the
report folder's files, ``{"report.md": text, "figures/<name>.png": bytes, ...}``. Tables are
rendered with whatever columns they have; known column names and values are put into words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from spire_pipeline.spire.claims import markdown_table
from spire_pipeline.spire.plots.style import PHASE_TITLES, extractor_words

#: column name -> header in words (unknown columns keep their name, underscores as spaces)
COLUMN_NAMES = {
    "n_train": "train images",
    "n_test": "test images",
    "final_loss": "final mean loss",
    "seconds_per_round": "seconds per round",
    "bytes_up_per_round": "bytes sent up per round",
    "clients": "clients",
    "n_clients": "clients",
    "kid_median": "median KID",
    "kid_mean": "mean KID",
    "kid_worst": "worst KID",
    "kid_best": "best KID",
    "kid_std": "KID std over subsets",
    "trained_params": "parameters trained",
    "trained_pct": "% of weights trained",
    "seconds_median": "median seconds to adapt",
    "base": "starts from",
    "seen_kid_before": "seen population's KID before (mean of redraws)",
    "seen_kid_after": "seen population's KID after (median)",
    "change": "median change of the seen population's KID",
    "noise_sd": "KID noise (sd of redraws)",
    "noise_band": "noise band (+-)",
    "beyond_noise": "forgets beyond noise",
    "within_noise": "within noise",
    "before_draws": "redraws before",
    "adaptations": "evaluation clients adapted to",
    "verdict": "verdict",
    "effect": "effect (SPIRE - baseline)",
    "baseline": "baseline",
    "threshold": "threshold",
    "tuning_score": "tuning KID (median over tuning clients)",
    "tuning_clients": "tuning clients",
    "embedding_init": "embedding starts from",
    "source": "chosen by",
    "val_loss": "validation loss",
    "own_class_share": "share in own classes (mean)",
    "tv_median": "TV distance to the client's labels (median)",
    "axis": "error against",
    "ci_low": "CI low",
    "ci_high": "CI high",
    "stderr": "std. error",
    "points": "points fitted",
    "n_half": "images per half",
    "subset_size": "KID subset size",
    "holds": "holds",
}
#: cell value -> words (error columns of the theory, fit axes, KID phases)
VALUE_NAMES = {
    "err_ddpm_true": "error of DDPM π vs true π",
    "err_mle_true": "error of maximum-likelihood π vs true π",
    "err_label_true": "error of label fraction vs true π",
    "err_ddpm_mle": "DDPM π vs maximum-likelihood π",
    "dim": "log10 dimension",
    "n": "log10 sample size",
    **PHASE_TITLES,
}
#: parameters shown in the report (dotted keys; those absent are skipped)
MAIN_PARAMETERS = (
    "data_partitioning.scheme",
    "data_partitioning.num_seen_clients",
    "data_partitioning.num_tuning_clients",
    "data_partitioning.num_unseen_clients",
    "data_partitioning.validation_fraction",
    "data_partitioning.classes_per_client",
    "data_partitioning.seed",
    "federated_pretraining.methods",
    "federated_pretraining.rounds",
    "federated_pretraining.client_fraction",
    "federated_pretraining.local.steps",
    "federated_pretraining.method_local_steps",
    "federated_pretraining.backbone.block_out_channels",
    "federated_pretraining.seed",
    "client_adaptation.methods",
    "client_adaptation.tuning.learning_rates",
    "client_adaptation.tuning.epochs",
    "client_adaptation.tuning.embedding_inits",
    "client_adaptation.local.batch_size",
    "client_adaptation.seed",
    "kid_evaluation.extractor",
    "kid_evaluation.image_size",
    "kid_evaluation.num_generated",
    "kid_evaluation.max_real",
    "kid_evaluation.num_subsets",
    "kid_evaluation.max_subset_size",
    "kid_evaluation.seed",
    "gmm_theory.dims",
    "gmm_theory.sample_sizes",
    "gmm_theory.replicates",
)
#: run metadata key -> label, in the order shown
METADATA_LABELS = {
    "date": "date (UTC)",
    "env": "configuration environment",
    "pipeline": "pipeline",
    "command": "command",
    "git_commit": "git commit",
    "mlflow_run_id": "MLflow run id",
    "mlflow_experiment": "MLflow experiment",
    "save_version": "output version (data/<layer>/<dataset>/<version>/)",
    "machine": "machine",
}
ROBUSTNESS_CLAIM = "4. robustness to the finetuning learning rate and number of epochs"
ROBUSTNESS_COMMAND = "kedro run --pipeline robustness_sweep"

Figures = Mapping[str, bytes | Mapping[str, bytes]]


def plain_table(df: pd.DataFrame, class_names: Sequence[str] = ()) -> str:
    """``df`` as markdown, headers and known values in words; the extractor column (the same
    in every row, stated once above) is left out."""
    df = df.drop(columns=[c for c in ("extractor",) if c in df.columns])
    df = df.apply(
        lambda col: (
            col
            if pd.api.types.is_numeric_dtype(col)
            else col.map(lambda v: VALUE_NAMES.get(v, v) if isinstance(v, str) else v)
        )
    )
    return markdown_table(df.rename(columns=lambda c: column_words(str(c), class_names)))


def column_words(column: str, class_names: Sequence[str] = ()) -> str:
    """A column header in words (``class_4`` -> the class's name when known)."""
    m = re.fullmatch(r"class_(\d+)", column)
    if m and int(m[1]) < len(class_names):
        return class_names[int(m[1])]
    return COLUMN_NAMES.get(column, column.replace("_", " "))


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out |= flatten(v, key + ".")
        else:
            out[key] = v
    return out


def claims_with_robustness(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims table, with claim 4 listed (and how to check it) when this run has no row for
    it; rows in claim-number order. Works with whatever columns the table has."""
    if "claim" not in claims.columns:
        return claims
    numbers = claims["claim"].astype(str).str.extract(r"^\s*(\d+)")[0]
    if (numbers == "4").any():
        return claims
    row = {c: "—" for c in claims.columns}
    row["claim"] = ROBUSTNESS_CLAIM
    for col in ("holds", "verdict"):
        if col in row:
            row[col] = "not checked in this run"
    detail = next((c for c in ("measured", "effect") if c in row), None)
    if detail is not None:
        row[detail] = f"run `{ROBUSTNESS_COMMAND}`"
    out = pd.concat([claims.astype(object), pd.DataFrame([row])], ignore_index=True)
    order = out["claim"].astype(str).str.extract(r"^\s*(\d+)")[0].astype(float)
    return out.iloc[np.argsort(order.fillna(np.inf).to_numpy(), kind="stable")]


def _figure(files: dict[str, str | bytes], name: str, data: bytes | None, alt: str) -> str:
    if data is None:
        return f"_(figure `{name}` not produced in this run)_"
    path = f"figures/{name}.png"
    files[path] = data
    return f"![{alt}]({path})"


def _metadata_table(metadata: Mapping[str, Any], dataset: str) -> str:
    rows = {**{k: metadata[k] for k in METADATA_LABELS if metadata.get(k) not in (None, "")}}
    rows |= {k: v for k, v in metadata.items() if k not in METADATA_LABELS and v not in (None, "")}
    if dataset:
        rows["dataset"] = dataset
    table = pd.DataFrame(
        {"": [METADATA_LABELS.get(k, k) for k in rows], "value": [f"`{v}`" for v in rows.values()]}
    )
    return markdown_table(table)


def _parameters_table(parameters: Mapping[str, Any]) -> str:
    flat = flatten(parameters)
    shown = [(f, flat[f]) for k in MAIN_PARAMETERS for f in flat if f == k or f.startswith(k + ".")]
    if not shown:
        return "_(no parameters given)_"
    return markdown_table(
        pd.DataFrame({"parameter": [k for k, _ in shown], "value": [str(v) for _, v in shown]})
    )


def _kid_explanation(kid_params: Mapping[str, Any], extractor: str, reference: pd.DataFrame) -> str:
    subsets = kid_params.get("num_subsets", "several")
    size = kid_params.get("max_subset_size", "?")
    text = [
        "**KID** (kernel inception distance) compares a client's generated images with its "
        "held-out real test images: the unbiased squared maximum mean discrepancy between their "
        "image features under the kernel (x·y/d + 1)³, averaged over "
        f"{subsets} random subsets of up to {size} images per side. "
        f"Features: {extractor_words(extractor)}. **Lower is better**; 0 means the two sets "
        "cannot be told apart by these features, and, being unbiased, KID can come out slightly "
        "negative. Values are as computed (not multiplied by 10³) and comparable only between "
        "runs with the same extractor, input size and subset size."
    ]
    if reference is not None and len(reference):
        k = reference["kid_mean"].to_numpy(float)
        text.append(
            f"\n\n**Real against real** (the noise floor): KID between two random halves of each "
            f"client's test split is {np.median(k):.3g} (median over {len(k)} clients; range "
            f"{k.min():.3g} to {k.max():.3g}). A model whose KID is within this range of 0 is "
            "indistinguishable from real data at this sample size."
        )
    return "".join(text)


def build_report(
    *,
    metadata: Mapping[str, Any],
    parameters: Mapping[str, Any],
    dataset_name: str,
    class_names: Sequence[str],
    claims: pd.DataFrame,
    partition_table: pd.DataFrame,
    pretraining_history: pd.DataFrame,
    comparisons: pd.DataFrame | None = None,
    adaptation_choices: pd.DataFrame | None = None,
    conditioning: pd.DataFrame | None = None,
    kid_summary: pd.DataFrame,
    kid_reference: pd.DataFrame,
    unseen_client_table: pd.DataFrame,
    forgetting_table: pd.DataFrame,
    gmm_theory_slopes: pd.DataFrame,
    figures: Figures,
) -> dict[str, str | bytes]:
    """The report's files: ``report.md`` and the figures it embeds (``figures/...``)."""
    files: dict[str, str | bytes] = {}
    single = {k: v for k, v in figures.items() if isinstance(v, bytes | bytearray)}
    groups = {k: v for k, v in figures.items() if isinstance(v, Mapping)}

    def fig(name: str, alt: str) -> str:
        return _figure(files, name, single.get(name), alt)

    def grid(group: str, keys: Sequence[str] | None = None) -> str:
        items = groups.get(group, {})
        keys = sorted(items) if keys is None else [k for k in keys if k in items]
        if not keys:
            return f"_(no `{group}` in this run)_"
        return "\n".join(_figure(files, f"{group}/{k}", items[k], f"{group} {k}") for k in keys)

    extractor = str(kid_summary["extractor"].iloc[0]) if "extractor" in kid_summary else ""
    rounds = pretraining_history.groupby("method").agg(
        rounds=("round", "max"),
        final_loss=("loss_mean", "last"),
        seconds_per_round=("seconds", "mean"),
        bytes_up_per_round=("bytes_up", "mean"),
    )
    rounds["rounds"] += 1
    roles = dict(zip(partition_table["client"], partition_table["role"]))
    unseen = sorted(c for c, r in roles.items() if r == "unseen")
    seen = sorted(c for c, r in roles.items() if r == "seen")
    kid_params = parameters.get("kid_evaluation", {}) if isinstance(parameters, Mapping) else {}

    parts = [
        "# SPIRE run report",
        "SPIRE trains one diffusion backbone with federated averaging and gives each client a "
        "small learnable embedding; this report checks the paper's claims on this run's numbers "
        "against baselines that share or tune far more weights.",
        "## Run",
        _metadata_table(metadata, dataset_name),
        "Main parameters (all of them: the MLflow run's parameters, or `conf/<env>/`):",
        _parameters_table(parameters),
        "## How to read KID",
        _kid_explanation(kid_params, extractor, kid_reference),
        "## Claims",
        "Each claim compares SPIRE with its baselines per client, paired: the effect is the "
        "median over clients of SPIRE's KID minus the baseline's (negative: SPIRE better), with "
        "a 95 % bootstrap interval over clients. A verdict is `holds` or `fails` only when the "
        "whole interval is on one side of the claim's threshold; otherwise `inconclusive`.",
        plain_table(claims_with_robustness(claims)),
        "Every paired comparison behind the claims (threshold: the value the interval is "
        "compared with):",
        plain_table(comparisons) if comparisons is not None else "_(none)_",
        f"A wider grid than the tuning grid of claim 4: `{ROBUSTNESS_COMMAND}` (after a main "
        "job) writes `data/08_reporting/sweep_summary.csv` and the heat maps "
        "`data/08_reporting/sweep_heatmaps/`.",
        "## Clients",
        plain_table(partition_table, class_names),
        fig("partition_heatmap", "images per client and class"),
        "## Federated pretraining",
        plain_table(rounds.reset_index()),
        fig("pretraining_loss", "mean local loss per round"),
        "Samples of the seen clients after pretraining (real images first, then generated):",
        grid("pretraining_sample_grids"),
        "## Per-client KID",
        "Median, mean and worst KID over clients, per phase, role and method "
        f"({extractor_words(extractor)}; lower is better):",
        plain_table(kid_summary),
        fig("kid_bar_chart", "per-client KID"),
        "Real against real, per client (two halves of its test split):",
        plain_table(kid_reference),
        "Conditioning strength of the same samples: mean share in the client's own classes and "
        "median total-variation distance between their predicted label histogram and the "
        "client's (0: the client's label mix; a classifier trained on the seen clients' train "
        "splits labels them):",
        plain_table(conditioning) if conditioning is not None else "_(none)_",
        "## Adaptation hyperparameters, chosen on the tuning clients",
        "Every method was tuned with the same learning-rate x epochs grid on the tuning clients "
        "(never on the evaluation clients); the evaluation clients were adapted once with these:",
        plain_table(adaptation_choices) if adaptation_choices is not None else "_(none)_",
        "## Unseen clients: adaptation",
        plain_table(unseen_client_table),
        fig("efficiency", "unseen-client KID against parameters trained"),
        "Real test images and samples of each unseen client:",
        grid("kid_sample_grids", unseen),
        "## Forgetting",
        "KID of the seen population's samples (pooled over the seen clients) against the pooled "
        "seen test images, before and after adapting each method to an evaluation client (a "
        "positive change is worse). The noise band is two standard deviations of the change "
        "when nothing changed, from independent redraws of the pretrained models:",
        plain_table(forgetting_table),
        "Seen clients' real test images and samples: "
        + (", ".join(f"[{c}](figures/kid_sample_grids/{c}.png)" for c in seen) or "none"),
        "## Theory (claim 5): the mixing weight of a two-Gaussian mixture",
        "Fitted slopes of the error against log10 dimension (expected 0) and of the log error "
        "against log10 sample size (expected −1/2):",
        plain_table(gmm_theory_slopes),
        fig("error_vs_dimension", "error against dimension"),
        fig("error_vs_sample_size", "error against sample size"),
        "The contrast the theorem is about: when the component means are not known (the "
        "backbone) but estimated from the same samples, the error does grow with the dimension:",
        fig("known_vs_estimated_means", "known against estimated means"),
        fig("b_convergence", "gradient descent on b"),
    ]
    # the seen clients' grids are linked above: put their files in the folder too
    for c in seen:
        if c in groups.get("kid_sample_grids", {}):
            files[f"figures/kid_sample_grids/{c}.png"] = groups["kid_sample_grids"][c]
    files["report.md"] = "\n\n".join(parts) + "\n"
    return files
