"""The paper's claims, decided from the measured tables (no numbers are hard-coded here).

Each claim compares SPIRE with its baselines per client, paired, with a bootstrap CI over
clients (:mod:`~spire_pipeline.spire.stats`), and gets a verdict that can come out either way:
``holds``, ``fails`` or ``inconclusive`` (the uncertainty straddles the rule's threshold).

1. pretraining: SPIRE's seen-client KID is not worse than any federated baseline's by more than
   a stated non-inferiority margin (a share of the baseline's median KID);
2. unseen clients: SPIRE's evaluation-client KID beats every baseline (the CI of the paired
   difference lies below 0);
3. forgetting: SPIRE's change of the seen population's KID lies within the measure's noise
   band while a weight-sharing baseline's lies beyond it;
4. robustness: over the tuning grid, SPIRE's spread (worst / best cell KID, a diverged cell
   counting as infinitely bad) is smaller than every baseline's, per tuning client, paired;
5. theory: the DDPM-recovered mixing weight's error is flat in the dimension (the CI of the
   slope, relative to the error's mean, lies within +-margin per decade) and falls like
   n^-1/2 (the CI of the log-log slope lies inside the stated band).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from spire_pipeline.spire.config import ClaimsConfig
from spire_pipeline.spire.methods import ADAPTATION, PRETRAINING, PROPOSED
from spire_pipeline.spire.stats import Interval, Verdict, bootstrap, paired, three_way

CLAIM_COLUMNS = [
    "claim",
    "verdict",
    "effect",
    "ci_low",
    "ci_high",
    "n_clients",
    "measured",
    "note",
    "holds",
]
COMPARISON_COLUMNS = [
    "claim",
    "method",
    "baseline",
    "effect",
    "ci_low",
    "ci_high",
    "n_clients",
    "threshold",
    "verdict",
]


def _per_client(table: pd.DataFrame, phase: str, role: str) -> dict[str, dict[str, float]]:
    sub = table[(table["phase"] == phase) & (table["role"] == role)]
    return {m: dict(zip(g["client"], g["kid_mean"])) for m, g in sub.groupby("method")}


def _row(claim: str, verdict: Verdict, iv: Interval | None, measured: str, note: str = "") -> dict:
    nan = float("nan")
    if iv is not None and 0 < iv.n and np.isinf(iv.ci_low) and np.isinf(iv.ci_high):
        few = f"{iv.n} clients are too few for a 95 % interval of a median (6 needed)"
        note = f"{few}; {note}" if note else few
    return {
        "claim": claim,
        "verdict": verdict,
        "effect": iv.effect if iv else nan,
        "ci_low": iv.ci_low if iv else nan,
        "ci_high": iv.ci_high if iv else nan,
        "n_clients": iv.n if iv else 0,
        "measured": measured,
        "note": note,
        "holds": verdict == "holds",
    }


def _compare(
    claim: str,
    kids: dict[str, dict[str, float]],
    baselines: list[str],
    threshold: Callable[[str], float],
    cfg: ClaimsConfig,
) -> list[dict]:
    """Paired (SPIRE - baseline) per client, one row per baseline."""
    rows = []
    for b in baselines:
        iv = paired(kids[PROPOSED], kids[b], cfg.confidence, cfg.bootstrap_samples, cfg.seed)
        t = threshold(b)
        verdict = three_way(iv.below(t) or iv.ci_high == t, iv.above(t))
        rows.append(
            {
                "claim": claim,
                "method": PROPOSED,
                "baseline": b,
                "effect": iv.effect,
                "ci_low": iv.ci_low,
                "ci_high": iv.ci_high,
                "n_clients": iv.n,
                "threshold": t,
                "verdict": verdict,
            }
        )
    return rows


def _overall(rows: list[dict]) -> tuple[Verdict, dict]:
    """A claim against every baseline: holds if it holds against each, fails if it fails
    against any; the row shown is the toughest comparison (largest effect minus threshold)."""
    verdicts = {r["verdict"] for r in rows}
    overall: Verdict = three_way(verdicts == {"holds"}, "fails" in verdicts)
    toughest = max(rows, key=lambda r: r["ci_high"] - r["threshold"])
    return overall, toughest


def _interval(row: dict) -> Interval:
    return Interval(row["effect"], row["ci_low"], row["ci_high"], row["n_clients"])


def _listing(rows: list[dict]) -> str:
    return "; ".join(
        f"vs {r['baseline']} {r['effect']:+.3g} [{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]"
        for r in rows
    )


def claim_pretraining(kid_table: pd.DataFrame, cfg: ClaimsConfig) -> tuple[dict, list[dict]]:
    kids = _per_client(kid_table, "pretrained", "seen")
    # every pretraining baseline but the pooled (centralized) reference, which FL cannot reach
    baselines = [m for m in kids if m != PROPOSED and not PRETRAINING[m].pooled]
    name = "1. pretraining: SPIRE matches or beats every baseline (seen clients)"
    if PROPOSED not in kids or not baselines:
        return _row(name, "inconclusive", None, "no baseline was pretrained"), []

    def margin(b: str) -> float:
        return cfg.noninferiority_margin * float(np.median(list(kids[b].values())))

    rows = _compare(name, kids, sorted(baselines), margin, cfg)
    verdict, worst = _overall(rows)
    note = (
        f"SPIRE - baseline KID per seen client; holds when the CI's upper end is below "
        f"{cfg.noninferiority_margin:.0%} of the baseline's median KID against every baseline"
    )
    return _row(name, verdict, _interval(worst), _listing(rows), note), rows


def claim_unseen(
    kid_table: pd.DataFrame, adaptation_table: pd.DataFrame, cfg: ClaimsConfig
) -> tuple[dict, list[dict]]:
    kids = _per_client(kid_table, "adapted", "unseen")
    name = "2. unseen clients: SPIRE beats every baseline that tunes far more parameters"
    baselines = sorted(m for m in kids if m != PROPOSED)
    if PROPOSED not in kids or not baselines:
        return _row(name, "inconclusive", None, "no adapted baselines"), []
    rows = _compare(name, kids, baselines, lambda b: 0.0, cfg)
    # "beats": the whole CI below 0 (a CI ending exactly at 0 does not beat)
    for r in rows:
        r["verdict"] = three_way(r["ci_high"] < 0, r["ci_low"] > 0)
    verdict, worst = _overall(rows)
    params = adaptation_table.groupby("method")["trained_params"].first()
    note = (
        f"SPIRE ({int(params.get(PROPOSED, 0))} parameters) - baseline KID per evaluation "
        "client; holds when every CI lies below 0"
    )
    return _row(name, verdict, _interval(worst), _listing(rows), note), rows


def claim_forgetting(forgetting: pd.DataFrame) -> dict:
    name = "3. forgetting: adapting SPIRE leaves the seen clients' KID within noise"
    if forgetting.empty or PROPOSED not in set(forgetting["method"]):
        return _row(name, "inconclusive", None, "no forgetting measurement")
    f = forgetting.set_index("method")
    s = f.loc[PROPOSED]
    iv = Interval(s["change"], s["ci_low"], s["ci_high"], int(s["adaptations"]))
    shared = [m for m in f.index if m in ADAPTATION and ADAPTATION[m].shares_weights]
    forgets = [m for m in shared if bool(f.loc[m, "beyond_noise"])]
    spire_forgets = bool(s["beyond_noise"])
    verdict = three_way(bool(s["within_noise"]) and bool(forgets), spire_forgets)
    measured = f"band +-{s['noise_band']:.3g}; " + "; ".join(
        f"{m} {f.loc[m, 'change']:+.3g} [{f.loc[m, 'ci_low']:+.3g}, {f.loc[m, 'ci_high']:+.3g}]"
        for m in [PROPOSED, *shared]
    )
    if bool(s["within_noise"]) and not forgets:
        note = "no forgetting to mitigate at this budget: no weight-sharing baseline forgets"
    elif verdict == "holds":
        note = f"beyond noise: {', '.join(forgets)}"
    else:
        note = "change of the seen population's KID after adapting; noise band from redraws"
    return _row(name, verdict, iv, measured, note)


def spreads(tuning_table: pd.DataFrame) -> pd.DataFrame:
    """Per (method, tuning client): best and worst cell KID over the grid and log(worst/best);
    a diverged cell is infinitely bad."""
    t = tuning_table.copy()
    t["kid"] = t["kid_mean"].where(~t["kid_mean"].isna(), np.inf)
    g = t.groupby(["method", "client"])["kid"]
    out = pd.DataFrame({"best": g.min(), "worst": g.max()}).reset_index()
    out["log_spread"] = np.log(out["worst"]) - np.log(out["best"].clip(lower=1e-12))
    return out


def claim_robustness(tuning_table: pd.DataFrame, cfg: ClaimsConfig) -> tuple[dict, list[dict]]:
    name = "4. robustness: SPIRE is the least sensitive to learning rate and epochs"
    if tuning_table is None or tuning_table.empty:
        return (
            _row(
                name,
                "inconclusive",
                None,
                "no tuning grid in this run",
                "needs tuning clients (data_partitioning.num_tuning_clients), or run "
                "`kedro run --pipeline robustness_sweep`",
            ),
            [],
        )
    s = spreads(tuning_table)
    per = {m: dict(zip(g["client"], g["log_spread"])) for m, g in s.groupby("method")}
    baselines = sorted(m for m in per if m != PROPOSED)
    if PROPOSED not in per or not baselines:
        return _row(name, "inconclusive", None, "no baselines in the tuning grid"), []
    rows = []
    for b in baselines:
        common = sorted(set(per[PROPOSED]) & set(per[b]))
        diff = np.array([_inf_diff(per[PROPOSED][c], per[b][c]) for c in common])
        iv = bootstrap(diff, confidence=cfg.confidence, num=cfg.bootstrap_samples, seed=cfg.seed)
        rows.append(
            {
                "claim": name,
                "method": PROPOSED,
                "baseline": b,
                "effect": iv.effect,
                "ci_low": iv.ci_low,
                "ci_high": iv.ci_high,
                "n_clients": iv.n,
                "threshold": 0.0,
                "verdict": three_way(iv.ci_high < 0, iv.ci_low > 0),
            }
        )
    verdict, worst = _overall(rows)
    worst_cell = s.groupby("method")["worst"].median()
    measured = (
        "log(worst/best) SPIRE - baseline per tuning client: "
        + _listing(rows)
        + "; worst cell (median over clients): "
        + ", ".join(f"{m} {v:.3g}" for m, v in worst_cell.items())
    )
    note = "holds when SPIRE's spread is smaller than every baseline's (CI below 0)"
    return _row(name, verdict, _interval(worst), measured, note), rows


def _inf_diff(a: float, b: float) -> float:
    """a - b where both may be +inf (two diverged grids tie)."""
    if np.isinf(a) and np.isinf(b):
        return 0.0
    return a - b


def claim_theory(slopes: pd.DataFrame, cfg: ClaimsConfig) -> dict:
    name = "5. theory: DDPM-recovered mixing weight, error flat in d, ~n^-1/2"
    if slopes is None or slopes.empty:
        return _row(name, "inconclusive", None, "no theory run")
    s = slopes.set_index(["axis", "error"])
    dim, n = s.loc[("dim", "err_ddpm_true")], s.loc[("n", "err_ddpm_true")]
    scale = float(dim["y_mean"]) if "y_mean" in dim and np.isfinite(dim["y_mean"]) else np.nan
    rel = Interval(dim["slope"] / scale, dim["ci_low"] / scale, dim["ci_high"] / scale, 0)
    m = cfg.theory_dimension_margin
    lo, hi = cfg.theory_n_slope
    flat_holds, flat_fails = rel.within(-m, m), rel.above(m) or rel.below(-m)
    n_holds = lo <= n["ci_low"] and n["ci_high"] <= hi
    n_fails = n["ci_high"] < lo or n["ci_low"] > hi
    verdict = three_way(flat_holds and n_holds, flat_fails or n_fails)
    measured = (
        f"relative slope vs log10 d {rel.effect:+.3f} [{rel.ci_low:+.3f}, {rel.ci_high:+.3f}] "
        f"per decade; slope vs log10 n {n['slope']:+.3f} [{n['ci_low']:+.3f}, {n['ci_high']:+.3f}]"
    )
    if ("dim", "err_ddpm_est_true") in s.index:  # the contrast: means estimated, not known
        est = s.loc[("dim", "err_ddpm_est_true")]
        scale_est = float(est["y_mean"])
        measured += (
            f"; with the means estimated from the samples: {est['slope'] / scale_est:+.3f} "
            f"[{est['ci_low'] / scale_est:+.3f}, {est['ci_high'] / scale_est:+.3f}] per decade"
        )
    note = (
        f"holds when the relative dimension slope's CI lies within +-{m} per decade and the "
        f"n slope's CI within [{lo}, {hi}]"
    )
    return _row(name, verdict, rel, measured, note)


def check_claims(
    kid_table: pd.DataFrame,
    adaptation_table: pd.DataFrame,
    forgetting: pd.DataFrame,
    tuning_table: pd.DataFrame,
    gmm_slopes: pd.DataFrame,
    cfg: ClaimsConfig | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The claims table (one row per claim) and every paired comparison behind it."""
    cfg = cfg or ClaimsConfig()
    c1, r1 = claim_pretraining(kid_table, cfg)
    c2, r2 = claim_unseen(kid_table, adaptation_table, cfg)
    c4, r4 = claim_robustness(tuning_table, cfg)
    claims = [c1, c2, claim_forgetting(forgetting), c4, claim_theory(gmm_slopes, cfg)]
    return (
        pd.DataFrame(claims, columns=CLAIM_COLUMNS),
        pd.DataFrame(r1 + r2 + r4, columns=COMPARISON_COLUMNS),
    )


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""

    def cell(v) -> str:
        if isinstance(v, float | np.floating):
            return floatfmt.format(v)
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])
