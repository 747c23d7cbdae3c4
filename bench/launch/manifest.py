"""What a study holds: ``<study>/grid.json`` (every cell the study's grid files expect, and the
folders that hold a cell under a spelled-out id) and the counts of a grid's cell statuses
(``bench.run.status.cell_status``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.files import atomic_write
from bench.run.cells import Grid
from bench.run.status import TwinIndex, cell_status


def write_manifest(grid: Grid, twins: TwinIndex | None = None) -> None:
    """``<study>/grid.json``: every cell the study's grid files expect (with its resolved config),
    so a report can show missing ones; per grid file the cells of its latest version, so cells of
    an edited grid file are shown as old, not as missing; the grids' method order; and
    ``twins``: each folder that holds a cell under another id -> that cell's id, so a report
    pools them as one cell; and ``tuned``, when the grid was built ``--tuned``: the budget's
    caption and the choices."""
    path = grid.study_dir / "grid.json"
    cells, order, grids = {}, [], {}
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        print(f"[grid] {path}: not valid JSON ({e}); rewritten from this grid file's cells", file=sys.stderr)
        old = None
    aliases: dict[str, str] = {}
    if isinstance(old, dict):
        cells, order = {c["run_id"]: c for c in old["cells"]}, list(old.get("methods", []))
        grids, aliases = dict(old.get("grids", {})), dict(old.get("twins", {}))
    order += [m for m in dict.fromkeys(c.method_name for c in grid.cells) if m not in order]
    grids[str(Path(grid.path).resolve())] = [c.run_id for c in grid.cells]
    for c in grid.cells:
        table = c.canonical()
        cells[c.run_id] = {"run_id": c.run_id, "method": c.method_name, "backbone": c.backbone.name,
                           "regime": c.regime, "seed": c.seed, "options": table["method"]["options"], "config": table}
    for run_id, folders in (twins or {}).items():
        aliases.update({folder.name: run_id for folder in folders})
    grid.study_dir.mkdir(parents=True, exist_ok=True)
    tuned = {} if grid.tuned is None else {"tuned": {
        "caption": grid.tuned.caption(), "file": str(grid.tuned.path),
        "choices": {k: {"lr": c.lr, "options": c.options, "objective": c.objective}
                    for k, c in sorted(grid.tuned.choices.items())}}}
    atomic_write(path, json.dumps({"methods": order, "grids": grids, **({"twins": aliases} if aliases else {}), **tuned,
                                   "cells": sorted(cells.values(), key=lambda c: c["run_id"])},
                                  indent=2, sort_keys=True) + "\n")


def summarize(grid: Grid, twins: TwinIndex | None = None) -> dict[str, int]:
    out = {"success": 0, "failed": 0, "missing": 0}
    for c in grid.cells:
        s = cell_status(c, twins)
        out[s if s in out else "missing"] += 1
    return out
