"""The paired tests behind the comparison tables: golden values against scipy, calibration under
the null (false positives at the stated rate), power with a planted effect against the analytic
value, and broken copies of the test (one-sided, unpaired, uncorrected) that these checks catch."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from reports import paired as pt

STUDIES, SEEDS, ITEMS, TASKS = 240, 3, 200, 5


def null_studies(seed: int = 0) -> list[list[tuple[list[np.ndarray], list[np.ndarray]]]]:
    """Studies in which both methods have the same per-item success probabilities: per study,
    TASKS comparisons, each SEEDS seeds of ITEMS right-or-wrong scores per method."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STUDIES):
        study = []
        for _ in range(TASKS):
            p = rng.beta(0.4, 0.4, ITEMS)  # items mostly easy or hard for both methods, as test items are
            a = [100.0 * (rng.random(ITEMS) < p) for _ in range(SEEDS)]
            b = [100.0 * (rng.random(ITEMS) < p) for _ in range(SEEDS)]
            study.append((a, b))
        out.append(study)
    return out


def mcnemar_p(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """The comparison's p without its interval (the interval does not enter the p-value)."""
    return pt.paired(a, b, "calibration", resamples=1).p_value


def one_sided_p(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Broken: a one-sided p reported as two-sided."""
    return mcnemar_p(a, b) / 2


def unpaired_p(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Broken: the two methods' right answers compared as independent samples."""
    x, y = np.concatenate(a) / 100, np.concatenate(b) / 100
    table = [[x.sum(), x.size - x.sum()], [y.sum(), y.size - y.sum()]]
    return float(stats.chi2_contingency(table).pvalue)


def rates(pvalue, correct=pt.holm) -> tuple[float, float]:  # noqa: ANN001
    """(share of comparisons with raw p < 0.05, share of studies with any adjusted p < 0.05)."""
    raw, any_adjusted = [], []
    for study in null_studies():
        ps = [pvalue(a, b) for a, b in study]
        raw += [p < 0.05 for p in ps]
        any_adjusted.append(min(correct(ps)) < 0.05)
    return float(np.mean(raw)), float(np.mean(any_adjusted))


def calibrated(raw: float, family: float) -> bool:
    return 0.03 <= raw <= 0.07 and family <= 0.07


def test_mcnemar_equals_scipys_binomial_test_and_the_chi_squared_formula():
    assert pt.mcnemar(7, 15)[0] == pytest.approx(stats.binomtest(7, 22, 0.5).pvalue, abs=1e-12)
    assert pt.mcnemar(15, 7)[0] == pytest.approx(stats.binomtest(7, 22, 0.5).pvalue, abs=1e-12)
    assert pt.mcnemar(40, 65) == (pytest.approx(stats.chi2.sf((25 - 1) ** 2 / 105, df=1), abs=1e-12),
                                  "McNemar chi2 (continuity)")
    assert pt.mcnemar(0, 0)[0] == 1.0


def test_a_comparison_counts_the_discordant_pairs_of_its_items():
    a = [np.array([100.0, 100, 0, 0, 100, 0]), np.array([100.0, 0, 0, 100, 0, 0])]
    b = [np.array([0.0, 100, 0, 0, 0, 100]), np.array([0.0, 0, 100, 100, 100, 0])]
    result = pt.paired(a, b, "golden")
    assert result.p_value == pytest.approx(stats.binomtest(3, 6, 0.5).pvalue)  # b = 3, c = 3 over both seeds
    assert result.diff == pytest.approx((100 / 6 + (-100 / 6)) / 2)
    assert result.n_seeds == 2 and result.n_items == 6 and result.ci_low <= result.diff <= result.ci_high


def test_the_paired_test_is_calibrated_under_the_null():
    raw, family = rates(mcnemar_p)
    assert calibrated(raw, family), (raw, family)


@pytest.mark.parametrize("broken", [one_sided_p, unpaired_p])
def test_a_one_sided_or_unpaired_copy_is_caught(broken):
    assert not calibrated(*rates(broken))


def test_an_uncorrected_family_is_caught():
    raw, family = rates(mcnemar_p, correct=lambda ps: ps)
    assert 0.03 <= raw <= 0.07 and family > 0.07


def test_the_graded_bootstrap_is_calibrated_under_the_null():
    rng = np.random.default_rng(1)
    hits = []
    for k in range(200):
        level = rng.uniform(2, 9, 80)  # a judge's 1-10 ratings with item-level difficulty
        a = [np.clip(np.round(level + rng.normal(0, 1.5, 80)), 1, 10) for _ in range(2)]
        b = [np.clip(np.round(level + rng.normal(0, 1.5, 80)), 1, 10) for _ in range(2)]
        hits.append(pt.paired(a, b, f"graded-{k}", resamples=400).p_value < 0.05)
    assert 0.02 <= np.mean(hits) <= 0.08


def test_power_with_a_planted_effect_matches_the_analytic_value():
    rng = np.random.default_rng(2)
    n = 500
    p = 0.1 + 0.8 * rng.beta(0.4, 0.4, n)
    pa, pb = p + 0.05, p - 0.05  # a planted paired effect of 10 points
    delta = np.mean(pa - pb)
    var = np.mean(pa * (1 - pb) + pb * (1 - pa) - (pa - pb) ** 2)  # of one item's paired difference
    se = np.sqrt(var / n)
    z = stats.norm.ppf(0.975)
    analytic = stats.norm.cdf(delta / se - z) + stats.norm.cdf(-delta / se - z)
    hits = [mcnemar_p([100.0 * (rng.random(n) < pa)], [100.0 * (rng.random(n) < pb)]) < 0.05 for _ in range(400)]
    assert abs(np.mean(hits) - analytic) <= 0.1, (np.mean(hits), analytic)
    one = pt.paired([100.0 * (rng.random(n) < pa)], [100.0 * (rng.random(n) < pb)], "power")
    assert one.mde == pytest.approx(pt.Z_SUM * 100 * se, rel=0.15)  # resolution from the observed discordance


def test_holm_matches_its_definition():
    assert pt.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert pt.holm([]) == []


def test_a_rerun_resamples_identically_and_more_seeds_never_narrow_the_interval():
    rng = np.random.default_rng(3)
    a = [100.0 * (rng.random(60) < 0.6) for _ in range(3)]
    b = [100.0 * (rng.random(60) < 0.5) for _ in range(3)]
    assert pt.paired(a, b, "k") == pt.paired(a, b, "k")
    item_only = pt.paired(a, b, "k", hierarchical=False)
    both = pt.paired(a, b, "k")
    assert both.ci_high - both.ci_low >= 0.9 * (item_only.ci_high - item_only.ci_low)
