"""``isobench report results/<study>``: every table and plot from the result files alone.

Writes ``<study>/tables/``; identical inputs give byte-identical outputs. Imports neither torch
nor ray, so it runs wherever the result files are.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from reports.analysis_tables import conflict_table, drift_table
from reports.html import page
from reports.load import Run, load_study, method_order
from reports.metrics import LOST_UPDATE_THRESHOLD
from reports.plots import drift_plots, heatmaps, score_bars
from reports.sensitivity import sensitivity_plots, sensitivity_table
from reports.tables import forgetting_table, main_table, ordered_methods, ordered_tasks, significance_table


def error_type(run: Run) -> str | None:
    error = run.result.run.error if run.result is not None else None
    return error.type if error is not None else None


def lost_updates(runs: Sequence[Run]) -> list[str]:
    """Runs whose lost-update sentinel exceeds the threshold: their frozen entries may be
    rounding, not a deliberate freeze."""
    out = []
    for r in runs:
        records = (r.result.train.observers.get("lost_update") or []) if r.result is not None else []
        worst = max((x for x in records if x.get("fraction") is not None), key=lambda x: x["fraction"], default=None)
        if worst is not None and worst["fraction"] > LOST_UPDATE_THRESHOLD:
            policy = r.result.train.precision.get("policy") if r.result is not None else None
            out.append(f"{r.run_id} ({policy}): {100 * worst['fraction']:.1f}% of the entries with a gradient never "
                       f"changed in stage {worst['stage']} (threshold {100 * LOST_UPDATE_THRESHOLD:.0f}%)")
    return out


def write(path: Path, text: str) -> None:
    path.write_text(text)


def report(study_dir: str | Path, methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
           out_dir: str | Path | None = None) -> str:
    """Rebuild ``<study>/tables/`` (or ``out_dir``) and return the main table(s) as Markdown for
    the terminal. Tables are written into a folder beside it and swapped in only when all are
    done: a failed report leaves the previous tables as they were."""
    study_dir = Path(study_dir)
    runs = load_study(study_dir)
    if not runs:
        raise FileNotFoundError(f"{study_dir}: no result.json found under it")
    out = Path(out_dir) if out_dir is not None else study_dir / "tables"
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        text = write_all(study_dir.name, runs, methods or method_order(study_dir), tasks, staging)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return text.replace(str(staging), str(out))


def write_all(study: str, runs: list[Run], methods: Sequence[str] | None, tasks: Sequence[str] | None,
              out: Path) -> str:
    """Every table and plot into ``out``; returns the terminal summary."""
    row_methods, task_order = ordered_methods(runs, methods), ordered_tasks(runs, tasks)
    shown = []
    regimes = sorted({r.regime for r in runs if r.status != "stale" and r.regime != "?"})
    tables = [main_table(runs, regime, row_methods, task_order) for regime in regimes]
    tables += [forgetting_table(runs, row_methods, task_order, regime) for regime in regimes
               if regime in ("sequential", "multistage")]
    extra = [make(runs, regime, row_methods) for regime in regimes for make in (drift_table, conflict_table)]
    extra += [sensitivity_table(runs, regime, row_methods, task_order) for regime in regimes]
    tables += [t for t in extra if t is not None]
    for table in tables:
        write(out / f"{table.name}.md", table.markdown())
        write(out / f"{table.name}.tex", table.latex())
        write(out / f"{table.name}.csv", table.csv())
        shown.append(f"## {table.name}\n\n{table.markdown()}")
    significance = significance_table(runs, row_methods, task_order)
    for ext, text in significance.items():
        write(out / f"significance.{ext}", text)
    plots = drift_plots(runs, out) + score_bars(runs, row_methods, task_order, out) + \
        heatmaps(runs, row_methods, task_order, out) + \
        [p for regime in regimes for p in sensitivity_plots(runs, regime, row_methods, task_order, out)]
    counted = [r for r in runs if r.status != "stale"]
    failed = [r for r in counted if r.status == "failed"]
    other = [r for r in counted if r.status not in ("success", "failed")]
    stale = len(runs) - len(counted)
    lossy = lost_updates(counted)
    status = (f"{len(counted)} runs: {len(counted) - len(failed) - len(other)} succeeded, {len(failed)} failed, "
              f"{len(other)} missing or corrupt" + "".join(f"\n  failed: {r.run_id} ({error_type(r)})" for r in failed)
              + "".join(f"\n  {r.status}: {r.run_id}" + (f" ({r.problem})" if r.problem else "") for r in other)
              + (f"\n  {stale} cell(s) of earlier versions of the grid files, without results, not counted" if stale else "")
              + "".join(f"\n  lost updates: {line}" for line in lossy))
    write(out / "report.html", page(study, runs, tables, significance["md"], plots, status))
    return ("\n".join(shown) + f"\n{status}\nwrote {len(tables) * 3 + 3} tables, {len(plots)} plots and report.html "
            f"to {out}")
