"""Run a grid's cells as Ray Tune trials: resume, failures kept per cell, live progress.

- Each invocation expands the grid and schedules only the cells still to do (no result.json
  with ``status == "success"``; with ``retry_failed`` only the failed ones), so re-running the
  same command after a crash, Ctrl-C or ``kill -9`` finishes exactly the missing cells.
- A trial writes its own ``result.json`` atomically (``bench.run.execution.execute``); a trial whose
  process dies is retried by Ray up to ``[grid] max_failures`` times (each retry resumes from
  the run's checkpoint), then recorded as failed here, from Ray's error.
- A cell with a checkpoint but no successful result resumes from it on the next invocation
  (``--restart`` discards checkpoints).
- Resources: ``bench.launch.dispatch``'s one policy (a GPU, if visible, and a CPU per worker;
  ``[grid] resources`` overrides), and every trial runs its cell through its ``run_cell``.
- A sharded cell (``train.workers`` > 1) runs as Ray Train V2's Train-inside-Tune: its Tune trial
  is a small driver holding no CPU or GPU, which starts a ``TorchTrainer`` whose workers hold the
  trial's resources (``bench.launch.workers``).
- ``address`` (or ``RAY_ADDRESS``) joins an existing cluster; otherwise a local Ray is started
  (``bench.launch.ray_session``). The manifest and cell statuses are ``bench.launch.manifest``,
  the dry run ``bench.launch.dry_run``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from bench.backbones.registry import device, prepare_backbone
from bench.config import RunConfig, from_dict, to_dict
from bench.engine.precision import CPU_BF16_ENV, cpu_bf16
from bench.launch.dispatch import check_resources, host_share, resources, run_cell
from bench.launch.dry_run import cell_steps, plans
from bench.launch.manifest import summarize, write_manifest
from bench.launch.progress import GridProgress, clock
from bench.launch.ray_session import ray_session
from bench.launch.study_lock import study_lock
from bench.run import results as res
from bench.run.base_scores import base_key, ensure_base_scores
from bench.run.cell import Cell, resolve
from bench.run.cells import Grid
from bench.run.cost_plan import Assumptions, measured, plan_costs
from bench.run.memory_plan import DoesNotFit, check_fits
from bench.run.status import RunBusy, TwinIndex, cell_status, crash_result, twin_index

# A sharded cell's Tune trial only drives its TorchTrainer: one byte of memory, because Ray
# refuses an empty request and any CPU it held would be missing for the trainer's workers.
DRIVER = {"memory": 1.0}


def _trial(space: dict[str, Any]) -> None:
    """Ray Tune function trainable: one cell. Every metrics line goes to the driver through
    ``tune.report`` (live progress, and Ray's TensorBoard / MLflow / W&B loggers)."""
    start = time.perf_counter()
    from ray import tune

    cell = resolve(from_dict(RunConfig, space["cell"]["config"], "<grid cell>"), "<grid cell>")
    ident = {"run_id": cell.run_id, "method": cell.method_name, "seed": cell.seed,
             "stages": cell_steps(cell)[0]}

    def report(record: dict[str, Any]) -> None:
        tune.report({**ident, **{k: v for k, v in record.items() if isinstance(v, int | float)}})

    try:
        result = run_cell(cell, space["resources"][cell.run_id], restart=space["restart"], progress=False,
                          listeners=[report], timing={"setup_s": time.perf_counter() - start})
    except RunBusy as e:  # an `isobench run` of this cell holds it: its own result will say how it ended
        print(f"[grid] {cell.run_id} not run: {e}", file=sys.stderr)
        tune.report({**ident, "status_success": 0.0, "busy": 1.0})
        return
    tune.report({**ident, "status_success": float(result.ok)})


def run_grid(grid: Grid, address: str | None = None, retry_failed: bool = False, restart: bool = False,
             device_bytes: int | None = None, verbose: bool = False, assume: Assumptions | None = None) -> dict[str, int]:
    """Run the cells still to do, holding the study's lock; returns counts of cell statuses.
    Cells whose memory plan exceeds the device are recorded as failed up front, not run; on a
    local CPU machine the plan is of host memory, against a trial's share of it
    (``bench.launch.dispatch.host_share``)."""
    address = address or os.environ.get("RAY_ADDRESS")
    for cell in grid.cells:
        check_resources(resources(cell, grid.spec.resources), address)
    if device_bytes is None and not address and device().type == "cpu":  # the plan is of host memory here
        device_bytes = min(host_share(resources(c, grid.spec.resources), grid.spec.max_concurrent_trials)
                           for c in grid.cells)
    with study_lock(grid.study_dir.resolve()):
        too_big = [(c, p) for c, p in zip(grid.cells, plans(grid, device_bytes)) if p is not None and p.fits is False]
        twins = twin_index(grid.study_dir)  # folders holding a cell under its spelled-out id count as the cell
        for cell, _ in too_big:
            if cell_status(cell, twins) != "success":
                try:
                    check_fits(cell, device_bytes)
                except DoesNotFit as e:
                    print(f"error: {e}", file=sys.stderr)
                    res.write_result(cell.run_dir, _failed(cell, e))
        return _run_locked(grid, twins, address, retry_failed, restart, verbose, assume or Assumptions())


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
        if os.environ.pop("WANDB_API_KEY", None) is not None:  # offline runs need no key, and Ray would log it
            print("[grid] W&B logs offline (results/<study>/wandb; upload with 'wandb sync'): WANDB_API_KEY is not "
                  "passed to Ray, which writes the environment of its actors into its session logs", file=sys.stderr)
        out.append(WandbLoggerCallback(project=study_dir.name, mode="offline", dir=str(study_dir)))
    return out


def _run_locked(grid: Grid, twins: TwinIndex, address: str | None, retry_failed: bool, restart: bool, verbose: bool,
                assume: Assumptions) -> dict[str, int]:
    from ray import tune

    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)  # its "Resume with Tuner.restore" is not ours
    write_manifest(grid, twins)
    redo = {"failed"} if retry_failed else {"missing", "running", "corrupt", "stale"}
    todo = [c for c in grid.cells if cell_status(c, twins) in redo]
    counts = {"total": len(grid.cells), "scheduled": len(todo)}
    if not todo:
        print(f"[grid] nothing to run: {len(grid.cells)} cells, none {' or '.join(sorted(redo))}", file=sys.stderr)
        return {**counts, **summarize(grid, twins)}
    study_dir = grid.study_dir.resolve()
    # ``auto`` precision is decided once here and inherited by every trial this machine starts, so
    # one grid's cells never resolve it differently (a remote cluster's workers decide on their own)
    os.environ.setdefault(CPU_BF16_ENV, "1" if cpu_bf16() else "0")
    for backbone in sorted({c.backbone.name for c in todo}):
        prepare_backbone(backbone)
    firsts = {base_key(c): c for c in reversed(todo)}
    for key, cell in firsts.items():  # once per backbone (and seed of a random-init one), before any trial
        print(f"[grid] base scores of {cell.backbone.name}", file=sys.stderr, flush=True)
        try:
            ensure_base_scores(cell)
        except Exception as e:  # noqa: BLE001 - the cells that need them fail; the others run
            print(f"error: base scores of {cell.backbone.name}: {type(e).__name__}: {e}", file=sys.stderr)
            for c in [c for c in todo if base_key(c) == key]:
                _record_crash(c, e)
            todo = [c for c in todo if base_key(c) != key]
    if not todo:
        return {**counts, **summarize(grid, twins), "unfinished": 0}
    per_trial = {c.run_id: resources(c, grid.spec.resources) for c in todo}
    estimate = sum(c.total_h for c in plan_costs(todo, assume)[:len(todo)])

    def trial_resources(space: dict[str, Any]) -> dict[str, float]:
        cell = by_id[space["cell"]["run_id"]]
        return DRIVER if cell.train.workers > 1 else per_trial[cell.run_id]

    progress = GridProgress(len(todo), {c.run_id: cell_steps(c)[1] for c in todo})
    by_id = {c.run_id: c for c in todo}  # built before fit(): a trial killed before its first report has no config
    errors: dict[str, str | None] = {}  # run id -> trial path, from Tune's callback
    busy: set[str] = set()  # cells another isobench process was running: left to it
    started: set[str] = set()  # cells whose trial started in this round of ``fit``

    class Callback(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001, ANN202
            started.add(trial.config["cell"]["run_id"])

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001, ANN202
            progress.report(str(result.get("run_id")), result)
            if result.get("busy"):
                busy.add(str(result.get("run_id")))

        def on_step_end(self, iteration, trials, **info):  # noqa: ANN001, ANN202
            progress.tick()

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001, ANN202
            progress.finished(trial.config["cell"]["run_id"], failed=False)

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001, ANN202
            run_id = trial.config["cell"]["run_id"]
            errors[run_id] = trial.path
            progress.finished(run_id, failed=True)

    def tuner_of(cells: list[Cell]) -> Any:
        space = [{"config": {**to_dict(c.config), "results_dir": str(Path(c.results_dir).resolve())}, "run_id": c.run_id}
                 for c in cells]
        return tune.Tuner(
            tune.with_resources(_trial, trial_resources),
            param_space={"cell": tune.grid_search(space), "resources": per_trial, "restart": restart},
            tune_config=tune.TuneConfig(max_concurrent_trials=grid.spec.max_concurrent_trials or None,
                                        reuse_actors=True),  # no second round of imports per trial
            run_config=tune.RunConfig(name=f"grid-{time.strftime('%Y%m%d-%H%M%S')}",
                                      storage_path=str(study_dir / ".ray"), verbose=2 if verbose else 0,
                                      callbacks=[Callback(), *logger_callbacks(grid.spec.loggers, study_dir)],
                                      failure_config=tune.FailureConfig(max_failures=grid.spec.max_failures)),
        )

    with ray_session(study_dir, address, verbose):
        kinds = sorted({json.dumps(r, sort_keys=True) for r in per_trial.values()})
        print(f"[grid] running {len(todo)} of {len(grid.cells)} cells, {' or '.join(kinds)} per trial", file=sys.stderr)
        remaining = list(todo)
        while remaining:
            started.clear()
            try:
                outcome = tuner_of(remaining).fit()
            except Exception as e:  # noqa: BLE001 - Tune's controller itself raised (e.g. for a trial Ray
                # killed for memory): the cells it was running failed, the ones it had not started run next
                stopped = [c for c in remaining if c.run_id in started and cell_status(c) not in ("success", "failed")]
                for cell in stopped or remaining:
                    print(f"[grid] {cell.run_id} failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
                    _record_crash(cell, e)
                remaining = [c for c in remaining if c.run_id not in started] if stopped else []
                continue
            by_path = {str(r.path): r.error for r in outcome if r.error is not None}
            for run_id, path in errors.items():
                cell, error = by_id[run_id], by_path.get(str(path)) or RuntimeError("the trial ended with an error")
                if cell_status(cell) in ("failed", "success"):
                    continue
                try:
                    _record_crash(cell, error)
                except OSError as e:  # e.g. the disk is full: say so, keep the trial's own error
                    print(f"[grid] {cell.run_id} failed ({type(error).__name__}: {str(error)[-300:]}) and its "
                          f"result could not be written to {cell.run_dir}: {e}", file=sys.stderr)
            break
    # After Ctrl-C, Ray returns partial results instead of raising: cells left without a result
    # did not finish, and isobench (not Ray's Tuner.restore) says how to resume.
    unfinished = sum(cell_status(c) in ("missing", "running") for c in todo if c.run_id not in busy)
    print_breakdown(todo)
    ran = [m for c in todo if (m := measured(c)) is not None]
    if ran:
        print(f"[grid] cost: estimated {estimate:,.3f} device-hours for the {len(todo)} cells run, measured "
              f"{sum(t + e for t, e in ran) / 3600:,.3f} for the {len(ran)} that succeeded", file=sys.stderr)
    return {**counts, **summarize(grid, twins), "unfinished": unfinished, "busy": len(busy)}


def _failed(cell: Cell, error: BaseException) -> res.Result:
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    return crash_result(cell, worker_death(error))


def worker_death(error: BaseException) -> BaseException:
    """Ray's error for a trial whose process died, as the cell's failure: ``OutOfMemory`` when
    Ray's memory monitor killed it (with the memory figures Ray reports), ``WorkerDied`` for any
    other process death; other errors as they are."""
    text = f"{type(error).__name__}: {error}"
    if "OutOfMemoryError" in text or "memory monitor" in text.lower() or "killed due to memory" in text.lower() \
            or "running low on memory" in text.lower():
        figures = re.search(r"(Memory on the node.*?(?:threshold of [0-9.]*[0-9]|limit \([0-9.]+\)))", text, re.S)
        return OutOfMemory("Ray's memory monitor killed the trial" + (f": {' '.join(figures.group(1).split())}"
                                                                       if figures else f" ({text[-300:]})"))
    if any(sign in text for sign in ("WorkerCrashedError", "ActorDiedError", "RayActorError", "died unexpectedly",
                                     "SYSTEM_ERROR")):
        return WorkerDied(f"the trial's process died without writing its result ({text[-500:]})")
    return error


class OutOfMemory(RuntimeError):
    """Ray's memory monitor killed the trial's process."""


class WorkerDied(RuntimeError):
    """The trial's process died without writing a result."""


def _record_crash(cell: Cell, error: BaseException) -> None:
    """A trial died without writing its result (e.g. killed for memory): record it as failed."""
    res.write_result(cell.run_dir, _failed(cell, error))


def failure_lines(grid: Grid) -> list[str]:
    """One line per cell of ``grid`` whose result is failed (its error) or cannot be read."""
    lines = []
    for c in grid.cells:
        try:
            r = res.read_result(c.run_dir)
        except res.ResultError as e:
            lines.append(f"  corrupt {c.run_id}: {e}")
            continue
        if r is not None and r.run.status == "failed" and r.run.error is not None:
            e = r.run.error
            lines.append(f"  failed {c.run_id}: {e.type}: {e.message} (step {e.step})")
    return lines


def print_breakdown(cells: list[Cell]) -> None:
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


