"""Where a cell stands in its study: done, stale, failed, missing or corrupt; the lock that keeps
two processes from running one cell; the ``run`` section of a run that starts, and the result of
one that died without writing its own.

A cell's results may lie under another id than its own: an earlier version named a folder after
the config as written (``Cell.spelled_id``), so a study can hold the same science under a
spelled-out id. Such a folder is the cell's twin: a success there counts as this cell's success,
and ``twin_index`` finds every twin of a study by resolving each result's recorded config.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from bench.files import hold_lock
from bench.run import results as res
from bench.run.cell import Cell, recorded_id
from bench.suite.tasks import source_digests
from reports.schema import ErrorInfo, Result, RunInfo

RUN_LOCK = ".run.lock"

# canonical run id -> the study's folders that hold it under another name
TwinIndex = dict[str, list[Path]]


class RunBusy(RuntimeError):
    """Another process (an ``isobench run`` or a grid's trial) is running this cell."""


def run_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """``<run_dir>/.run.lock``, held while the run executes: two processes never run one cell."""
    def busy(holder: str) -> RunBusy:
        return RunBusy(f"another isobench process (pid {holder}) is running {run_dir.name} in {run_dir}; wait for "
                       f"it to finish (its result is then returned as it is), then run this command again")

    return hold_lock(run_dir / RUN_LOCK, busy)


def stale_sources(cell: Cell, result: Result) -> list[str]:
    """The tasks whose local source file changed since ``result`` was measured: such a result is
    not returned as done, it is run again."""
    digests = source_digests(cell.tasks.sources)
    rows = result.evaluation.data_rows
    return [t for t, d in digests.items() if rows.get(t, {}).get("source_sha256") != d]


def is_done(cell: Cell, result: Result | None) -> bool:
    """A successful result of this cell, measured on the data its sources hold now."""
    return (result is not None and result.ok and bool(result.evaluation.stages)  # a success with no stage is not done
            and not stale_sources(cell, result))


def twin_index(study_dir: Path) -> TwinIndex:
    """Every folder of the study whose recorded config resolves to another id than its name."""
    index: TwinIndex = {}
    for path in sorted(study_dir.glob("*/" + res.RESULT)):
        try:
            config = json.loads(path.read_text())["run"]["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        run_id = recorded_id(config) if isinstance(config, dict) else None
        if run_id is not None and run_id != path.parent.name:
            index.setdefault(run_id, []).append(path.parent)
    return index


def twins(cell: Cell, index: TwinIndex | None = None) -> list[Path]:
    """The folders that hold ``cell`` under another id: its spelled-out id, and with a study's
    ``twin_index`` every folder whose recorded config resolves to it."""
    found = [cell.study_dir / cell.spelled_id, *(index or {}).get(cell.run_id, [])]
    return [p for p in dict.fromkeys(found) if p.name != cell.run_id and (p / res.RESULT).is_file()]


def _done_at(cell: Cell, run_dir: Path) -> Result | None:
    try:
        result = res.read_result(run_dir)
    except res.ResultError:
        return None
    return result if is_done(cell, result) else None


def done_result(cell: Cell, index: TwinIndex | None = None) -> Result | None:
    """The cell's result when it is done (``is_done``) under its own id or a twin's; None when it
    is to run (a corrupt result is redone)."""
    for run_dir in [cell.run_dir, *twins(cell, index)]:
        if (result := _done_at(cell, run_dir)) is not None:
            return result
    return None


def cell_status(cell: Cell, index: TwinIndex | None = None) -> str:
    """success | failed | running | missing | corrupt (a result file that cannot be read) |
    stale (a success measured on a data file that has changed since: run again). A cell whose
    twin holds a success is a success."""
    try:
        result = res.read_result(cell.run_dir)
    except res.ResultError:
        status = "corrupt"
    else:
        if result is None:
            status = "missing"
        elif result.ok and not result.evaluation.stages:
            status = "corrupt"  # a success that holds no stage's scores (a hand-made or damaged file): run again
        else:
            status = "stale" if result.ok and stale_sources(cell, result) else result.run.status
    if status != "success" and any(_done_at(cell, p) is not None for p in twins(cell, index)):
        return "success"
    return status


def new_run_info(cell: Cell) -> RunInfo:
    """The ``run`` section of a run that is starting (its config: ``Cell.canonical``)."""
    return RunInfo(run_id=cell.run_id, study=cell.study, status="running", method=cell.method_name,
                   regime=cell.regime, backbone=cell.backbone.name, seed=cell.seed,
                   tasks=list(cell.tasks.names), config=cell.canonical(),
                   started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def crash_result(cell: Cell, error: BaseException) -> Result:
    """The result of a trial that died without writing one (e.g. killed for memory)."""
    run = new_run_info(cell)
    run.status = "failed"
    run.error = ErrorInfo(type=type(error).__name__, message=str(error)[-2000:])
    return Result(run=run, provenance=res.provenance())
