"""Paired comparisons of two methods on the same test items and seeds: the statistics behind
``tables/comparisons.*`` (numpy and scipy only; every resampling from a fixed generator, so a
report is byte-identical on a rerun).

Inputs are seed-matched pairs: for each seed both methods ran, the two score vectors over the
test items both evaluated, in the same item order. The point estimate is the mean over seeds of
the mean paired difference ``a - b``.

- **p-value.** Right-or-wrong scores (0/100): McNemar on the discordant pairs summed over seeds
  (lm-eval's rule: an exact two-sided binomial test when there are at most 25, chi-squared with
  continuity correction otherwise). Graded scores (a judge's 1-10, ROUGE) and NLL: a paired
  bootstrap over items within each seed, centred at the observed difference,
  ``p = (1 + #{|d* - d| >= |d|}) / (1 + resamples)``. Both condition on the seeds that ran and
  are calibrated when the item pairs are exchangeable under the null (``tests/test_paired.py``
  measures it).
- **Confidence interval.** One seed: the paired bootstrap over items. Several seeds: a
  hierarchical bootstrap, seeds first, then items within each drawn seed, so that more items
  cannot stand in for missing seeds (wider, never narrower, than the item-only interval).
- **Resolution.** The smallest difference detectable at 80% power and alpha 0.05 (two-sided),
  ``(z_.975 + z_.8) * SE``, with the standard error from the observed paired item variance and,
  over several seeds, at least the spread of the per-seed differences; and the items, or seeds,
  that would resolve the observed difference at that power.
- **Multiple comparisons.** Holm's step-down adjustment over a declared family.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

RESAMPLES = 4000  # bootstrap resamples per comparison
SEED = 20260  # every comparison's generator starts here (plus a stable per-comparison offset)
ALPHA, POWER = 0.05, 0.80
Z_SUM = float(stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER))  # 2.80: z_.975 + z_.8
EXACT_UP_TO = 25  # discordant pairs up to which McNemar is the exact binomial test


@dataclasses.dataclass(frozen=True)
class Paired:
    """One paired comparison of ``a`` against ``b`` (differences ``a - b``, in the scores' units)."""

    n_items: int  # items per seed (the smallest over seeds)
    n_seeds: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    mde: float  # smallest difference detectable at 80% power
    needed_items: int | None  # items per seed that would resolve ``diff`` (None: diff is 0)
    needed_seeds: int | None  # seeds, at these items, that would resolve ``diff``


def mcnemar(b: int, c: int) -> tuple[float, str]:
    """Two-sided McNemar p of ``b`` pairs right only under a and ``c`` right only under b."""
    n = b + c
    if n == 0:
        return 1.0, "McNemar exact"
    if n <= EXACT_UP_TO:
        return float(stats.binomtest(min(b, c), n, 0.5).pvalue), "McNemar exact"
    statistic = (abs(b - c) - 1) ** 2 / n
    return float(stats.chi2.sf(statistic, df=1)), "McNemar chi2 (continuity)"


def is_binary(values: Sequence[np.ndarray]) -> bool:
    """Right-or-wrong scores: every value 0 or 100."""
    return all(bool(np.isin(v, (0.0, 100.0)).all()) for v in values)


def _generator(key: str) -> np.random.Generator:
    """A generator fixed by ``key`` (the comparison's name): reruns resample identically."""
    return np.random.default_rng([SEED, *key.encode()])


def _item_bootstrap(diffs: Sequence[np.ndarray], rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Means over seeds of item-resampled mean differences (every seed kept)."""
    total = np.zeros(resamples)
    for d in diffs:
        picks = rng.integers(0, len(d), size=(resamples, len(d)))
        total += d[picks].mean(axis=1)
    return total / len(diffs)


def _hierarchical_bootstrap(diffs: Sequence[np.ndarray], rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Seeds drawn with replacement, then items within each drawn seed."""
    seeds = rng.integers(0, len(diffs), size=(resamples, len(diffs)))
    total = np.zeros(resamples)
    for column in range(len(diffs)):
        for s, d in enumerate(diffs):
            rows = np.flatnonzero(seeds[:, column] == s)
            if rows.size:
                picks = rng.integers(0, len(d), size=(rows.size, len(d)))
                total[rows] += d[picks].mean(axis=1)
    return total / len(diffs)


def paired(a: Sequence[np.ndarray], b: Sequence[np.ndarray], key: str, binary: bool | None = None,
           resamples: int = RESAMPLES, hierarchical: bool = True) -> Paired:
    """The comparison of ``a`` and ``b``: one array per seed each, the same items in the same
    order within a seed. ``key`` fixes the resampling (use the comparison's name); ``binary``
    (default: detected) picks McNemar; ``hierarchical = False`` resamples items only."""
    if len(a) != len(b) or not a or any(len(x) != len(y) or len(x) == 0 for x, y in zip(a, b)):
        raise ValueError("paired: one non-empty, equally long score array per seed for each side")
    a = [np.asarray(x, dtype=float) for x in a]
    b = [np.asarray(y, dtype=float) for y in b]
    binary = is_binary(a + b) if binary is None else binary
    diffs = [x - y for x, y in zip(a, b)]
    per_seed = np.array([d.mean() for d in diffs])
    diff = float(per_seed.mean())
    rng = _generator(key)
    if binary:
        p, test = mcnemar(sum(int(((x == 100) & (y == 0)).sum()) for x, y in zip(a, b)),
                          sum(int(((x == 0) & (y == 100)).sum()) for x, y in zip(a, b)))
    else:
        centred = _item_bootstrap(diffs, rng, resamples) - diff
        p = float((1 + np.count_nonzero(np.abs(centred) >= abs(diff) - 1e-12)) / (1 + resamples))
        test = "paired bootstrap"
    nested = hierarchical and len(diffs) > 1
    draws = (_hierarchical_bootstrap if nested else _item_bootstrap)(diffs, rng, resamples)
    low, high = (float(x) for x in np.quantile(draws, [ALPHA / 2, 1 - ALPHA / 2]))
    if nested:
        test += f"; CI: hierarchical bootstrap ({len(diffs)} seeds, then items)"
    else:
        test += "; CI: paired bootstrap over items" + (" (one seed)" if len(diffs) == 1 else "")
    n = min(len(d) for d in diffs)
    item_var = float(np.mean([d.var(ddof=1) if len(d) > 1 else 0.0 for d in diffs]))
    seed_var = float(per_seed.var(ddof=1)) if len(diffs) > 1 else 0.0
    per_seed_var = max(item_var / n, seed_var)  # the variance of one seed's mean difference
    # no paired item differs (both sides score every item alike): no spread to size a difference by
    mde = Z_SUM * math.sqrt(per_seed_var / len(diffs)) if per_seed_var > 0 else math.nan
    needed_items = needed_seeds = None
    if abs(diff) > 1e-12:
        needed_items = math.ceil(item_var * (Z_SUM / diff) ** 2 / len(diffs))
        needed_seeds = math.ceil(per_seed_var * (Z_SUM / diff) ** 2)
    return Paired(n, len(diffs), float(np.mean([x.mean() for x in a])), float(np.mean([y.mean() for y in b])),
                  diff, low, high, p, test, mde, needed_items, needed_seeds)


def seed_paired(a: Sequence[float], b: Sequence[float], key: str) -> Paired:
    """A comparison of per-seed values (an aggregate such as Avg. Norm. or forgetting): the mean
    paired difference, a two-sided paired t-test over the seeds and a bootstrap over seeds for
    the interval; with one seed (or no spread) no test: p = 1 and an infinite ``mde``."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    diff = float(d.mean())
    if len(d) < 2 or float(d.std(ddof=1)) <= 1e-9 * max(1.0, float(np.abs(d).max())):  # rounding, not spread
        p, test = 1.0, "none (fewer than 2 seeds, or no spread)"
        low = high = diff
        mde, var = math.inf, 0.0
    else:
        p = float(stats.ttest_rel(x, y).pvalue)
        test = "paired t-test over seeds; CI: bootstrap over seeds"
        draws = d[_generator(key).integers(0, len(d), size=(RESAMPLES, len(d)))].mean(axis=1)
        low, high = (float(v) for v in np.quantile(draws, [ALPHA / 2, 1 - ALPHA / 2]))
        var = float(d.var(ddof=1))
        mde = Z_SUM * math.sqrt(var / len(d))
    needed = math.ceil(var * (Z_SUM / diff) ** 2) if abs(diff) > 1e-12 and var > 0 else None
    return Paired(0, len(d), float(x.mean()), float(y.mean()), diff, low, high, p, test, mde, None, needed)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given), capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = (p.size - np.arange(p.size)) * p[order]
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out = np.empty_like(p)
    out[order] = adjusted
    return [float(v) for v in out]


def interquartile_mean(values: Sequence[float]) -> float:
    """The mean of the middle 50% of ``values`` (rliable's IQM)."""
    return float(stats.trim_mean(np.asarray(values, dtype=float), 0.25))


def probability_of_improvement(a: dict[str, Sequence[float]], b: dict[str, Sequence[float]]) -> float:
    """P(a run of ``a`` scores above a run of ``b`` on the same task), averaged over tasks
    (``{task: per-seed values}``; ties count half): rliable's probability of improvement."""
    shares = []
    for task in sorted(set(a) & set(b)):
        x, y = np.asarray(a[task], dtype=float), np.asarray(b[task], dtype=float)
        if x.size and y.size:
            wins = (x[:, None] > y[None, :]).mean() + 0.5 * (x[:, None] == y[None, :]).mean()
            shares.append(float(wins))
    return float(np.mean(shares)) if shares else math.nan
