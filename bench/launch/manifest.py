"""What a study holds: each cell's status from its result file, ``<study>/grid.json`` (every
cell the study's grid files expect) and the counts of a grid's cell statuses."""

from __future__ import annotations

import json
from pathlib import Path

from bench.config import RunConfig, to_dict
from bench.files import atomic_write
from bench.run import results as res
from bench.run.cells import Grid


def cell_status(config: RunConfig) -> str:
    """success | failed | running | missing | corrupt (a result file that cannot be read)."""
    try:
        result = res.read_result(config.run_dir)
    except res.ResultError:
        return "corrupt"
    return "missing" if result is None else result.run.status


def write_manifest(grid: Grid) -> None:
    """``<study>/grid.json``: every cell the study's grid files expect (with its config), so a
    report can show missing ones; per grid file the cells of its latest version, so cells of an
    edited grid file are shown as old, not as missing; and the grids' method order."""
    path = grid.study_dir / "grid.json"
    cells, order, grids = {}, [], {}
    if path.is_file():
        old = json.loads(path.read_text())
        cells, order = {c["run_id"]: c for c in old["cells"]}, list(old.get("methods", []))
        grids = dict(old.get("grids", {}))
    order += [m for m in dict.fromkeys(c.method.name for c in grid.cells) if m not in order]
    grids[str(Path(grid.path).resolve())] = [c.run_id for c in grid.cells]
    for c in grid.cells:
        cells[c.run_id] = {"run_id": c.run_id, "method": c.method.name, "backbone": c.backbone.name,
                           "regime": c.regime, "seed": c.seed, "options": c.method.options, "config": to_dict(c)}
    grid.study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"methods": order, "grids": grids,
                                   "cells": sorted(cells.values(), key=lambda c: c["run_id"])},
                                  indent=2, sort_keys=True) + "\n")


def summarize(grid: Grid) -> dict[str, int]:
    out = {"success": 0, "failed": 0, "missing": 0}
    for c in grid.cells:
        s = cell_status(c)
        out[s if s in out else "missing"] += 1
    return out
