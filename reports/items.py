"""What the per-item records of runs (``evaluation/items.jsonl``, ``reports.schema.ItemRecord``)
give the tables: the standard error of a score over test items, per-item flips between two
evaluations, and their agreement across seeds. Pure functions of loaded runs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from reports.load import Run
from reports.schema import ItemRecord


def record(run: Run, task: str, evaluation: str | int) -> ItemRecord | None:
    """The run's record of ``task`` at ``evaluation`` (``"base"`` or a stage index), or None."""
    return next((r for r in run.items if r.task == task and r.evaluation == evaluation), None)


def final_record(run: Run, task: str) -> ItemRecord | None:
    """The record of ``task`` after the run's last stage."""
    if not run.ok or not run.data.evaluation.stages:
        return None
    return record(run, task, run.data.evaluation.stages[-1].stage)


def standard_error(values: Sequence[float | None]) -> float | None:
    """Standard error of a mean over test items: sample std / sqrt(n) over the scored items (an
    unparsed judge reply has none); None for n < 2."""
    scores = [x for x in values if x is not None]
    n = len(scores)
    if n < 2:
        return None
    mean = sum(scores) / n
    return math.sqrt(sum((x - mean) ** 2 for x in scores) / (n - 1) / n)


def mean_error(errors: Sequence[float | None]) -> float | None:
    """The item-level standard error of a mean over seeds, ``sqrt(sum se_i^2) / n``: each seed's
    score is a mean over items with its own error; None unless every seed has one."""
    if not errors or any(e is None for e in errors):
        return None
    return math.sqrt(sum(e * e for e in errors if e is not None)) / len(errors)


def final_error(runs: Sequence[Run], task: str) -> float | None:
    """Item-level standard error of the mean final score of ``task`` over ``runs`` (one per seed)."""
    records = [final_record(r, task) for r in runs]
    return mean_error([None if rec is None else standard_error(rec.scores) for rec in records])


def binary(scores: Sequence[float | None]) -> bool:
    """Scores of a right-or-wrong metric (exact match, accuracy: 0 or 100 per item)."""
    return all(x in (0.0, 100.0) for x in scores)


def flips(earlier: ItemRecord, final: ItemRecord) -> tuple[set[int], set[int], int] | None:
    """(ids right at ``earlier`` and wrong at ``final``, ids wrong then right, items in both) over
    the items both evaluations scored; None unless both are right-or-wrong scores."""
    if not (binary(earlier.scores) and binary(final.scores)):
        return None
    before, after = dict(zip(earlier.ids, earlier.scores)), dict(zip(final.ids, final.scores))
    common = sorted(set(before) & set(after))
    forgot = {i for i in common if before[i] == 100.0 and after[i] == 0.0}
    gained = {i for i in common if before[i] == 0.0 and after[i] == 100.0}
    return forgot, gained, len(common)


def chance_flip_rate(chance: float) -> float:
    """Share (%) of items expected to flip right -> wrong (or wrong -> right) between two
    evaluations from guessing alone: an item answered by a uniform guess is right with
    probability ``c = chance / 100`` each time, independently, so ``100 c (1 - c)``."""
    c = chance / 100.0
    return 100.0 * c * (1.0 - c)


def agreeing(flipped: Sequence[set[int]], items: int) -> float | None:
    """Share (%) of ``items`` that flipped in at least half of the seeds (``flipped``: one set of
    ids per seed): flips that recur across seeds, not one seed's noise."""
    if not flipped or not items:
        return None
    need = math.ceil(len(flipped) / 2)
    counts: dict[int, int] = {}
    for ids in flipped:
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
    return 100.0 * sum(1 for c in counts.values() if c >= need) / items
