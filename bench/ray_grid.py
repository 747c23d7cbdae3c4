"""Run a grid's cells as Ray Tune trials: resources per trial, resume, failures kept per cell.

- Each invocation expands the grid and schedules only the cells still to do (no result.json
  with ``status == "success"``; with ``retry_failed`` only the failed ones), so re-running the
  same command after a crash, Ctrl-C or ``kill -9`` finishes exactly the missing cells.
- A trial writes its own ``result.json`` atomically (``bench.run.execute``); a trial whose
  process dies is retried by Ray up to ``[grid] max_failures`` times (each retry resumes from
  the run's checkpoint), then recorded as failed here, from Ray's error.
- A cell with a checkpoint but no successful result resumes from it on the next invocation
  (``--restart`` discards checkpoints).
- Resources: per trial, ``train.workers`` GPUs (and as many CPUs) when GPUs are visible, else
  ``train.workers`` CPUs (``[grid] resources`` overrides); torch threads = CPUs of the trial (or
  of the worker), so CPU trials do not oversubscribe cores.
- A sharded cell (``train.workers`` > 1) runs as Ray Train V2's Train-inside-Tune: its Tune trial
  is a small driver holding no CPU or GPU, which starts a ``TorchTrainer`` whose workers hold the
  trial's resources (``bench.workers``).
- ``address`` (or ``RAY_ADDRESS``) joins an existing cluster; otherwise a local Ray is started
  in a study-specific temp dir, and Ray processes orphaned there by a killed driver are reaped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results as res
from bench.config import ConfigError, RunConfig, from_dict, to_dict
from bench.files import atomic_write
from bench.grid import Grid
from bench.grid_progress import GridProgress, clock
from bench.memory_plan import DoesNotFit, Plan, check_fits, knobs, plan_cell
from bench.regimes import regime_plan
from bench.study import study_lock


def cell_status(config: RunConfig) -> str:
    """success | failed | running | missing | corrupt (a result file that cannot be read)."""
    try:
        result = res.read_result(config.run_dir)
    except res.ResultError:
        return "corrupt"
    return "missing" if result is None else result.run.status


def resources(grid: Grid, cell: RunConfig) -> dict[str, float]:
    """What one trial of ``cell`` holds: ``[grid] resources``, else a GPU and a CPU per worker
    when GPUs are visible, else a CPU per worker."""
    if grid.spec.resources:
        return {k: float(v) for k, v in grid.spec.resources.items()}
    import torch

    w = float(cell.train.workers)
    return {"gpu": w, "cpu": w} if torch.cuda.is_available() else {"cpu": w}


# A sharded cell's Tune trial only drives its TorchTrainer: one byte of memory, because Ray
# refuses an empty request and any CPU it held would be missing for the trainer's workers.
DRIVER = {"memory": 1.0}


def plans(grid: Grid, device_bytes: int | None) -> list[Plan | None]:
    """The memory plan of every cell (cells that differ only in seed or regime share one)."""
    cache: dict[str, Plan | None] = {}
    out = []
    for c in grid.cells:
        key = json.dumps([c.backbone.name, c.method.name, c.method.options, to_dict(c.train)], sort_keys=True)
        if key not in cache:
            cache[key] = plan_cell(c, device_bytes)
        out.append(cache[key])
    return out


def describe(grid: Grid, device_bytes: int | None = None) -> list[str]:
    """Two lines per cell (for ``--dry-run``): the cell, and its memory plan."""
    lines = []
    for i, (c, plan) in enumerate(zip(grid.cells, plans(grid, device_bytes))):
        res_text = ", ".join(f"{k}={v:g}" for k, v in resources(grid, c).items())
        if c.train.workers > 1:
            res_text += f" over {c.train.workers} workers"
        opts = ",".join(f"{k}={v}" for k, v in sorted(c.method.options.items())) or "-"
        lines.append(f"{i:3d} {c.run_id:28s} {cell_status(c):8s} {c.backbone.name:20s} {c.regime:10s} "
                     f"{c.method.name:17s} seed={c.seed} opts={opts} [{res_text}]")
        lines.append("      " + (plan.line() if plan else "plan: unknown (no shape for this backbone offline)")
                     + ("" if not plan or plan.fits is not False else f"; knobs: {knobs(c, device_bytes)}"))
    return lines


def cell_steps(config: RunConfig) -> tuple[int, int]:
    """(stages, optimizer steps) of a cell."""
    n = len(regime_plan(config).groups)  # a method that plans its own stages may make more or fewer
    return n, n * config.train.steps_per_stage


def _trial(space: dict[str, Any]) -> None:
    """Ray Tune function trainable: one cell. Every metrics line goes to the driver through
    ``tune.report`` (live progress, and Ray's TensorBoard / MLflow / W&B loggers)."""
    start = time.perf_counter()
    import torch
    from ray import tune

    from bench.run import execute

    config = from_dict(RunConfig, space["cell"], "<grid cell>")
    ident = {"run_id": config.run_id, "method": config.method.name, "seed": config.seed,
             "stages": cell_steps(config)[0]}

    def report(record: dict[str, Any]) -> None:
        tune.report({**ident, **{k: v for k, v in record.items() if isinstance(v, int | float)}})

    if config.train.workers > 1:
        from bench.workers import launch

        result = launch(config, space["resources"][config.run_id], restart=space["restart"], progress=False)
    else:
        torch.set_num_threads(max(1, int(space["resources"][config.run_id].get("cpu", 1))))
        result = execute(config, progress=False, restart=space["restart"], listeners=[report],
                         timing={"setup_s": time.perf_counter() - start})
    tune.report({**ident, "status_success": float(result.ok)})


def _ray_temp_dir(study_dir: Path) -> Path:
    digest = hashlib.sha1(str(study_dir.resolve()).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"isobench-ray-{digest}"


def reap(temp_dir: Path) -> int:
    """Kill Ray processes left running under ``temp_dir`` (by a driver that was killed)."""
    import psutil

    killed = 0
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            # Ray's agents rename themselves (ray::DashboardAgent): their log files still say whose they are.
            mine = str(temp_dir) in " ".join(proc.info["cmdline"] or []) or any(
                f.path.startswith(str(temp_dir)) for f in proc.open_files())
            if proc.pid != os.getpid() and mine:
                proc.kill()
                killed += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return killed


def start_ray(study_dir: Path, address: str | None, verbose: bool) -> Path:
    """Join the cluster at ``address``, or start a local Ray in a study-specific temp dir
    (reaping Ray processes a killed driver left there); returns that temp dir."""
    import ray

    temp_dir = _ray_temp_dir(study_dir)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    if not verbose:  # Ray's banner, trial table and hints; the status blocks say what matters
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    quiet = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    else:
        reap(temp_dir)
        ray.init(include_dashboard=False, _temp_dir=str(temp_dir), **quiet,
                 runtime_env={"env_vars": {"TQDM_DISABLE": "1", "RAY_AUTH_MODE": "disabled"}})
    return temp_dir


def stop_ray(address: str | None, temp_dir: Path) -> None:
    import ray

    ray.shutdown()
    if not address:
        reap(temp_dir)


def check_resources(per_trial: dict[str, float], address: str | None) -> None:
    """On a local Ray, a trial cannot ask for more than this machine has."""
    if address:
        return
    import torch

    have = {"cpu": float(os.cpu_count() or 1), "gpu": float(torch.cuda.device_count())}
    for key, want in per_trial.items():
        if want > have.get(key, 0.0):
            raise ConfigError(f"grid.resources.{key} = {want:g} per trial, but this machine has {have.get(key, 0):g}; "
                              f"allowed: at most {have.get(key, 0):g} here, or run on a cluster with --address")


def run_grid(grid: Grid, address: str | None = None, retry_failed: bool = False, restart: bool = False,
             device_bytes: int | None = None, verbose: bool = False) -> dict[str, int]:
    """Run the cells still to do, holding the study's lock; returns counts of cell statuses.
    Cells whose memory plan exceeds the device are recorded as failed up front, not run."""
    address = address or os.environ.get("RAY_ADDRESS")
    for cell in grid.cells:
        check_resources(resources(grid, cell), address)
    with study_lock(grid.study_dir.resolve()):
        too_big = [(c, p) for c, p in zip(grid.cells, plans(grid, device_bytes)) if p is not None and p.fits is False]
        for cell, _ in too_big:
            if cell_status(cell) != "success":
                try:
                    check_fits(cell, device_bytes)
                except DoesNotFit as e:
                    print(f"error: {e}", file=sys.stderr)
                    res.write_result(cell.run_dir, _failed(cell, e))
        return _run_locked(grid, address, retry_failed, restart, verbose)


def logger_callbacks(names: list[str], study_dir: Path) -> list[Any]:
    """Ray Tune's own tracker callbacks for ``[grid] loggers`` (TensorBoard is on by default:
    Ray writes events of every reported metric under ``<study>/.ray/``)."""
    out: list[Any] = []
    if "mlflow" in names:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a plain local folder, no database to set up
        out.append(MLflowLoggerCallback(tracking_uri=(study_dir / "mlruns").as_uri(), experiment_name=study_dir.name))
    if "wandb" in names:
        from ray.air.integrations.wandb import WandbLoggerCallback

        os.environ.setdefault("WANDB_MODE", "offline")
        out.append(WandbLoggerCallback(project=study_dir.name, mode="offline", dir=str(study_dir)))
    return out


def _run_locked(grid: Grid, address: str | None, retry_failed: bool, restart: bool, verbose: bool) -> dict[str, int]:
    from ray import tune

    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)  # its "Resume with Tuner.restore" is not ours
    write_manifest(grid)
    redo = {"failed"} if retry_failed else {"missing", "running", "corrupt"}
    todo = [c for c in grid.cells if cell_status(c) in redo]
    counts = {"total": len(grid.cells), "scheduled": len(todo)}
    if not todo:
        print(f"[grid] nothing to run: {len(grid.cells)} cells, none {' or '.join(sorted(redo))}", file=sys.stderr)
        return {**counts, **summarize(grid)}
    study_dir = grid.study_dir.resolve()
    from bench.models import prepare_backbone

    for backbone in sorted({c.backbone.name for c in todo}):
        prepare_backbone(backbone)
    from bench.run import base_key, ensure_base_scores

    firsts = {base_key(c): c for c in reversed(todo)}
    for cell in firsts.values():  # once per backbone (and seed of a random-init one), before any trial
        print(f"[grid] base scores of {cell.backbone.name}", file=sys.stderr, flush=True)
        ensure_base_scores(cell)
    per_trial = {c.run_id: resources(grid, c) for c in todo}

    def trial_resources(space: dict[str, Any]) -> dict[str, float]:
        cell = from_dict(RunConfig, space["cell"], "<grid cell>")
        return DRIVER if cell.train.workers > 1 else per_trial[cell.run_id]

    temp_dir = start_ray(study_dir, address, verbose)
    progress = GridProgress(len(todo), {c.run_id: cell_steps(c)[1] for c in todo})

    class Callback(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001, ANN202
            progress.report(str(result.get("run_id")), result)

        def on_step_end(self, iteration, trials, **info):  # noqa: ANN001, ANN202
            progress.tick()

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001, ANN202
            progress.finished(from_dict(RunConfig, trial.config["cell"], "<cell>").run_id, failed=False)

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001, ANN202
            progress.finished(from_dict(RunConfig, trial.config["cell"], "<cell>").run_id, failed=True)

    cells = [{**to_dict(c), "results_dir": str(Path(c.results_dir).resolve())} for c in todo]
    try:
        kinds = sorted({json.dumps(r, sort_keys=True) for r in per_trial.values()})
        print(f"[grid] running {len(todo)} of {len(grid.cells)} cells, {' or '.join(kinds)} per trial", file=sys.stderr)
        tuner = tune.Tuner(
            tune.with_resources(_trial, trial_resources),
            param_space={"cell": tune.grid_search(cells), "resources": per_trial, "restart": restart},
            tune_config=tune.TuneConfig(max_concurrent_trials=grid.spec.max_concurrent_trials or None,
                                        reuse_actors=True),  # no second round of imports per trial
            run_config=tune.RunConfig(name=f"grid-{time.strftime('%Y%m%d-%H%M%S')}",
                                      storage_path=str(study_dir / ".ray"), verbose=2 if verbose else 0,
                                      callbacks=[Callback(), *logger_callbacks(grid.spec.loggers, study_dir)],
                                      failure_config=tune.FailureConfig(max_failures=grid.spec.max_failures)),
        )
        outcome = tuner.fit()
        for r in outcome:
            if r.error is not None:
                cell = from_dict(RunConfig, r.config["cell"], "<grid cell>")
                if cell_status(cell) != "failed":
                    try:
                        _record_crash(cell, r.error)
                    except OSError as e:  # e.g. the disk is full: say so, keep the trial's own error
                        print(f"[grid] {cell.run_id} failed ({type(r.error).__name__}: {str(r.error)[-300:]}) and its "
                              f"result could not be written to {cell.run_dir}: {e}", file=sys.stderr)
    finally:
        stop_ray(address, temp_dir)
    # After Ctrl-C, Ray returns partial results instead of raising: cells left without a result
    # did not finish, and isobench (not Ray's Tuner.restore) says how to resume.
    unfinished = sum(cell_status(c) in ("missing", "running") for c in todo)
    print_breakdown(todo)
    return {**counts, **summarize(grid), "unfinished": unfinished}


def _failed(config: RunConfig, error: BaseException) -> res.Result:
    from bench.run import crash_result

    config.run_dir.mkdir(parents=True, exist_ok=True)
    return crash_result(config, error)


def _record_crash(config: RunConfig, error: BaseException) -> None:
    """A trial died without writing its result (e.g. killed for memory): record it as failed."""
    res.write_result(config.run_dir, _failed(config, error))


def print_breakdown(cells: list[RunConfig]) -> None:
    """One line per cell run this time: where its wall time went."""
    for c in cells:
        try:
            result = res.read_result(c.run_dir)
        except res.ResultError:
            continue
        if result is None or not result.train.timing:
            continue
        t = result.train.timing
        parts = "  ".join(f"{k.removesuffix('_s')} {t[k]:.0f}s" for k in
                          ("setup_s", "data_s", "model_s", "base_s", "plan_s", "train_s", "eval_s") if k in t)
        wall = result.train.wall_s or 0.0
        print(f"[grid] {c.run_id}: wall {clock(wall)}  {parts}", file=sys.stderr)


def write_manifest(grid: Grid) -> None:
    """``<study>/grid.json``: every cell the study's grid files expect (with its config), so a
    report can show missing ones; per grid file the cells of its latest version, so cells of an
    edited grid file are shown as old, not as missing; and the grids' method order."""
    import json

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
