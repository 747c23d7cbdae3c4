"""Tables of the training analyses (``[analysis]`` in the config) that any method can run with:
importance drift and gradient conflict, read from each run's ``train.observers`` summary; mean
± std over seeds, one row per method and config variant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reports.load import Run
from reports.tables import Table, row_groups, runs_label


def observed(run: Run, name: str) -> dict[str, Any] | None:
    return run.data.train.observers.get(name) if run.ok else None


def mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def per_seed(group: Sequence[Run], name: str, value: Any) -> list[float] | None:
    """``value(summary)`` for every run of ``group`` that has the analysis ``name``."""
    out = [v for r in group if (s := observed(r, name)) is not None and (v := value(s)) is not None]
    return out or None


def drift_table(runs: Sequence[Run], regime: str, methods: Sequence[str]) -> Table | None:
    """Is importance static? Jaccard of each snapshot's top-rho set with the previous and the
    first snapshot, Spearman correlation of per-tensor mean importance with the previous one."""
    rows = []
    for backbone, method, group in row_groups(runs, regime, methods):
        if not any(observed(r, "importance_drift") for r in group):
            continue
        rows.append(([backbone, method, runs_label(group)], [
            per_seed(group, "importance_drift", lambda s: float(s["snapshots"])),
            per_seed(group, "importance_drift", lambda s: mean(s["jaccard_prev"])),
            per_seed(group, "importance_drift", lambda s: min((x for x in s["jaccard_prev"] if x is not None),
                                                              default=None)),
            per_seed(group, "importance_drift", lambda s: s["jaccard_first"][-1]),
            per_seed(group, "importance_drift", lambda s: mean(s["spearman_prev"])),
        ]))
    if not rows:
        return None
    note = ("Importance drift (analysis.importance_drift): an fp32 EMA of g² over the trainable parameters (or "
            "AdamW's second moment with source = adam_v), snapshotted every N steps. "
            "J prev = Jaccard of the top-rho set with the previous snapshot's (mean, "
            "and min over snapshots); J first = the last snapshot's Jaccard with the first; ρ prev = Spearman "
            "correlation of per-tensor mean importance with the previous snapshot (mean). 1.0 = static.")
    return Table(f"drift_{regime}", ["backbone", "method", "runs"],
                 ["snapshots", "J prev (mean)", "J prev (min)", "J first (last)", "ρ prev (mean)"], rows,
                 [None] * 5, note, decimals=2)


def conflict_table(runs: Sequence[Run], regime: str, methods: Sequence[str]) -> Table | None:
    """Mean pairwise cosine of task gradients and the fraction of conflicting (negative) pairs."""
    rows = []
    for backbone, method, group in row_groups(runs, regime, methods):
        if not any(observed(r, "gradient_conflict") for r in group):
            continue
        rows.append(([backbone, method, runs_label(group)], [
            per_seed(group, "gradient_conflict", lambda s: float(s["measurements"])),
            per_seed(group, "gradient_conflict", lambda s: mean(s["mean_cosine"])),
            per_seed(group, "gradient_conflict", lambda s: min((c for m in s["cosines"] for c in m.values()
                                                                if c is not None), default=None)),
            per_seed(group, "gradient_conflict", lambda s: None if (m := mean(s["negative_fraction"])) is None
                     else 100 * m),
        ]))
    if not rows:
        return None
    note = ("Gradient conflict (analysis.gradient_conflict; our definition, after PCGrad: two task gradients "
            "conflict when their cosine is negative). Every N steps one gradient per task on fixed batches of its "
            "training rows, nothing updated. cos = pairwise cosine over all trainable parameters (mean over pairs "
            "and measurements; min over all); neg. % = share of negative pairs, mean over measurements.")
    return Table(f"conflict_{regime}", ["backbone", "method", "runs"],
                 ["measurements", "cos (mean)", "cos (min)", "neg. pairs %"], rows, [None] * 4, note, decimals=2)
