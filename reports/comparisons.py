"""Every method against a baseline, with its uncertainty: ``tables/comparisons.{csv,json,md,tex}``.

One row per (regime, backbone, method, baseline, task or aggregate, metric). Task rows compare
the final evaluation's per-item records (``items.jsonl``), seed-matched: the same seed and the
same item ids (``reports.paired.paired``); ``metric`` is ``score`` (points) or ``nll`` (nats).
Aggregate rows compare per-seed values (``reports.paired.seed_paired``): ``avg_norm``, and in
the sequential and multistage regimes ``forgetting`` (Avg. F) and ``bwt``; ``iqm_norm`` (the
interquartile mean of the normalized scores over seeds x tasks) and ``prob_improvement``
(rliable's probability that a run of the method beats one of the baseline on a task) have a
bootstrap interval over seeds and no test.

Holm's correction runs over a declared family: per regime, all (method, task) ``score``
comparisons against the baseline; every other metric is its own family per regime. a mark
(``MARK``) needs ``p_holm`` < 0.05 and an interval that excludes 0. A comparison that is not significant reads "below
resolution" when its interval still reaches the smallest detectable difference (``mde``), and
"within ±mde" when the interval lies inside it: never "no difference".
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reports import paired as pt
from reports.items import final_record
from reports.load import Run
from reports.metrics import average_forgetting, backward_transfer, normalized_score, own_stages
from reports.tables import (
    Table,
    avg_norm_by_seed,
    complete_matrix,
    final_scores,
    kept_tasks,
    normalizers,
    row_groups,
    score_matrix,
)

BASELINE = "full_sft"
MARK = "†"  # after a value whose comparison with the baseline has Holm-adjusted p < 0.05
SIGNIFICANT = 0.05
COLUMNS = ["regime", "backbone", "method", "baseline", "task", "metric", "n_items", "n_seeds", "mean_a", "mean_b",
           "diff", "ci_low", "ci_high", "p_value", "p_holm", "test", "mde", "needed_items", "needed_seeds", "verdict"]
HIGHER_IS_BETTER = {"score": True, "nll": False, "avg_norm": True, "forgetting": False, "bwt": True,
                    "iqm_norm": True, "prob_improvement": True}
AGGREGATE = "(all)"  # the ``task`` of an aggregate row


@dataclasses.dataclass
class Comparison:
    regime: str
    backbone: str
    method: str
    baseline: str
    task: str
    metric: str
    result: pt.Paired
    p_holm: float = math.nan
    tested: bool = True  # False: an interval only (iqm_norm, prob_improvement)

    @property
    def significant(self) -> bool:
        """Holm-adjusted p below ``SIGNIFICANT`` and an interval (over seeds, then items) that
        excludes 0: seeds that disagree withhold the verdict the items alone would give."""
        r = self.result
        return self.tested and self.p_holm < SIGNIFICANT and (r.ci_low > 0 or r.ci_high < 0)

    @property
    def verdict(self) -> str:
        r = self.result
        if not self.tested:
            return "interval only" if self.metric in ("iqm_norm", "prob_improvement") else "no test (one seed, or no spread)"
        if self.significant:
            better = (r.diff > 0) == HIGHER_IS_BETTER[self.metric]
            return "better" if better else "worse"
        if not math.isfinite(r.mde) or r.ci_high >= r.mde or r.ci_low <= -r.mde:
            return "below resolution"
        return "within ±mde"

    def row(self) -> dict[str, Any]:
        r = self.result

        def num(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else round(float(x), 6)

        return {"regime": self.regime, "backbone": self.backbone, "method": self.method, "baseline": self.baseline,
                "task": self.task, "metric": self.metric, "n_items": r.n_items, "n_seeds": r.n_seeds,
                "mean_a": num(r.mean_a), "mean_b": num(r.mean_b), "diff": num(r.diff), "ci_low": num(r.ci_low),
                "ci_high": num(r.ci_high), "p_value": num(r.p_value) if self.tested else None,
                "p_holm": num(self.p_holm) if self.tested else None, "test": r.test, "mde": num(r.mde),
                "needed_items": r.needed_items, "needed_seeds": r.needed_seeds, "verdict": self.verdict}


def item_pairs(a: Sequence[Run], b: Sequence[Run], task: str,
               key: str = "scores") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Seed-matched arrays of the final evaluation's per-item ``key`` (scores or nll) of ``task``:
    for every seed both sides ran, the items both scored, in id order."""
    xs, ys = [], []
    by_seed = {r.seed: r for r in b if r.ok}
    for run in sorted((r for r in a if r.ok), key=lambda r: r.seed):
        other = by_seed.get(run.seed)
        rec_a, rec_b = final_record(run, task), final_record(other, task) if other else None
        if rec_a is None or rec_b is None:
            continue
        va, vb = dict(zip(rec_a.ids, getattr(rec_a, key))), dict(zip(rec_b.ids, getattr(rec_b, key)))
        common = sorted(i for i in set(va) & set(vb) if va[i] is not None and vb[i] is not None)
        if common:
            xs.append(np.array([va[i] for i in common], dtype=float))
            ys.append(np.array([vb[i] for i in common], dtype=float))
    return xs, ys


def seed_values(group: Sequence[Run], metric: str, tasks: Sequence[str], best: dict[str, float]) -> dict[int, float]:
    """Per seed, an aggregate of one run: ``avg_norm``, ``forgetting`` (Avg. F) or ``bwt``."""
    if metric == "avg_norm":
        return avg_norm_by_seed(group, tasks, best)
    out = {}
    for r in group:
        if not complete_matrix(r, tasks):
            continue
        A = score_matrix(r, tasks)
        own = own_stages([s.trained_on for s in r.data.evaluation.stages], tasks)
        value = (average_forgetting if metric == "forgetting" else backward_transfer)(A, own)
        if value is not None:
            out[r.seed] = value
    return out


def normalized_by_seed(group: Sequence[Run], tasks: Sequence[str], best: dict[str, float]) -> dict[int, dict[str, float]]:
    """Per seed, each task's normalized final score (as in Avg. Norm.)."""
    out: dict[int, dict[str, float]] = {}
    for r in group:
        final = final_scores(r)
        chance = r.data.evaluation.chance if r.ok else {}
        for t in tasks:
            if t in final and t in best and (v := normalized_score(final[t], chance.get(t, 0.0), best[t])) is not None:
                out.setdefault(r.seed, {})[t] = v
    return out


def interval_rows(regime: str, backbone: str, method: str, baseline: str, a: dict[int, dict[str, float]],
                  b: dict[int, dict[str, float]]) -> list[Comparison]:
    """``iqm_norm`` and ``prob_improvement`` with bootstrap intervals over seeds."""
    seeds_a, seeds_b = sorted(a), sorted(b)
    if not seeds_a or not seeds_b:
        return []
    rng = np.random.default_rng([pt.SEED, *f"{regime}/{backbone}/{method}/{baseline}".encode()])

    def iqm(seeds: Sequence[int], side: dict[int, dict[str, float]]) -> float:
        return pt.interquartile_mean([v for s in seeds for v in side[s].values()])

    def poi(sa: Sequence[int], sb: Sequence[int]) -> float:
        tasks = sorted({t for s in sa for t in a[s]} & {t for s in sb for t in b[s]})
        return pt.probability_of_improvement({t: [a[s][t] for s in sa if t in a[s]] for t in tasks},
                                             {t: [b[s][t] for s in sb if t in b[s]] for t in tasks})

    draws_iqm, draws_poi = [], []
    for _ in range(400):
        sa = [seeds_a[i] for i in rng.integers(0, len(seeds_a), len(seeds_a))]
        sb = [seeds_b[i] for i in rng.integers(0, len(seeds_b), len(seeds_b))]
        draws_iqm.append(iqm(sa, a) - iqm(sb, b))
        draws_poi.append(poi(sa, sb) - 0.5)
    out = []
    # prob_improvement: mean_a is P(a run of the method beats one of the baseline), against 0.5 (no advantage)
    for metric, ma, mb, draws in (("iqm_norm", iqm(seeds_a, a), iqm(seeds_b, b), draws_iqm),
                                  ("prob_improvement", poi(seeds_a, seeds_b), 0.5, draws_poi)):
        low, high = (float(x) for x in np.quantile(draws, [0.025, 0.975]))
        result = pt.Paired(0, min(len(seeds_a), len(seeds_b)), ma, mb, ma - mb, low, high, math.nan,
                           "bootstrap over seeds (interval only)", math.nan, None, None)
        out.append(Comparison(regime, backbone, method, baseline, AGGREGATE, metric, result, tested=False))
    return out


def compare(runs: Sequence[Run], regime: str, methods: Sequence[str], tasks: Sequence[str],
            baseline: str = BASELINE) -> list[Comparison]:
    """Every row of ``regime`` against the ``baseline`` method's row of the same backbone, with
    Holm-adjusted p-values over each family."""
    groups = row_groups(runs, regime, methods)
    best, dropped = normalizers(runs, groups, tasks)
    out: list[Comparison] = []
    for backbone in sorted({b for b, _, _ in groups}):
        rows = [(label, group) for b, label, group in groups if b == backbone]
        base = next((group for label, group in rows if label == baseline), None)
        if base is None:
            continue
        kept = kept_tasks(tasks, dropped.get(backbone, {}))
        norm_base = normalized_by_seed(base, kept, best.get(backbone, {}))
        for label, group in rows:
            if label == baseline:
                continue
            name = f"{regime}/{backbone}/{label}/{baseline}"
            for task in tasks:
                for metric, key in (("score", "scores"), ("nll", "nll")):
                    xs, ys = item_pairs(group, base, task, key)
                    if xs:
                        out.append(Comparison(regime, backbone, label, baseline, task, metric,
                                              pt.paired(xs, ys, f"{name}/{task}/{metric}",
                                                        binary=None if metric == "score" else False)))
            aggregates = ["avg_norm"] + (["forgetting", "bwt"] if regime in ("sequential", "multistage") else [])
            for metric in aggregates:
                ta = seed_values(group, metric, kept if metric == "avg_norm" else tasks, best.get(backbone, {}))
                tb = seed_values(base, metric, kept if metric == "avg_norm" else tasks, best.get(backbone, {}))
                seeds = sorted(set(ta) & set(tb))
                if seeds:
                    result = pt.seed_paired([ta[s] for s in seeds], [tb[s] for s in seeds], f"{name}/{metric}")
                    out.append(Comparison(regime, backbone, label, baseline, AGGREGATE, metric, result,
                                          tested=math.isfinite(result.mde)))
            out += interval_rows(regime, backbone, label, baseline,
                                 normalized_by_seed(group, kept, best.get(backbone, {})), norm_base)
    for metric in HIGHER_IS_BETTER:
        family = [c for c in out if c.metric == metric and c.tested]
        for c, adjusted in zip(family, pt.holm([c.result.p_value for c in family])):
            c.p_holm = adjusted
    return out


def family_note(comparisons: Sequence[Comparison], baseline: str) -> str:
    scores = [c for c in comparisons if c.metric == "score"]
    return (f"Holm's correction over the family of all {len(scores)} (method, task) score comparisons against "
            f"{baseline} in this regime; each other metric is its own family.")


def resolution_line(comparisons: Sequence[Comparison], tasks: Sequence[str]) -> str:
    """Per task, the smallest difference in final score the comparisons could resolve."""
    parts = []
    for t in tasks:
        mdes = [c.result.mde for c in comparisons if c.task == t and c.metric == "score" and math.isfinite(c.result.mde)]
        if mdes:
            low, high = min(mdes), max(mdes)
            parts.append(f"{t} {low:.1f}" + (f"-{high:.1f}" if high - low >= 0.05 else ""))
    if not parts:
        return ""
    return ("Resolution: the smallest difference in final score detectable against the baseline (80% power, "
            "two-sided alpha 0.05, paired by seed and item, from the observed discordance and seed spread): "
            + "; ".join(parts) + " points.")


def rows_of(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    return [c.row() for c in comparisons]


def to_csv(comparisons: Sequence[Comparison]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows_of(comparisons):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def to_json(comparisons: Sequence[Comparison]) -> str:
    return json.dumps(rows_of(comparisons), indent=1, sort_keys=False) + "\n"


def display_rows(comparisons: Sequence[Comparison]) -> list[list[str]]:
    """The human table: one line per comparison, the mark on significant ones."""
    def f(x: float | None, d: int = 1) -> str:
        return "—" if x is None or not math.isfinite(x) else f"{x:.{d}f}"

    out = []
    for c in comparisons:
        r = c.result
        d = 3 if c.metric in ("nll", "prob_improvement") else 1
        p = "" if not c.tested else f"{r.p_value:.3g}"
        ph = "" if not c.tested else f"{c.p_holm:.3g}" + (f" {MARK}" if c.significant else "")
        needed = "" if r.needed_items is None and r.needed_seeds is None else (
            f"{r.needed_items} items" if r.needed_items is not None else "") + (
            (" or " if r.needed_items is not None else "") + f"{r.needed_seeds} seeds" if r.needed_seeds is not None else "")
        out.append([c.regime, c.backbone, c.method, c.task, c.metric, str(r.n_seeds),
                    str(r.n_items) if r.n_items else "", f"{f(r.mean_a, d)} vs {f(r.mean_b, d)}",
                    f"{f(r.diff, d)} [{f(r.ci_low, d)}, {f(r.ci_high, d)}]", p, ph, f(r.mde, d), needed, c.verdict])
    return out


DISPLAY_HEADERS = ["regime", "backbone", "method", "task", "metric", "seeds", "items", "method vs baseline",
                   "diff [95% CI]", "p", "p (Holm)", "mde", "needed (80% power)", "verdict"]


def _welch(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Two-sided Welch p over seeds, or None with fewer than two values on a side (or no spread)."""
    from scipy import stats

    if len(x) < 2 or len(y) < 2 or (np.std(x) == 0 and np.std(y) == 0):
        return None
    return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def separated_columns(table: Table, groups: Sequence[Sequence[Run]] | None = None,
                      item_tasks: Sequence[str] = ()) -> list[bool]:
    """Per column, whether its best row differs from every other row at Holm-adjusted p < 0.05
    (the family: the best row against each other row of the column). The first
    ``len(item_tasks)`` columns are task scores tested per item against ``groups`` (the table's
    rows' runs, in order); the others per seed (Welch)."""
    out = []
    best = table.best()
    for j, hib in enumerate(table.higher_is_better):
        means = [(i, float(np.mean(values))) for i, (_, v) in enumerate(table.rows) if (values := v[j])]
        top_mean = best[j]
        if hib is None or top_mean is None or len(means) < 2:
            out.append(False)
            continue
        top = next(i for i, m in means if abs(m - top_mean) < 1e-9)
        pvalues: list[float | None] = []
        for i, _ in means:
            if i == top:
                continue
            if groups is not None and j < len(item_tasks):
                xs, ys = item_pairs(groups[top], groups[i], item_tasks[j])
                pvalues.append(pt.paired(xs, ys, f"{table.name}/{j}/{i}", resamples=400).p_value if xs else None)
            else:
                pvalues.append(_welch(table.rows[top][1][j] or [], table.rows[i][1][j] or []))
        out.append(None not in pvalues and max(pt.holm([p for p in pvalues if p is not None])) < SIGNIFICANT)
    return out


def signal_to_noise(table: Table) -> dict[str, float]:
    """Per column: the spread of the rows' means over the mean spread of seeds within a row
    (only where at least two rows have at least two seeds)."""
    out = {}
    for j, column in enumerate(table.columns):
        if table.higher_is_better[j] is None:
            continue
        rows = [values for _, v in table.rows if (values := v[j]) and len(values) >= 2]
        if len(rows) < 2:
            continue
        noise = float(np.mean([np.std(r, ddof=1) for r in rows]))
        signal = float(np.std([np.mean(r) for r in rows], ddof=1))
        out[column] = math.inf if noise == 0 else signal / noise
    return out


def mark_table(table: Table, comparisons: Sequence[Comparison], baseline: str, columns: dict[int, tuple[str, str]],
               groups: Sequence[Sequence[Run]] | None = None, item_tasks: Sequence[str] = (),
               tasks: Sequence[str] = ()) -> None:
    """Bold only where separated, ``MARK`` where the comparison with ``baseline`` is significant
    (``columns``: column index -> (task, metric) of its comparison), and the caption lines that
    say so: the family, the resolution per task, and the columns whose signal-to-noise is below 1."""
    table.separated = separated_columns(table, groups, item_tasks)
    by_key = {(c.backbone, c.method, c.task, c.metric): c for c in comparisons}
    table.marks = [["" for _ in table.columns] for _ in table.rows]
    for i, (labels, _) in enumerate(table.rows):
        backbone, method = labels[0], labels[1]
        for j, (task, metric) in columns.items():
            c = by_key.get((backbone, method, task, metric))
            if c is not None and c.significant:
                table.marks[i][j] = MARK
    weak = {k: v for k, v in signal_to_noise(table).items() if v < 1}
    notes = [f"Bold: the best mean of a column, only where it differs from every other row at Holm-adjusted "
             f"p < {SIGNIFICANT} (per item and seed for task scores, Welch over seeds otherwise); none bold = "
             f"none separated. {MARK} = differs from {baseline} at Holm-adjusted p < {SIGNIFICANT}, its 95% interval "
             f"excluding 0 "
             f"(comparisons.csv). {family_note([c for c in comparisons if c.regime == table_regime(table)], baseline)}"]
    if line := resolution_line([c for c in comparisons if c.regime == table_regime(table)], tasks):
        notes.append(line)
    if weak:
        notes.append("Signal/noise (spread of the methods' means over the spread across seeds) below 1, so these "
                     "columns should not rank methods: " + ", ".join(f"{k} {v:.2f}" for k, v in weak.items()) + ".")
    table.footnote = (table.footnote + " " + " ".join(notes)).strip()


def table_regime(table: Table) -> str:
    """The regime a main or forgetting table is about (from its name)."""
    name = table.name
    return name.split("_", 1)[1] if "_" in name else "sequential"
