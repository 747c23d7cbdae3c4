"""``isobench report results/<study>``: every table and plot from the result files alone.

Writes ``<study>/tables/``; identical inputs give byte-identical outputs. Imports neither torch
nor ray, so it runs wherever the result files are.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from reports.load import Run, load_study, method_order
from reports.plots import drift_plots, heatmaps, score_bars
from reports.tables import forgetting_table, main_table, ordered_methods, ordered_tasks, significance_table


def error_type(run: Run) -> str | None:
    error = run.result.run.error if run.result is not None else None
    return error.type if error is not None else None


def write(path: Path, text: str) -> None:
    path.write_text(text)


def report(study_dir: str | Path, methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None) -> str:
    """Rebuild ``<study>/tables/`` and return the main table(s) as Markdown for the terminal."""
    study_dir = Path(study_dir)
    runs = load_study(study_dir)
    if not runs:
        raise FileNotFoundError(f"{study_dir}: no result.json found under it")
    out = study_dir / "tables"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    row_methods, task_order = ordered_methods(runs, methods or method_order(study_dir)), ordered_tasks(runs, tasks)
    shown = []
    tables = [main_table(runs, regime, row_methods, task_order) for regime in sorted({r.regime for r in runs})]
    if any(r.regime == "sequential" for r in runs):
        tables.append(forgetting_table(runs, row_methods, task_order))
    for table in tables:
        write(out / f"{table.name}.md", table.markdown())
        write(out / f"{table.name}.tex", table.latex())
        write(out / f"{table.name}.csv", table.csv())
        shown.append(f"## {table.name}\n\n{table.markdown()}")
    for ext, text in significance_table(runs, row_methods, task_order).items():
        write(out / f"significance.{ext}", text)
    plots = drift_plots(runs, out) + score_bars(runs, row_methods, task_order, out) + \
        heatmaps(runs, row_methods, task_order, out)
    failed = [r for r in runs if r.status == "failed"]
    missing = [r for r in runs if r.status not in ("success", "failed")]
    status = (f"{len(runs)} runs: {len(runs) - len(failed) - len(missing)} succeeded, {len(failed)} failed, "
              f"{len(missing)} missing" + "".join(f"\n  failed: {r.run_id} ({error_type(r)})" for r in failed)
              + "".join(f"\n  {r.status}: {r.run_id}" + (f" ({r.problem})" if r.problem else "") for r in missing))
    return "\n".join(shown) + f"\n{status}\nwrote {len(tables) * 3 + 3} tables and {len(plots)} plots to {out}"
