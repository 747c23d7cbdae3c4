"""``isobench``: run, grid, report, export, methods. Heavy imports happen inside each command so that
``isobench report`` never imports torch or ray."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

SET_HELP = ("override a key, e.g. train.lr=1e-4 (the value is TOML). A key that a grid file's [grid] table sets in "
            "every cell (method.name with grid.methods, seed with grid.seeds, a grid.axes key...), or a method.options "
            "key that some cell would lose, is refused: "
            "override the grid key instead, e.g. grid.methods='[\"lora\"]'. An inline table replaces the table "
            "whole: grid.method_options={} drops every per-method option list")


MEMORY_HELP = ("accelerator memory per trial for the memory plan, e.g. 80GiB (default: the visible GPU's; none on a "
               "CPU machine: the plan is printed, not checked)")


def _overrides(items: list[str]) -> dict[str, Any]:
    from bench.config import merge, parse_override

    out: dict[str, Any] = {}
    for item in items:
        out = merge(out, parse_override(item), keep_replace=True)
    return out


def _load(loader: Any, args: argparse.Namespace) -> Any:
    """``loader(config, overrides)``, or None after printing the config error."""
    from bench.config import ConfigError

    try:
        return loader(args.config, _overrides(args.set))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _device_bytes_or_error(args: argparse.Namespace, fallback: str = "") -> tuple[bool, int | None]:
    """(ok, the memory the plan is checked against); a bad ``--device-memory`` is printed as an error."""
    from bench.run.preflight import device_bytes

    try:
        return True, device_bytes(args.device_memory, fallback)
    except ValueError as e:
        print(f"error: --device-memory: {e}", file=sys.stderr)
        return False, None


def cmd_run(args: argparse.Namespace) -> int:
    from bench.run.cells import load_cells

    cells = _load(load_cells, args)
    if cells is None:
        return 2
    if not 0 <= args.cell < len(cells):
        print(f"error: --cell {args.cell} out of range: {args.config} has {len(cells)} cell(s)", file=sys.stderr)
        return 2
    cell = cells[args.cell]
    if len(cells) > 1:
        print(f"{args.config} is a grid of {len(cells)} cells: running cell {args.cell} ({cell.method_name}, "
              f"{cell.backbone.name}, {cell.regime}, seed {cell.seed}); --cell N picks another", file=sys.stderr)
    print(f"run {cell.run_id} -> {cell.run_dir}", file=sys.stderr)
    ok, device_bytes = _device_bytes_or_error(args)
    if not ok:
        return 2
    from bench.run.preflight import preflight

    checked = preflight(cell, device_bytes)
    if not checked.ok:
        print(f"error: {args.config}: {checked.problems[0]}", file=sys.stderr)
        return 2
    if checked.plan is not None:
        print(checked.plan.line(), file=sys.stderr)
    from bench.launch.dispatch import resources, run_cell

    if cell.train.workers > 1:
        print(f"sharded over {cell.train.workers} workers (Ray Train); progress: {cell.run_dir / 'metrics.jsonl'}",
              file=sys.stderr)
    from bench.files import ForeignPath, LockPathError
    from bench.run.status import RunBusy

    try:
        result = run_cell(cell, resources(cell, alone=True), force=args.force, restart=args.restart,
                          own_session=True)
    except (RunBusy, ForeignPath, LockPathError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    error = result.run.error
    print(f"{result.run.run_id}: {result.run.status}"
          + (f" ({error.type}: {error.message}, step {error.step})" if error else ""))
    for stage in result.evaluation.stages:
        print(f"stage {stage.stage} ({'+'.join(stage.trained_on)}): "
              + "  ".join(f"{t}={'n/a' if s is None else f'{s:.1f}'}" for t, s in stage.scores.items()))
    print(f"result: {cell.run_dir / 'result.json'}")
    return 0 if result.ok else 1


def assumptions(args: argparse.Namespace) -> Any:
    """The cost plan's throughput assumptions from the command line (``ValueError`` naming the flag)."""
    from bench.run.cost_plan import Assumptions

    return Assumptions(args.assume_mfu, args.assume_eval_mfu, args.device_flops)


def cmd_grid(args: argparse.Namespace) -> int:
    from bench.config import ConfigError
    from bench.launch.dry_run import describe
    from bench.launch.grid import run_grid
    from bench.run.cells import load_grid
    from bench.run.tuning_spec import read_tuned

    try:
        tuned = read_tuned(args.tuned) if args.tuned else None
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    grid = _load(lambda config, overrides: load_grid(config, overrides, tuned), args)
    if grid is None:
        return 2
    try:
        assume = assumptions(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ok, device_bytes = _device_bytes_or_error(args, grid.spec.device_memory)
    if not ok:
        return 2
    from bench.run.preflight import preflight

    missing = sorted({p for c in grid.cells for p in preflight(c, memory=False, writable=False).problems})
    if args.dry_run:
        for why in missing:
            print(f"note: {why}")
        print(f"{len(grid.cells)} cells -> {grid.study_dir}")
        print("\n".join(describe(grid, device_bytes, assume)))
        import os

        from bench.launch.readiness import startup_checks

        print("\n".join(startup_checks(grid, args.address or os.environ.get("RAY_ADDRESS"))))
        return 0
    if missing:
        print(f"error: {args.config}: {missing[0]}", file=sys.stderr)
        return 2
    from bench.launch.study_lock import NotWritable, StudyBusy

    try:
        counts = run_grid(grid, address=args.address, retry_failed=args.retry_failed, restart=args.restart,
                          device_bytes=device_bytes, verbose=args.verbose, assume=assume)
    except (ConfigError, NotWritable, StudyBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        counts = {"unfinished": -1}
    if counts.get("unfinished"):
        print(f"\ninterrupted: finished cells are kept, and unfinished ones resume from their checkpoints. "
              f"Resume with: {shlex.join(['isobench', 'grid', args.config, *(x for v in args.set for x in ('--set', v))])}",
              file=sys.stderr)
        return 130
    print(f"grid {grid.path}: {counts['success']}/{counts['total']} succeeded, {counts['failed']} failed, "
          f"{counts['missing']} missing ({counts['scheduled']} run this time); results in {grid.study_dir}")
    if counts.get("busy"):
        print(f"  {counts['busy']} cell(s) were being run by another isobench process (an 'isobench run' of the "
              f"cell): left to it; run this command again when it has finished to count its result")
    if counts["failed"]:
        from bench.launch.grid import failure_lines

        print("\n".join(failure_lines(grid)))
    return 0 if counts["failed"] == 0 and counts["missing"] == 0 else 1


def cmd_report(args: argparse.Namespace) -> int:
    from reports.load import DamagedLog
    from reports.report import ReportRefused, report

    split = (lambda text: [x for x in text.split(",") if x] if text else None)  # noqa: E731
    try:
        print(report(args.study, methods=split(args.methods), tasks=split(args.tasks), out_dir=args.out,
                     baseline=args.baseline))
    except (FileNotFoundError, ReportRefused, DamagedLog) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write the tables ({e.strerror or e}: {e.filename}); for a read-only study, "
              f"write them elsewhere with --out DIR", file=sys.stderr)
        return 2
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from reports.export import export

    try:
        paths = export(args.study, args.format, args.out)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # --out is a file, or a folder this user cannot write
        where = args.out or f"{args.study}/export"
        print(f"error: cannot write the export to {where} ({e.strerror or e}: {e.filename}); give a writable "
              f"folder with --out DIR", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from bench.config import ConfigError
    from bench.launch.study_lock import NotWritable, StudyBusy
    from bench.launch.tuning import run_tune
    from bench.run.cells import load_grid
    from bench.run.preflight import preflight
    from bench.run.tuning_spec import tune_spec

    grid = _load(load_grid, args)
    if grid is None:
        return 2
    try:
        tune_spec(grid.spec.tune, grid.spec.seeds, args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = sorted({p for c in grid.cells for p in preflight(c, memory=False, writable=False).problems})
    if missing:
        print(f"error: {args.config}: {missing[0]}", file=sys.stderr)
        return 2
    try:
        path = run_tune(grid, address=args.address, verbose=args.verbose)
    except (ConfigError, NotWritable, StudyBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{path}\nnext: isobench grid {args.config} --tuned {path}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import methods
    from bench.run.tuning_space import space_of

    for name in methods.names():
        cls = methods.get(name)
        doc = " ".join((sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0].split())
        print(f"{name}: {doc}")
        space = space_of(name)
        for option, tp, default, help_text in methods.describe(name):
            where = f"; search {space[f'method.options.{option}']}" if f"method.options.{option}" in space else ""
            print(f"    {option} ({tp}, default {default!r}{where}): {help_text}")
        print(f"    train.lr: search {space['train.lr']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isobench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and evaluate one run (a cell of a grid file)")
    p.add_argument("config")
    p.add_argument("--cell", type=int, default=0, help="which cell of a grid file (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--force", action="store_true", help="rerun from step 0 even if a successful result exists")
    p.add_argument("--restart", action="store_true", help="discard the run's checkpoint and start from step 0")
    p.add_argument("--device-memory", default=None, metavar="SIZE", help=MEMORY_HELP)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("grid", help="run a grid file's cells on Ray Tune (resumable)")
    p.add_argument("config")
    p.add_argument("--dry-run", action="store_true", help="print the expanded cells and resources, run nothing")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--retry-failed", action="store_true", help="re-run only the cells whose result says failed")
    p.add_argument("--restart", action="store_true", help="discard the scheduled cells' checkpoints (default: resume)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output (banner, trial table, hints)")
    p.add_argument("--device-memory", default=None, metavar="SIZE", help=MEMORY_HELP)
    p.add_argument("--assume-mfu", type=float, default=None, metavar="F",
                   help="cost plan: training throughput as a fraction of the device's dense peak (default 0.40 on a "
                        "GPU; 0.80 of the probed training throughput on a CPU)")
    p.add_argument("--assume-eval-mfu", type=float, default=None, metavar="F",
                   help="cost plan: evaluation throughput, the same way (default 0.05 on a GPU: generation is "
                        "memory-bound; 1.0 on a CPU, whose evaluation FLOPs are an upper bound)")
    p.add_argument("--device-flops", type=float, default=None, metavar="FLOP/S",
                   help="cost plan: a device's dense peak (default: 989e12, an H100's bf16, on a GPU machine; this "
                        "CPU's matmul throughput, measured by a short probe, on a CPU machine)")
    p.add_argument("--tuned", default=None, metavar="TUNED_TOML",
                   help="build the cells with the learning rate and options `isobench tune` chose (results/<study>/tuned.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.set_defaults(fn=cmd_grid)
    p = sub.add_parser("tune", help="search every method of a grid on the validation split, same budget "
                                    "([grid.tune]); writes results/<study>/tuned.toml")
    p.add_argument("config")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.set_defaults(fn=cmd_tune)
    p = sub.add_parser("report", help="tables and plots of a study from its result files alone")
    p.add_argument("study", help="results/<study>")
    p.add_argument("--methods", default="", help="row order, comma-separated (default: a fixed order)")
    p.add_argument("--tasks", default="", help="column order, comma-separated (default: the config's)")
    p.add_argument("--out", default=None, help="where to write the tables (default: <study>/tables)")
    p.add_argument("--baseline", default=None, metavar="METHOD",
                   help="the method every other is compared with, paired by seed and item (default: full_sft)")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("export", help="a study's scores and run stats as long tables (csv, jsonl, parquet) for pandas")
    p.add_argument("study", help="results/<study>")
    p.add_argument("--format", default="csv", choices=["csv", "jsonl", "parquet"])
    p.add_argument("--out", default=None, help="folder to write into (default: <study>/export)")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("methods", help="list registered methods and their options")
    p.set_defaults(fn=cmd_methods)
    args = parser.parse_args(argv)
    if args.command in ("run", "grid"):  # before any config or model loads
        from bench.run.preflight import environment_problems

        for problem in environment_problems():
            print(f"error: {problem}", file=sys.stderr)
            return 2
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
