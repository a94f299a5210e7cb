"""The paired bootstrap (``spire.stats``) and every claim's verdict (``spire.claims``): each can
come out ``holds``, ``fails`` or ``inconclusive``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spire_pipeline.spire.claims import (
    CLAIM_COLUMNS,
    check_claims,
    claim_pretraining,
    claim_robustness,
    claim_theory,
    claim_unseen,
    spreads,
)
from spire_pipeline.spire.config import ClaimsConfig
from spire_pipeline.spire.stats import bootstrap, min_clients, paired, three_way

CFG = ClaimsConfig()


# ----------------------------------------------------------------------------- bootstrap


def test_paired_bootstrap_matches_a_hand_computation() -> None:
    """Differences -1, 0, +3 over three clients. Of the 27 resamples, 7 have median -1 (two or
    three draws of -1), 7 have median +3 and 13 have median 0; sorted, at 70 % confidence the
    15 % quantile is the 5th (-1), the 85 % quantile the 23rd (+3); at 40 % the 30 % and 70 %
    quantiles are the 9th and 19th: both 0. At 95 %, three clients are too few: even
    [min, max] covers the median with probability 1 - 2/8 only, so the interval is unbounded."""
    a = {"c1": 1.0, "c2": 2.0, "c3": 6.0, "only_a": 9.0}
    b = {"c1": 2.0, "c2": 2.0, "c3": 3.0, "only_b": 0.0}
    iv = paired(a, b, confidence=0.7)
    assert (iv.effect, iv.ci_low, iv.ci_high, iv.n) == (0.0, -1.0, 3.0, 3)
    narrow = paired(a, b, confidence=0.4)
    assert (narrow.ci_low, narrow.ci_high) == (0.0, 0.0)
    wide = paired(a, b)
    assert (wide.effect, wide.ci_low, wide.ci_high) == (0.0, -np.inf, np.inf)


def test_min_clients_for_a_median_interval() -> None:
    assert [min_clients(c) for c in (0.5, 0.75, 0.9, 0.95, 0.99)] == [2, 3, 5, 6, 8]
    # six clients that agree are evidence at 95 %; five are not
    assert bootstrap(np.arange(1.0, 7.0)).ci_low > 0
    assert np.isinf(bootstrap(np.arange(1.0, 6.0)).ci_low)


def test_bootstrap_is_seeded_and_covers_the_median() -> None:
    x = np.random.default_rng(1).normal(0.5, 1.0, size=12)
    first, again = bootstrap(x, seed=3), bootstrap(x, seed=3)
    assert first == again
    assert first.effect == pytest.approx(np.median(x))
    assert first.ci_low <= first.effect <= first.ci_high
    with pytest.raises(ValueError, match="NaN"):
        bootstrap(np.array([1.0, np.nan]))


def test_three_way_refuses_contradictory_rules() -> None:
    assert three_way(True, False) == "holds" and three_way(False, True) == "fails"
    assert three_way(False, False) == "inconclusive"
    with pytest.raises(ValueError):
        three_way(True, True)


# ----------------------------------------------------------------------------- claims 1, 2


def kid_rows(phase: str, role: str, values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"client": f"c{k}", "role": role, "phase": phase, "method": m, "kid_mean": v}
            for m, vs in values.items()
            for k, v in enumerate(vs)
        ]
    )


SEEN_BASE = {"fedavg": [5.0, 6.0, 5.5, 6.5, 5.2, 5.8], "local": [4.0, 4.5, 4.2, 4.8, 4.1, 4.4]}


@pytest.mark.parametrize(
    ("spire", "verdict"),
    [
        ([3.0, 3.5, 3.2, 3.6, 3.1, 3.4], "holds"),  # beats both
        ([4.1, 4.6, 4.3, 4.9, 4.2, 4.5], "holds"),  # 0.1 worse than local: within 10 % of ~4.3
        ([5.0, 5.5, 5.2, 5.8, 5.1, 5.4], "fails"),  # ~1 worse than local on every client
        ([3.0, 5.6, 3.2, 5.9, 5.0, 3.1], "inconclusive"),  # straddles the margin
    ],
)
def test_claim_1_each_way(spire, verdict) -> None:
    row, comparisons = claim_pretraining(
        kid_rows("pretrained", "seen", {"spire": spire, **SEEN_BASE}), CFG
    )
    assert row["verdict"] == verdict and row["holds"] == (verdict == "holds")
    assert {c["baseline"] for c in comparisons} == {"fedavg", "local"}
    assert row["n_clients"] == 6


def test_claim_1_leaves_out_the_pooled_reference() -> None:
    kids = kid_rows(
        "pretrained",
        "seen",
        {"spire": [3.0] * 6, "centralized": [0.1] * 6, **SEEN_BASE},
    )
    _, comparisons = claim_pretraining(kids, CFG)
    assert "centralized" not in {c["baseline"] for c in comparisons}


ADAPT = pd.DataFrame({"method": ["spire", "lora"], "trained_params": [64, 48128]})


@pytest.mark.parametrize(
    ("spire", "lora", "verdict"),
    [
        ([1.0, 1.1, 0.9, 1.2, 1.0, 1.1], [2.0, 2.1, 1.9, 2.2, 2.0, 2.1], "holds"),
        ([3.0, 3.1, 2.9, 3.2, 3.0, 3.1], [2.0, 2.1, 1.9, 2.2, 2.0, 2.1], "fails"),
        ([1.0, 3.1, 0.9, 3.2, 1.0, 3.1], [2.0, 2.1, 1.9, 2.2, 2.0, 2.1], "inconclusive"),
    ],
)
def test_claim_2_each_way(spire, lora, verdict) -> None:
    row, _ = claim_unseen(kid_rows("adapted", "unseen", {"spire": spire, "lora": lora}), ADAPT, CFG)
    assert row["verdict"] == verdict
    assert "64 parameters" in row["note"]


# ----------------------------------------------------------------------------- claim 4


def grid(method: str, client: str, values: list[float]) -> list[dict]:
    cells = [(lr, e) for lr in (1e-3, 1e-2) for e in (1, 4)]
    return [
        {"method": method, "client": client, "lr": lr, "epochs": e, "kid_mean": v}
        for (lr, e), v in zip(cells, values)
    ]


TUNING_CLIENTS = [f"t{k}" for k in range(6)]  # the fewest a 95 % interval needs


def tuning_table(spire: list[float], bitfit: list[float]) -> pd.DataFrame:
    rows = []
    for c in TUNING_CLIENTS:
        rows += grid("spire", c, spire) + grid("bitfit", c, bitfit)
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("spire", "bitfit", "verdict"),
    [
        ([1.0, 1.1, 1.2, 1.1], [1.0, 3.0, 1.5, 2.0], "holds"),
        ([1.0, 3.0, 1.5, 2.0], [1.0, 1.1, 1.2, 1.1], "fails"),
        # a diverged cell is the worst cell: bitfit's spread is infinite
        ([1.0, 3.0, 1.5, 2.0], [1.0, 1.1, np.nan, 1.1], "holds"),
    ],
)
def test_claim_4_each_way(spire, bitfit, verdict) -> None:
    row, _ = claim_robustness(tuning_table(spire, bitfit), CFG)
    assert row["verdict"] == verdict


def test_claim_4_inconclusive_when_tuning_clients_disagree() -> None:
    calm, shaky = [1.0, 1.1, 1.2, 1.1], [1.0, 3.0, 1.5, 2.0]
    rows = []
    for k, c in enumerate(TUNING_CLIENTS):
        spire, bitfit = (calm, shaky) if k % 2 else (shaky, calm)
        rows += grid("spire", c, spire) + grid("bitfit", c, bitfit)
    row, _ = claim_robustness(pd.DataFrame(rows), CFG)
    assert row["verdict"] == "inconclusive"


def test_claim_4_says_how_to_get_it_when_there_is_no_grid() -> None:
    row, _ = claim_robustness(pd.DataFrame(), CFG)
    assert row["verdict"] == "inconclusive" and "robustness_sweep" in row["note"]


def test_spreads_count_a_diverged_cell_as_infinitely_bad() -> None:
    s = spreads(tuning_table([1.0, 2.0, np.nan, 1.5], [1.0, 2.0, 4.0, 1.5]))
    s = s.set_index(["method", "client"])
    assert np.isinf(s.loc[("spire", "t0"), "worst"])
    assert s.loc[("bitfit", "t0"), "log_spread"] == pytest.approx(np.log(4.0))


# ----------------------------------------------------------------------------- claim 5


def slopes(dim: tuple[float, float, float], n: tuple[float, float, float], y_mean=0.4):
    rows = [
        ("dim", "err_ddpm_true", *dim, y_mean),
        ("n", "err_ddpm_true", *n, -2.0),
    ]
    return pd.DataFrame(rows, columns=["axis", "error", "slope", "ci_low", "ci_high", "y_mean"])


@pytest.mark.parametrize(
    ("dim", "n", "verdict"),
    [
        ((0.01, -0.05, 0.07), (-0.5, -0.6, -0.4), "holds"),  # relative CI [-0.125, 0.175]
        ((0.40, 0.30, 0.50), (-0.5, -0.6, -0.4), "fails"),  # grows: relative CI [0.75, 1.25]
        ((0.01, -0.05, 0.07), (-0.1, -0.2, 0.0), "fails"),  # does not fall like n^-1/2
        ((0.10, -0.05, 0.25), (-0.5, -0.6, -0.4), "inconclusive"),  # CI reaches 0.625
        ((0.01, -0.05, 0.07), (-0.5, -0.8, -0.2), "inconclusive"),  # n CI too wide
    ],
)
def test_claim_5_margin_rule(dim, n, verdict) -> None:
    row = claim_theory(slopes(dim, n), CFG)
    assert row["verdict"] == verdict
    # the CI contains 0 in the "inconclusive" dimension case: absence of evidence is not a hold
    assert row["effect"] == pytest.approx(dim[0] / 0.4)


# ----------------------------------------------------------------------------- the table


def test_claims_table_has_a_verdict_for_every_claim() -> None:
    kids = pd.concat(
        [
            kid_rows("pretrained", "seen", {"spire": [3.0] * 6, **SEEN_BASE}),
            kid_rows(
                "adapted", "unseen", {"spire": [1.0, 1.1, 0.9, 1.2, 1.0, 1.1], "lora": [2.0] * 6}
            ),
        ]
    )
    claims, comparisons = check_claims(
        kids,
        ADAPT,
        pd.DataFrame(),
        tuning_table([1.0, 1.1, 1.2, 1.1], [1.0, 3.0, 1.5, 2.0]),
        slopes((0.01, -0.05, 0.07), (-0.5, -0.6, -0.4)),
    )
    assert list(claims.columns) == CLAIM_COLUMNS
    assert [c.split(".")[0] for c in claims["claim"]] == ["1", "2", "3", "4", "5"]
    assert list(claims["verdict"]) == ["holds", "holds", "inconclusive", "holds", "holds"]
    assert (claims["holds"] == (claims["verdict"] == "holds")).all()
    assert set(comparisons["baseline"]) == {"fedavg", "local", "lora", "bitfit"}
