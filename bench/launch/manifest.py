"""What a study holds: each cell's status from its result file, ``<study>/grid.json`` (every
cell the study's grid files expect) and the counts of a grid's cell statuses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.config import RunConfig, to_dict
from bench.files import atomic_write
from bench.run import results as res
from bench.run.cells import Grid
from bench.run.execution import stale_sources


def cell_status(config: RunConfig) -> str:
    """success | failed | running | missing | corrupt (a result file that cannot be read) |
    stale (a success measured on a data file that has changed since: run again)."""
    try:
        result = res.read_result(config.run_dir)
    except res.ResultError:
        return "corrupt"
    if result is None:
        return "missing"
    if result.ok and not result.evaluation.stages:
        return "corrupt"  # a success that holds no stage's scores (a hand-made or damaged file): run again
    return "stale" if result.ok and stale_sources(config, result) else result.run.status


def write_manifest(grid: Grid) -> None:
    """``<study>/grid.json``: every cell the study's grid files expect (with its config), so a
    report can show missing ones; per grid file the cells of its latest version, so cells of an
    edited grid file are shown as old, not as missing; and the grids' method order."""
    path = grid.study_dir / "grid.json"
    cells, order, grids = {}, [], {}
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        print(f"[grid] {path}: not valid JSON ({e}); rewritten from this grid file's cells", file=sys.stderr)
        old = None
    if isinstance(old, dict):
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
