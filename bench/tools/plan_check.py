"""``python -m bench.tools.plan_check CONFIG [--set KEY=VALUE]``: each cell's memory plan next to
the peak memory its result measured (a GPU's peak allocation; on a CPU the trial's peak RSS since
the run started, ``VmHWM``), and the ratio, one row per cell that has a result, so a plan that
does not hold shows before it is trusted. Exit 1 when a measured peak is more than
``--tolerance`` (default 20%) away from its plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from bench.config import merge, parse_override
from bench.run import results as res
from bench.run.cells import load_cells
from bench.run.memory_plan import plan_cell


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tools.plan_check", description=__doc__)
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as in isobench grid")
    p.add_argument("--tolerance", type=float, default=0.20, help="allowed |measured / plan - 1| (default 0.20)")
    args = p.parse_args(argv)
    overrides: dict = {}
    for item in args.set:
        overrides = merge(overrides, parse_override(item), keep_replace=True)
    cells = load_cells(args.config, overrides)
    print("| cell | method | precision | plan GiB | measured GiB | measured / plan |")
    print("|---|---|---|---|---|---|")
    outside = 0
    for cell in cells:
        try:
            result = res.read_result(cell.run_dir)
        except res.ResultError:
            result = None
        if result is None or not result.train.peak_memory_bytes:
            continue
        recorded = result.train.precision.get("policy")  # ``auto`` as the run resolved it, not as this process does
        plan = plan_cell(dataclasses.replace(cell, precision=recorded) if recorded else cell, None)
        measured = result.train.peak_memory_bytes / 2**30
        total = plan.total / 2**30 if plan is not None else None
        ratio = measured / total if total else None
        outside += ratio is None or abs(ratio - 1) > args.tolerance
        print(f"| {cell.run_id} | {cell.method_name} | {recorded or cell.precision} | "
              f"{'—' if total is None else f'{total:.2f}'} | {measured:.2f} | {'—' if ratio is None else f'{ratio:.2f}'} |")
    print(f"\n{outside} cell(s) outside ±{100 * args.tolerance:.0f}% of their plan", file=sys.stderr)
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
