"""``isobench export results/STUDY``: a study's numbers as long tables for pandas.

- ``scores.<fmt>``: one row per run x stage x task: run_id, method, variant, seed, backbone,
  regime, stage, trained_on, task, score, nll, scorer, chance, and every method option as
  ``option.<name>``;
- ``runs.<fmt>``: one row per run: identity, status, error type, train stats (steps, loss,
  tokens/s, wall time, peak memory), precision, resumes, git commit and dirty flag, the budget
  (updated share, state bytes per parameter) and the retention NLL before and after training;
- ``items.<fmt>``: one row per run x evaluation (``base`` or the stage) x task x test item:
  identity, evaluation, task, item id, the item's score (0-100) and its gold-answer NLL, from
  each run's ``evaluation/items.jsonl``, for computing other per-item measures;
- ``comparisons.<fmt>``: every method against ``full_sft`` (or ``baseline``), paired by seed and
  item, one row per (regime, backbone, method, task or aggregate, metric), as in the report's
  ``tables/comparisons.csv`` (``reports.comparisons``).
Formats: ``csv`` and ``jsonl`` (standard library), ``parquet`` (needs pandas and pyarrow).
Only successful runs have score rows; every run has a ``runs`` row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reports.load import Run, load_study

FORMATS = ("csv", "jsonl", "parquet")


def score_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        if not r.ok or r.result is None:
            continue
        options = {f"option.{k}": json.dumps(v) if isinstance(v, list | dict) else v
                   for k, v in sorted(((r.config or {}).get("method", {}).get("options") or {}).items())}
        ev = r.result.evaluation
        for stage in ev.stages:
            for task in r.result.run.tasks:
                rows.append({"run_id": r.run_id, "method": r.method, "variant": r.variant, "seed": r.seed,
                             "backbone": r.backbone, "regime": r.regime, "stage": stage.stage,
                             "trained_on": "+".join(stage.trained_on), "task": task, "score": stage.scores.get(task),
                             "nll": stage.nll.get(task), "scorer": ev.scorers.get(task), "chance": ev.chance.get(task),
                             **options})
    return rows


def run_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        res = r.result
        summary = res.train.summary if res is not None else {}
        rows.append({"run_id": r.run_id, "method": r.method, "variant": r.variant, "seed": r.seed,
                     "backbone": r.backbone, "regime": r.regime, "status": r.status,
                     "error": res.run.error.type if res is not None and res.run.error is not None else None,
                     "steps": summary.get("steps"), "loss_first": summary.get("loss_first"),
                     "loss_last": summary.get("loss_last"), "tokens_per_s": summary.get("tokens_per_s"),
                     "train_s": summary.get("train_s"), "wall_s": res.train.wall_s if res is not None else None,
                     "peak_memory_bytes": res.train.peak_memory_bytes if res is not None else None,
                     "precision": res.train.precision.get("policy") if res is not None else None,
                     "resumes": len(res.run.resumed_from) if res is not None else None,
                     "git_commit": res.provenance.git_commit if res is not None else None,
                     "git_dirty": res.provenance.git_dirty if res is not None else None,
                     "updated_share": res.train.budget.get("updated_share") if res is not None else None,
                     "state_bytes_per_param": res.train.budget.get("state_bytes_per_param") if res is not None else None,
                     "retention_base": res.evaluation.retention_base if res is not None else None,
                     "retention_final": (res.evaluation.stages[-1].retention
                                         if res is not None and res.evaluation.stages else None)})
    return rows


def item_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        for rec in r.items:
            for item, score, nll in zip(rec.ids, rec.scores, rec.nll):
                rows.append({"run_id": r.run_id, "method": r.method, "variant": r.variant, "seed": r.seed,
                             "backbone": r.backbone, "regime": r.regime, "evaluation": str(rec.evaluation),
                             "task": rec.task, "item": item, "score": score, "nll": nll})
    return rows


def comparison_rows(runs: Sequence[Run], study_dir: Path, baseline: str) -> list[dict[str, Any]]:
    from reports import comparisons
    from reports.load import method_order
    from reports.tables import ordered_methods, ordered_tasks

    methods, tasks = ordered_methods(runs, method_order(study_dir)), ordered_tasks(runs, None)
    regimes = sorted({r.regime for r in runs if r.regime != "?"})
    return comparisons.rows_of([c for regime in regimes for c in comparisons.compare(runs, regime, methods, tasks,
                                                                                   baseline)])


def write_rows(rows: list[dict[str, Any]], path: Path, fmt: str, columns: list[str] | None = None) -> None:
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    elif fmt == "parquet":
        import pandas as pd

        pd.DataFrame(rows, columns=columns).to_parquet(path, index=False)
    else:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")


def export(study_dir: str | Path, fmt: str = "csv", out_dir: str | Path | None = None,
           baseline: str = "full_sft") -> list[Path]:
    """Write ``scores.<fmt>``, ``runs.<fmt>``, ``items.<fmt>`` and ``comparisons.<fmt>`` (default
    into ``<study>/export/``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    runs = [r for r in load_study(study_dir) if r.status != "stale"]
    out = Path(out_dir) if out_dir is not None else Path(study_dir) / "export"
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"scores.{fmt}", out / f"runs.{fmt}", out / f"items.{fmt}", out / f"comparisons.{fmt}"]
    write_rows(score_rows(runs), paths[0], fmt)
    write_rows(run_rows(runs), paths[1], fmt)
    write_rows(item_rows(runs), paths[2], fmt)
    from reports.comparisons import COLUMNS

    write_rows(comparison_rows(runs, Path(study_dir), baseline), paths[3], fmt, COLUMNS)
    return paths
