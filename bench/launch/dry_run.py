"""``isobench grid --dry-run``: every cell with its status and resources, and its memory plan
(cells that differ only in seed or regime share one)."""

from __future__ import annotations

import json

from bench.config import to_dict
from bench.launch.dispatch import resources
from bench.run.cell import Cell
from bench.run.cells import Grid
from bench.run.cost_plan import Assumptions, cost_line, plan_costs, total_line
from bench.run.memory_plan import Plan, knobs, plan_cell
from bench.run.regimes import regime_plan
from bench.run.status import cell_status, twin_index


def plans(grid: Grid, device_bytes: int | None) -> list[Plan | None]:
    """The memory plan of every cell (cells that differ only in seed or regime share one)."""
    cache: dict[str, Plan | None] = {}
    out = []
    for c in grid.cells:
        key = json.dumps([c.backbone.name, c.method_name, c.canonical()["method"]["options"], to_dict(c.train)],
                         sort_keys=True)
        if key not in cache:
            cache[key] = plan_cell(c, device_bytes)
        out.append(cache[key])
    return out


def describe(grid: Grid, device_bytes: int | None = None, assume: Assumptions | None = None) -> list[str]:
    """Three lines per cell (for ``--dry-run``): the cell, its memory plan and its cost; then
    the grid's cost."""
    lines = []
    assume = assume or Assumptions()
    costs = plan_costs(grid.cells, assume)
    twins = twin_index(grid.study_dir)
    for i, (c, plan, cost) in enumerate(zip(grid.cells, plans(grid, device_bytes), costs)):
        res_text = ", ".join(f"{k}={v:g}" for k, v in resources(c, grid.spec.resources).items())
        if c.train.workers > 1:
            res_text += f" over {c.train.workers} workers"
        opts = ",".join(f"{k}={v}" for k, v in sorted(c.config.method.options.items())) or "-"
        lines.append(f"{i:3d} {c.run_id:28s} {cell_status(c, twins):8s} {c.backbone.name:20s} {c.regime:10s} "
                     f"{c.method_name:17s} seed={c.seed} opts={opts} [{res_text}]")
        lines.append("      " + (plan.line() if plan else "plan: unknown (no shape for this backbone offline)")
                     + ("" if not plan or plan.fits is not False else f"; knobs: {knobs(c, device_bytes)}"))
        lines.append("      " + cost_line(cost))
    lines.append(total_line(costs, assume))
    return lines


def cell_steps(cell: Cell) -> tuple[int, int]:
    """(stages, optimizer steps) of a cell."""
    n = len(regime_plan(cell).groups)  # a method that plans its own stages may make more or fewer
    return n, n * cell.train.steps_per_stage


