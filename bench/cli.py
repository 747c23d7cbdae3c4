"""``isobench``: run, grid, report, methods. Heavy imports happen inside each command so that
``isobench report`` never imports torch or ray."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _overrides(items: list[str]) -> dict[str, Any]:
    from bench.config import merge, parse_override

    out: dict[str, Any] = {}
    for item in items:
        out = merge(out, parse_override(item))
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import ConfigError
    from bench.grid import load_cells
    from bench.run import execute

    try:
        cells = load_cells(args.config, _overrides(args.set))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not 0 <= args.cell < len(cells):
        print(f"error: --cell {args.cell} out of range: {args.config} has {len(cells)} cell(s)", file=sys.stderr)
        return 2
    config = cells[args.cell]
    print(f"run {config.run_id} -> {config.run_dir}", file=sys.stderr)
    result = execute(config, force=args.force)
    print(json.dumps({k: result.get(k) for k in ("run_id", "status", "error")}, indent=1))
    for stage in result.get("stages", []):
        print(f"stage {stage['stage']} ({'+'.join(stage['trained_on'])}): "
              + "  ".join(f"{t}={s:.1f}" for t, s in stage["scores"].items()))
    print(f"result: {config.run_dir / 'result.json'}")
    return 0 if result["status"] == "success" else 1


def cmd_methods(args: argparse.Namespace) -> int:
    import methods

    for name in methods.names():
        cls = methods.get(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{name}: {doc}")
        for option, tp, default, help_text in methods.describe(name):
            print(f"    {option} ({tp}, default {default!r}): {help_text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isobench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and evaluate one run (a cell of a grid file)")
    p.add_argument("config")
    p.add_argument("--cell", type=int, default=0, help="which cell of a grid file (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-4")
    p.add_argument("--force", action="store_true", help="rerun even if a successful result exists")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("methods", help="list registered methods and their options")
    p.set_defaults(fn=cmd_methods)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
