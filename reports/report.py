"""``isobench report results/<study>``: every table and plot from the result files alone.

Writes ``<study>/tables/``; identical inputs give byte-identical outputs. Imports neither torch
nor ray, so it runs wherever the result files are.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from reports import comparisons as cmp
from reports.analysis_tables import conflict_table, drift_table
from reports.flips import flips_plot, flips_table
from reports.html import page
from reports.load import Run, load_study, method_order, read_manifest
from reports.metrics import LOST_UPDATE_THRESHOLD
from reports.plots import drift_plots, forest_plots, heatmaps, schedule_plots, score_bars
from reports.sensitivity import lr_robustness_table, sensitivity_plots, sensitivity_table
from reports.tables import Table, forgetting_table, main_table, ordered_methods, ordered_tasks, row_groups


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


def current_umask() -> int:
    bits = os.umask(0)
    os.umask(bits)
    return bits


MARK = ".isobench-report"  # in every folder a report wrote: the files it wrote, which a later report replaces
MARK_HEADER = "written by isobench report; a later report replaces the files listed below and keeps any other\n"
LOCK_WAIT_S = 300.0  # how long a report waits for another report of the same folder to finish


def written_files(folder: Path) -> set[str] | None:
    """The files (relative paths) that the report which wrote ``folder`` listed in its mark;
    None for a mark of an earlier version, which lists none."""
    lines = (folder / MARK).read_text().splitlines() if (folder / MARK).is_file() else []
    return {line for line in lines[1:] if line.strip()} if len(lines) > 1 else None


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if (p.is_file() or p.is_symlink())
            and p.name != MARK}


def keep_others(old: Path, new: Path, listed: set[str] | None) -> list[str]:
    """Move into ``new`` every file of ``old`` that no report wrote (not in ``listed``; with an
    earlier mark that lists nothing, every file this report does not write again): a user's
    notes or LaTeX beside the tables survive. Returns their names."""
    written_now = files_in(new)
    kept = []
    for name in sorted(files_in(old)):
        if (name in listed) if listed is not None else (name in written_now):
            continue
        if name in written_now:
            raise ReportRefused(f"{old / name}: a file this report writes, but no isobench report wrote it there; "
                                f"move it elsewhere and rerun")
        (new / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(old / name, new / name)
        kept.append(name)
    return kept


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """One report at a time per output folder (another waits up to ``LOCK_WAIT_S``), so two
    reports never remove each other's half-built folders."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))  # the folder itself: no lock file left
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ReportRefused(f"{out}: another isobench report has been writing it for over "
                                        f"{LOCK_WAIT_S:.0f} s; wait for it, then rerun") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


class ReportRefused(ValueError):
    """A report that cannot be made as asked: ``--out`` names a folder a report must not replace
    (the study, a folder holding it, someone else's files), or ``--tasks``/``--methods`` names
    what the study does not hold."""


def check_names(given: Sequence[str] | None, known: Sequence[str], option: str, study_dir: Path) -> None:
    """Every name of ``--tasks`` / ``--methods`` is one the study holds (a typo would give an empty column)."""
    unknown = [g for g in given or [] if g not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ReportRefused(f"{option} {','.join(unknown)}: not in {study_dir}{hint}; allowed: {', '.join(known)}")


def check_out(out: Path, study_dir: Path, default: bool) -> None:
    """A report replaces the files it wrote in ``out``, so ``out`` must be new, empty, marked as
    written by a report, or the study's own ``tables/``; never the study or a folder that
    contains it. Files a report did not write are kept (``keep_others``)."""
    study, target = study_dir.resolve(), out.resolve()
    if target == study or study.is_relative_to(target):
        raise ReportRefused(f"--out {out}: {'is' if target == study else 'contains'} the study {study_dir}; a report "
                         f"replaces its output folder whole: give a new or empty folder")
    if target.exists() and not target.is_dir():
        raise ReportRefused(f"--out {out}: is a file; give a new or empty folder")
    if default or not target.is_dir() or (target / MARK).is_file() or not any(target.iterdir()):
        return
    raise ReportRefused(f"--out {out}: holds files that no isobench report wrote (no {MARK} in it); a report replaces "
                     f"its output folder whole: give a new or empty folder")


def clean_leftovers(out: Path) -> None:
    """Remove the half-built folders of a report that was killed while writing ``out``."""
    for left in out.parent.glob(f".{out.name}.new-*"):
        shutil.rmtree(left, ignore_errors=True)
    for left in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(left, ignore_errors=True)


def report(study_dir: str | Path, methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
           out_dir: str | Path | None = None, baseline: str | None = None) -> str:
    """Rebuild ``<study>/tables/`` (or ``out_dir``: a new or empty folder, or one an earlier
    report wrote; ``check_out``) and return the main table(s) as Markdown for the terminal.
    Tables are written into a folder beside it and swapped in only when all are done: a failed
    report leaves the previous tables as they were, and the next report removes what a killed
    one left behind. Files in the folder that no report wrote move into the new one and are
    named; the mark lists what this report wrote."""
    study_dir = Path(study_dir)
    runs = load_study(study_dir)
    if not runs:
        raise FileNotFoundError(f"{study_dir}: no result.json found under it")
    check_names(tasks, sorted({t for r in runs if r.result is not None for t in r.result.run.tasks}), "--tasks",
                study_dir)
    check_names(methods, sorted({r.method for r in runs}), "--methods", study_dir)
    check_names([baseline] if baseline else None, sorted({r.method for r in runs}), "--baseline", study_dir)
    out = Path(out_dir).expanduser() if out_dir is not None else study_dir / "tables"
    check_out(out, study_dir, default=out_dir is None)
    with folder_lock(out):
        clean_leftovers(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
        try:
            text = write_all(study_dir.name, runs, methods or method_order(study_dir), tasks, staging,
                             baseline or cmp.BASELINE, tuned_caption(study_dir))
            written = sorted(files_in(staging))
            kept = keep_others(out, staging, written_files(out)) if out.is_dir() else []
            write(staging / MARK, MARK_HEADER + "".join(f"{name}\n" for name in written))
            os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the tables from the group
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / out.name)
                os.replace(staging, out)
                shutil.rmtree(old)
            else:
                os.replace(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if kept:
        text += f"\nkept in {out} (not written by a report): {', '.join(kept)}\n"
    return text.replace(str(staging), str(out))


def mark_all(tables: Sequence[Table], runs: Sequence[Run], comparisons: Sequence[cmp.Comparison], baseline: str,
             methods: Sequence[str], tasks: Sequence[str]) -> None:
    """Marks, bold only where separated, and the verdict lines of every table's caption."""
    for table in tables:
        regime = cmp.table_regime(table)
        if table.name.startswith("main_"):
            groups = [g for _, _, g in row_groups(runs, regime, methods)]
            columns = {j: (t, "score") for j, t in enumerate(tasks)} | {len(tasks): (cmp.AGGREGATE, "avg_norm")}
            cmp.mark_table(table, comparisons, baseline, columns, groups, tasks, tasks)
        elif table.name.startswith("forgetting"):
            columns = {table.columns.index(name): (cmp.AGGREGATE, metric)
                       for name, metric in (("Avg. F", "forgetting"), ("BWT", "bwt"))}
            cmp.mark_table(table, comparisons, baseline, columns, tasks=tasks)
        else:
            table.separated = cmp.separated_columns(table)


def comparison_files(comparisons: Sequence[cmp.Comparison], baseline: str, runs: Sequence[Run]) -> dict[str, str]:
    """``comparisons.{csv,json,md,tex}`` and its HTML."""
    from tabulate import tabulate

    from reports.tables import BOOKTABS_RAW, latex_escape

    rows = cmp.display_rows(comparisons)
    if not comparisons:
        note = (f"No comparisons: the study has no successful {baseline} runs to pair with"
                + ("" if baseline in {r.method for r in runs} else f" (no method {baseline!r}; give --baseline NAME)")
                + ".\n")
    else:
        note = (f"Each method against {baseline}, paired by seed and test item (final evaluation). Tests (the "
                "test column of comparisons.csv): McNemar on the discordant items for right-or-wrong scores, a "
                "paired bootstrap over items for graded scores and NLL, a paired t-test over seeds for aggregates; "
                "intervals from a bootstrap over seeds, then items. "
                "diff = method − baseline (mean over seeds of the paired differences), 95% CI; "
                f"{cmp.MARK} = Holm-adjusted p < {cmp.SIGNIFICANT} and a 95% interval that excludes 0. "
                + " ".join(sorted({cmp.family_note([c for c in comparisons if c.regime == r], baseline)
                                   for r in {c.regime for c in comparisons}}))
                + " mde = the smallest difference detectable at 80% power (alpha 0.05, two-sided); needed = the "
                "items per seed, or the seeds, that would resolve the observed difference. 'below resolution': "
                "not significant and the interval reaches ±mde, so a difference of that size is not ruled out; "
                "'within ±mde': the interval lies inside ±mde. prob_improvement's mean_a is the probability that a "
                "run of the method beats a run of the baseline on a task (0.5 = none).\n")
    import html as html_lib

    return {"csv": cmp.to_csv(comparisons), "json": cmp.to_json(comparisons),
            "md": tabulate(rows, headers=cmp.DISPLAY_HEADERS, tablefmt="github", disable_numparse=True)
            + "\n\n" + note,
            "tex": tabulate([[latex_escape(c) for c in row] for row in rows],
                            headers=[latex_escape(h) for h in cmp.DISPLAY_HEADERS], tablefmt=BOOKTABS_RAW,
                            disable_numparse=True) + "\n",
            "html": tabulate([[html_lib.escape(c) for c in row] for row in rows], headers=cmp.DISPLAY_HEADERS,
                             tablefmt="unsafehtml", disable_numparse=True)
            + f"<p class=note>{html_lib.escape(note)}</p>"}


def tuned_caption(study_dir: Path) -> str:
    """What the main tables' caption says of tuning, from ``grid.json`` (``isobench grid --tuned``):
    the budget and each method's chosen learning rate and options; empty when not tuned."""
    tuned = read_manifest(study_dir).get("tuned")
    if not isinstance(tuned, dict):
        return ""
    chosen = "; ".join(f"{key.split(' / ')[-1]} ({key.rsplit(' / ', 1)[0]}): lr {c['lr']:.3g}" +
                       "".join(f", {k} {v:.3g}" if isinstance(v, float) else f", {k} {v}"
                               for k, v in sorted(c["options"].items()))
                       for key, c in sorted(tuned.get("choices", {}).items()))
    return f"Options {tuned.get('caption', 'tuned')}: {chosen}."


def write_all(study: str, runs: list[Run], methods: Sequence[str] | None, tasks: Sequence[str] | None,
              out: Path, baseline: str = cmp.BASELINE, tuned: str = "") -> str:
    """Every table and plot into ``out``; returns the terminal summary. ``tuned``: a caption line
    for the main tables saying how the options were chosen (``tuned_caption``)."""
    row_methods, task_order = ordered_methods(runs, methods), ordered_tasks(runs, tasks)
    shown = []
    regimes = sorted({r.regime for r in runs if r.status != "stale" and r.regime != "?"})
    tables = [main_table(runs, regime, row_methods, task_order) for regime in regimes]
    tables += [forgetting_table(runs, row_methods, task_order, regime) for regime in regimes
               if regime in ("sequential", "multistage")]
    flip_tables = [t for regime in regimes if regime in ("sequential", "multistage")
                   if (t := flips_table(runs, regime, row_methods, task_order)) is not None]
    tables += flip_tables
    extra = [make(runs, regime, row_methods) for regime in regimes for make in (drift_table, conflict_table)]
    extra += [make(runs, regime, row_methods, task_order) for regime in regimes
              for make in (sensitivity_table, lr_robustness_table)]
    tables += [t for t in extra if t is not None]
    comparisons = [c for regime in regimes for c in cmp.compare(runs, regime, row_methods, task_order, baseline)]
    mark_all(tables, runs, comparisons, baseline, row_methods, task_order)
    for table in tables:
        if tuned and table.name.startswith("main_"):
            table.footnote = f"{table.footnote} {tuned}".strip()
        write(out / f"{table.name}.md", table.markdown())
        write(out / f"{table.name}.tex", table.latex())
        write(out / f"{table.name}.csv", table.csv())
        shown.append(f"## {table.name}\n\n{table.markdown()}")
    compared = comparison_files(comparisons, baseline, runs)
    for ext in ("md", "tex", "csv", "json"):
        write(out / f"comparisons.{ext}", compared[ext])
    shown.append(f"## comparisons against {baseline}\n\n{compared['md']}")
    plots = forest_plots(comparisons, out) + drift_plots(runs, out) + schedule_plots(runs, out) + \
        score_bars(runs, row_methods, task_order, out) + \
        heatmaps(runs, row_methods, task_order, out) + \
        [p for regime in regimes for p in sensitivity_plots(runs, regime, row_methods, task_order, out)] + \
        [flips_plot(t, out) for t in flip_tables]
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
    write(out / "report.html", page(study, runs, tables, compared["html"], plots, status))
    return ("\n".join(shown) + f"\n{status}\nwrote {len(tables) * 3 + 4} tables, {len(plots)} plots and report.html "
            f"to {out}")
