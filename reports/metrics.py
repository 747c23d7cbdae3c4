"""Metric definitions, once, as pure functions (none mutates its input).

Scores are 0-100 (accuracy or exact match). ``A[k][j]`` is the score of task ``j`` after
stage ``k`` (``K`` stages). A task's own stage is the one that trained it: stage ``j`` in the
sequential regime, its group's stage in the multistage regime (``own_stages``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Matrix = Sequence[Sequence[float]]
# A run whose lost-update sentinel (bench/engine/sentinel.py) finds more than this fraction of updated
# entries unchanged over a stage is flagged: fp32 and bf16-mixed measured 0.00-0.01% never-moved
# after 10 steps of SmolLM2 at lr 1e-5 and 2e-5, bf16-pure 96-98% (docs/perf.md, numerics table).
LOST_UPDATE_THRESHOLD = 0.05
DRIFT = "set_drift"  # event kind: a set of entries re-selected over training (e.g. the entries a method freezes)
SCHEDULE = "schedule"  # event kind: a method's self-adapted settings (a share ``ratio``, an ``interval`` in steps)


def normalized_score(score: float, chance: float, best: float) -> float | None:
    """``100 * (score - chance) / (best - chance)``: 0 = chance, 100 = the best score any method
    reached on this task for this backbone; None when ``best <= chance`` (nothing to normalize by).
    Negative when below chance."""
    if best - chance <= 1e-12:
        return None
    return 100.0 * (score - chance) / (best - chance)


# Avg. Norm. leaves a task out for a backbone when the best method's mean final score is within
# this many item-level standard errors of chance (``normalizable``).
FLOOR_SE = 2.0


def normalizable(best: float, chance: float, best_error: float | None) -> bool:
    """Whether ``normalized_score`` is meaningful for a task: its denominator ``best - chance``
    must exceed ``FLOOR_SE`` item-level standard errors of the best mean (``best_error``; without
    per-item records, any positive margin). When the best method is within noise of chance the
    denominator is noise too, and a score divided by it can land anywhere (a smoke study printed
    ``83.3 ± 117.9``); such a task is left out of Avg. Norm. for that backbone and the table's
    footnote says so, rather than clipping or shrinking the score, which would hide the problem."""
    margin = best - chance
    return margin > 1e-12 and (best_error is None or margin > FLOOR_SE * best_error)


def average_normalized(scores: dict[str, float], chance: dict[str, float], best: dict[str, float]) -> float | None:
    """Avg. Norm.: mean of ``normalized_score`` over tasks where it is defined (None if none)."""
    values = [normalized_score(scores[t], chance[t], best[t]) for t in scores]
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def own_stages(trained_on: Sequence[Sequence[str]], tasks: Sequence[str]) -> list[int]:
    """Per task, the stage that trained it (its "own stage"): ``j`` in the sequential regime, its
    group's stage in the multistage regime. Raises ``ValueError`` if a task is trained in no
    stage or in several."""
    own = []
    for t in tasks:
        where = [k for k, group in enumerate(trained_on) if t in group]
        if len(where) != 1:
            raise ValueError(f"task {t!r} is trained in {len(where)} stages; forgetting needs exactly one")
        own.append(where[0])
    return own


def forgetting(A: Matrix, own: Sequence[int] | None = None) -> list[float]:
    """Per-task forgetting ``F_j = max_{k<K-1} A[k][j] - A[K-1][j]`` (``K`` stages) for the tasks
    whose own stage is not the last (``own``: default ``j``, the sequential regime), in task
    order. Positive = the final model is worse than the best earlier one; negative = the task
    kept improving after its stage."""
    K = len(A)
    own = list(range(len(A[0]))) if own is None else own
    return [max(A[k][j] for k in range(K - 1)) - A[K - 1][j] for j in range(len(own)) if own[j] < K - 1]


def average_forgetting(A: Matrix, own: Sequence[int] | None = None) -> float | None:
    """Mean of ``forgetting(A, own)``; None when no task was trained before the last stage."""
    f = forgetting(A, own)
    return sum(f) / len(f) if f else None


def backward_transfer(A: Matrix, own: Sequence[int] | None = None) -> float | None:
    """``BWT = mean_j (A[K-1][j] - A[own_j][j])`` over tasks whose own stage is not the last:
    negative = forgetting, positive = later stages helped earlier tasks. None if there are none."""
    K = len(A)
    own = list(range(len(A[0]))) if own is None else own
    diffs = [A[K - 1][j] - A[own[j]][j] for j in range(len(own)) if own[j] < K - 1]
    return sum(diffs) / len(diffs) if diffs else None


def learning(A: Matrix, base: Sequence[float | None], own: Sequence[int] | None = None) -> list[float | None]:
    """Per task, the score gained in its own stage (plasticity; the papers' learning next to
    forgetting): ``A[own_j][j] - A[own_j - 1][j]``, or ``- base_j`` when it is the first stage
    (None when that base score is unknown)."""
    own = list(range(len(A[0]))) if own is None else own
    before = [A[k - 1][j] if k > 0 else base[j] for j, k in enumerate(own)]
    return [None if b is None else A[k][j] - b for (j, k), b in zip(enumerate(own), before)]


def change_vs_base(final: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """Retention vs the untrained model, per task: ``final - base`` in score points
    (negative = the fine-tuned model lost ability the base model had)."""
    return {t: final[t] - base[t] for t in final}


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation with n-1, n); std is None for n < 2, both None for n = 0."""
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = sum(values) / n
    if n < 2:
        return mean, None, n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)), n


def drift_series(events: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """From a run's ``set_drift`` events (a tracked set of entries re-selected over training):
    steps, Jaccard with the previous set and with the first set, and the set's fraction of the
    entries, in selection order (``index``)."""
    ordered = sorted(events, key=lambda e: e["index"])
    return {"step": [e["step"] for e in ordered], "jaccard_prev": [e.get("jaccard_prev") for e in ordered],
            "jaccard_first": [e.get("jaccard_first") for e in ordered], "fraction": [e["fraction"] for e in ordered]}
