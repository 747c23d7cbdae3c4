"""The number a tuning trial maximizes, from its own result alone.

The report's Avg. Norm. divides by the best score any method reached, which a single trial cannot
know while the others are still running. A trial is therefore scored against fixed ends instead:
each task's final score as a share of the room between chance and the top of its scale,
``100 * (s - chance) / (top - chance)`` (top: 100, or 10 for a judge's 1-10 ratings), averaged
over tasks (``avg_norm``). ``avg_norm - forgetting`` subtracts the mean forgetting on the same
scale: per task trained before the last stage, its best normalized score at an earlier stage
minus its final one.
"""

from __future__ import annotations

from reports.schema import Result, StageResult

JUDGE_TOP = 10.0


def _normalized(result: Result, stage: StageResult) -> dict[str, float]:
    ev = result.evaluation
    out = {}
    for task, score in stage.scores.items():
        if score is None:
            continue
        chance = ev.chance.get(task, 0.0)
        detail = stage.details.get(task) if isinstance(stage.details.get(task), dict) else {}
        scorer = str(detail.get("scorer") or ev.scorers.get(task, ""))
        top = JUDGE_TOP if scorer.startswith("judge") else 100.0
        out[task] = 100.0 * (score - chance) / max(top - chance, 1e-9)
    return out


def objective(result: Result, name: str) -> float | None:
    """``name`` (``bench.run.tuning_spec.OBJECTIVES``) of a successful result; None otherwise."""
    stages = result.evaluation.stages
    if not result.ok or not stages:
        return None
    final = _normalized(result, stages[-1])
    if not final:
        return None
    value = sum(final.values()) / len(final)
    if name == "avg_norm":
        return value
    earlier = [_normalized(result, s) for s in stages[:-1]]
    last_trained = set(stages[-1].trained_on)
    drops = [max(e.get(t, final[t]) for e in earlier) - final[t] for t in final
             if t not in last_trained and earlier]
    return value - (sum(drops) / len(drops) if drops else 0.0)
