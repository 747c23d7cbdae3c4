"""One run, end to end, in named steps: load the suite, build the parts (precision, backbone,
method, trainer), take the base scores, train and evaluate every stage of the regime, and write
``result.json`` (schema: ``reports.schema``) atomically whatever happens: ``run.status`` says
how it ended. ``execute`` alone assembles the result, and builds each of its sections once.

A run whose result says ``success`` (under its own id or a twin's, ``bench.run.status``) is
never redone unless ``force``. A failed run records the error type, message and the step it
reached. Its next attempt resumes from the run's last in-run checkpoint when it kept one
(``train.checkpoint_every``; on by default on GPUs, so a deterministic failure such as a NaN at
a given step repeats from there: ``--restart`` starts over), else it starts from step 0.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

import methods
from bench.backbones.registry import device, enable_activation_checkpointing, load_backbone
from bench.engine.host_memory import hand_back, keep_freed_memory
from bench.engine.precision import Precision
from bench.engine.sharding import Sharding
from bench.run import results as res
from bench.run.assembly import all_tasks_data, build_trainer, open_checkpoint, prepare_run_dir, train_info
from bench.run.base_scores import base_scores
from bench.run.cell import Cell
from bench.run.measuring import describe_suite, load_suite, split_measured
from bench.run.memory_plan import state_per_parameter
from bench.run.stages import timed, train_and_evaluate
from bench.run.status import done_result, new_run_info, run_lock
from bench.suite.judge import build_judge
from reports.schema import ErrorInfo, Evaluation, Result


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def error_info(error: BaseException, step: int | None) -> ErrorInfo:
    return ErrorInfo(type=type(error).__name__, message=str(error), step=getattr(error, "step", step),
                     traceback=traceback.format_exc()[-5000:])


def execute(cell: Cell, *, progress: bool = True, force: bool = False, restart: bool = False,
            listeners: list[Callable[[dict[str, Any]], None]] | None = None,
            timing: dict[str, float] | None = None) -> Result:
    """Train and evaluate one run, resuming from its checkpoint if it has one (``restart``
    discards it); returns (and writes) its result. ``listeners`` get every metrics line;
    ``timing`` (seconds by phase, e.g. the caller's imports) is completed and recorded."""
    keep_freed_memory()
    run_dir = cell.run_dir
    if not force and (previous := done_result(cell)) is not None:
        return previous  # without waiting for the lock of a run that may be going on
    prepare_run_dir(cell)
    precision = Precision.from_config(cell.precision, device())
    sharding = Sharding(precision.device, workers=cell.train.workers)  # Ray Train started the process group
    with run_lock(run_dir) if sharding.writes else contextlib.nullcontext():
        return _execute(cell, sharding, precision, progress=progress, force=force, restart=restart,
                        listeners=listeners, timing=timing)


def _execute(cell: Cell, sharding: Sharding, precision: Precision, *, progress: bool, force: bool,
             restart: bool, listeners: list[Callable[[dict[str, Any]], None]] | None,
             timing: dict[str, float] | None) -> Result:
    """``execute`` under the run's lock."""
    if not force and (previous := done_result(cell)) is not None:
        return previous  # it finished while this process waited for the lock
    run, evaluation, provenance = new_run_info(cell), Evaluation(), res.provenance()
    hand_back()  # what an earlier trial of this process freed is not this run's peak
    res.reset_peak_memory()
    start = time.perf_counter()
    trainer = method = None
    timing = dict(timing or {})
    try:
        with timed(timing, "checkpoint_read_s"):
            checkpointer, saved = open_checkpoint(cell, restart or force, sharding, lambda: {
                "evaluation": copy.deepcopy(evaluation), "resumed_from": list(run.resumed_from),
                "items": res.item_snapshot(cell.run_dir) if sharding.writes else ""})
        if saved is not None:  # a resumed run takes the stage results it had measured
            evaluation = saved["run"]["evaluation"]
            run.resumed_from = [*saved["run"]["resumed_from"], saved["step"]]
            if sharding.writes and (restored := res.restore_item_records(cell.run_dir, saved["run"].get("items", ""))):
                print(f"[run] {cell.run_id}: items.jsonl had lost {restored} record(s) of the evaluations before the "
                      f"checkpoint: restored from the checkpoint", file=sys.stderr)
        seed_everything(cell.seed)
        with timed(timing, "data_s"):
            suite = sharding.writer_first(lambda: load_suite(cell))  # rank 0 writes the task files
        evaluation = dataclasses.replace(evaluation, **describe_suite(cell, suite))
        judge = build_judge(cell.judge) if cell.judge is not None else None
        if judge is not None and hasattr(judge, "probe"):
            sharding.on_writer(judge.probe)  # an unreachable judge fails the run before anything trains
        with timed(timing, "model_s"):
            model, tokenizer = load_backbone(cell.backbone.name, precision.param_dtype, cell.seed, precision.device)
        if cell.train.activation_checkpointing:
            enable_activation_checkpointing(model)
        method = methods.build(cell.method_name, cell.options)
        if saved is None:
            with precision.evaluation(model), timed(timing, "base_s"):
                measured = base_scores(cell, model, tokenizer, suite, judge, sharding)
            base, retention_base, records = split_measured(measured, "base")
            evaluation = dataclasses.replace(evaluation, base=base, retention_base=retention_base)
            if sharding.writes:
                res.add_item_records(cell.run_dir, records)
        everything = all_tasks_data(cell, suite, tokenizer, precision)
        trainer = build_trainer(cell, precision, method, model, everything, progress, checkpointer, saved,
                                list(listeners or []), sharding)
        train_and_evaluate(cell, trainer, suite, tokenizer, judge, evaluation, timing, everything, precision)
        if cell.train.keep_final_weights:
            trainer.save_final(cell.run_dir / "final", tokenizer)
        checkpointer.discard()
        run.status = "success"
    except Exception as e:  # noqa: BLE001 - every failure is recorded, then the grid goes on
        run.status = "failed"
        run.error = error_info(e, trainer.step if trainer else None)
    finally:
        train = train_info(trainer, method, time.perf_counter() - start, sharding.workers)
        timing["train_s"] = train.summary.get("train_s") or 0.0
        train.timing = {k: round(v, 3) for k, v in timing.items()}
        if trainer is not None:
            train.budget["state_bytes_per_param"] = state_per_parameter(cell)
        run.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        result = Result(run=run, evaluation=evaluation, train=train, provenance=provenance)
        if run.status != "running" and sharding.writes:  # Ctrl-C leaves no result: the run is simply missing
            res.write_result(cell.run_dir, result)
    return result
