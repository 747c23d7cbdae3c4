"""Tables of the training analyses (``[analysis]`` in the config) that any method can run with:
importance drift and gradient conflict, read from each run's ``train.observers`` summary; mean
± std over seeds, one row per method and config variant."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from reports.load import Run
from reports.tables import Table, row_groups, runs_label


def observed(run: Run, name: str) -> dict[str, Any] | None:
    return run.data.train.observers.get(name) if run.ok else None


def mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


Column = tuple[str, Callable[[dict[str, Any]], float | None]]  # header, value of one run's summary


def analysis_table(runs: Sequence[Run], regime: str, methods: Sequence[str], name: str, table: str,
                   columns: Sequence[Column], note: str) -> Table | None:
    """One row per method variant that ran analysis ``name``: each column's value per seed."""
    rows = []
    for backbone, method, group in row_groups(runs, regime, methods):
        summaries = [s for r in group if (s := observed(r, name)) is not None]
        if summaries:
            values = [[v for s in summaries if (v := value(s)) is not None] or None for _, value in columns]
            rows.append(([backbone, method, runs_label(group)], values))
    if not rows:
        return None
    return Table(f"{table}_{regime}", ["backbone", "method", "runs"], [h for h, _ in columns], rows,
                 [None] * len(columns), note, decimals=2)


# Each analysis table: (result key, table name, columns as (header, value of the run's summary), note).
DRIFT = ("importance_drift", "drift", [
    ("snapshots", lambda s: float(s["snapshots"])),
    ("J prev (mean)", lambda s: mean(s["jaccard_prev"])),
    ("J prev (min)", lambda s: min((x for x in s["jaccard_prev"] if x is not None), default=None)),
    ("J first (last)", lambda s: s["jaccard_first"][-1]),
    ("ρ prev (mean)", lambda s: mean(s["spearman_prev"])),
], "Importance drift (analysis.importance_drift): an fp32 EMA of g² over the trainable parameters (or "
   "AdamW's second moment with source = adam_v), snapshotted every N steps. "
   "J prev = Jaccard of the top-rho set with the previous snapshot's (mean, "
   "and min over snapshots); J first = the last snapshot's Jaccard with the first; ρ prev = Spearman "
   "correlation of per-tensor mean importance with the previous snapshot (mean). 1.0 = static.")
CONFLICT = ("gradient_conflict", "conflict", [
    ("measurements", lambda s: float(s["measurements"])),
    ("cos (mean)", lambda s: mean(s["mean_cosine"])),
    ("cos (min)", lambda s: min((c for m in s["cosines"] for c in m.values() if c is not None), default=None)),
    ("neg. pairs %", lambda s: None if (m := mean(s["negative_fraction"])) is None else 100 * m),
], "Gradient conflict (analysis.gradient_conflict; our definition, after PCGrad: two task gradients "
   "conflict when their cosine is negative). Every N steps one gradient per task on fixed batches of its "
   "training rows, nothing updated. cos = pairwise cosine over all trainable parameters (mean over pairs "
   "and measurements; min over all); neg. % = share of negative pairs, mean over measurements.")


def drift_table(runs: Sequence[Run], regime: str, methods: Sequence[str]) -> Table | None:
    """Is importance static? Jaccard of each snapshot's top-rho set with the previous and the
    first snapshot, Spearman correlation of per-tensor mean importance with the previous one."""
    return analysis_table(runs, regime, methods, *DRIFT)


def conflict_table(runs: Sequence[Run], regime: str, methods: Sequence[str]) -> Table | None:
    """Mean pairwise cosine of task gradients and the fraction of conflicting (negative) pairs."""
    return analysis_table(runs, regime, methods, *CONFLICT)
