"""Read a study folder: every ``<run_id>/result.json`` (through ``reports.schema``, the one
loader), the grid manifest (``grid.json``, the cells that should exist) and each run's events
(``events/<source>.jsonl``; reports pick events by their ``kind``). Nothing here imports torch
or ray."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from reports.schema import Result, ResultError, read_result_file


@dataclasses.dataclass(frozen=True)
class Run:
    """One cell of the study: its identity, and its result if any (None = missing)."""

    run_id: str
    method: str
    backbone: str
    regime: str
    seed: int
    status: str  # success | failed | missing | running | corrupt
    result: Result | None
    events: list[dict[str, Any]]
    problem: str | None = None  # why a result file could not be read

    @property
    def data(self) -> Result:
        """The result (only for runs that have one)."""
        if self.result is None:
            raise ValueError(f"run {self.run_id} has no result")
        return self.result

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]


def _read_events(run_dir: Path) -> list[dict[str, Any]]:
    events = []
    for path in sorted((run_dir / "events").glob("*.jsonl")):
        source = path.stem
        events += [{"source": source, **json.loads(line)} for line in path.read_text().splitlines() if line.strip()]
    return events


def load_study(study_dir: str | Path) -> list[Run]:
    """All runs of the study, sorted by (regime, backbone, method, seed, run_id)."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise FileNotFoundError(f"{study_dir}: no such study folder")
    runs: dict[str, Run] = {}
    corrupt: dict[str, str] = {}
    for path in sorted(study_dir.glob("*/result.json")):
        try:
            r = read_result_file(path)
        except ResultError as e:
            corrupt[path.parent.name] = str(e)
            continue
        if r is None:
            continue
        info = r.run
        runs[info.run_id] = Run(info.run_id, info.method, info.backbone, info.regime, info.seed, info.status, r,
                                _read_events(path.parent))
    manifest = study_dir / "grid.json"
    cells = json.loads(manifest.read_text())["cells"] if manifest.is_file() else []
    for cell in cells:
        if cell["run_id"] not in runs:
            status = "corrupt" if cell["run_id"] in corrupt else "missing"
            runs[cell["run_id"]] = Run(cell["run_id"], cell["method"], cell["backbone"], cell["regime"],
                                       int(cell["seed"]), status, None, [], corrupt.get(cell["run_id"]))
    for run_id, problem in corrupt.items():
        if run_id not in runs:
            runs[run_id] = Run(run_id, run_id.rsplit("-", 1)[0], "?", "?", -1, "corrupt", None, [], problem)
    return sorted(runs.values(), key=lambda r: (r.regime, r.backbone, r.method, r.seed, r.run_id))


def method_order(study_dir: str | Path) -> list[str]:
    """The order of methods in the study's grid files (``grid.json``), for table rows."""
    manifest = Path(study_dir) / "grid.json"
    return list(json.loads(manifest.read_text()).get("methods", [])) if manifest.is_file() else []
