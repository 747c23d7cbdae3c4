"""One run, end to end, in named steps: load the suite, build the parts (precision, backbone,
method, trainer), measure the base scores, train and evaluate every stage of the regime, and
write ``result.json`` (schema: ``reports.schema``) atomically whatever happens: ``run.status``
says how it ended. Each step returns what it found; ``execute`` alone assembles the result.

A run whose result says ``success`` is never redone unless ``force``. A failed run records the
error type, message and the step it reached. Its next attempt resumes from the run's last
in-run checkpoint when it kept one (``train.checkpoint_every``; on by default on GPUs, so a
deterministic failure such as a NaN at a given step repeats from there: ``--restart`` starts
over), else it starts from step 0.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import methods
from bench import analysis
from bench.backbones.registry import device, enable_activation_checkpointing, load_backbone, resolve
from bench.config import RunConfig, to_dict
from bench.engine.checkpoint import CHECKPOINT_DIR, Checkpointer
from bench.engine.data import Feature, StageData, Stream, encode
from bench.engine.host_memory import keep_freed_memory
from bench.engine.precision import Precision
from bench.engine.run_log import EVENTS_DIR, RunLog
from bench.engine.sentinel import LostUpdateSentinel
from bench.engine.sharding import Sharding
from bench.engine.train import Trainer
from bench.files import atomic_write, hold_lock, refuse_links
from bench.run import results as res
from bench.run.memory_plan import state_per_parameter
from bench.run.regimes import regime_plan, stages
from bench.suite.evaluate import evaluate
from bench.suite.judge import build_judge
from bench.suite.retention import retention
from bench.suite.tasks import Suite, build_suite, source_digests
from bench.suite.tasks.lm_eval_files import FORMAT_VERSION
from methods.base import StagePlan
from reports.schema import ITEMS, ErrorInfo, Evaluation, ItemRecord, Result, RunInfo, StageResult, TrainInfo

RUN_LOCK = ".run.lock"
# The folders a run writes and deletes in: never through a symbolic link (``refuse_links``).
RUN_FOLDERS = (CHECKPOINT_DIR, EVENTS_DIR, str(ITEMS.parent), "final")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def cached_base_scores(config: RunConfig) -> dict[str, Any] | None:
    """The cached base scores of ``config``'s backbone, or None when not measured yet."""
    path = base_path(config)
    if not path.is_file():
        return None
    cached = json.loads(path.read_text())
    return {"scores": cached["scores"], "retention": cached.get("retention")}


def base_scores(config: RunConfig, model: torch.nn.Module, tokenizer: Any, suite: Suite, judge: Any,
                sharding: Sharding | None = None) -> dict[str, Any]:
    """Scores of the untrained backbone (with each task's ``items`` and the ``retention`` NLL),
    measured once per (backbone, tasks, eval) and cached under ``<study>/base/`` (the seed
    matters only for random-init backbones). Sharded, rank 0 decides whether the cache holds
    them, every rank takes part in the (sharded) evaluation, and rank 0 writes the cache."""
    if sharding is None:
        cached = cached_base_scores(config)
    else:
        cached = sharding.on_writer(lambda: cached_base_scores(config))
    if cached is not None:
        return cached
    measured = measure(config, model, tokenizer, suite, judge)
    if sharding is not None:
        measured = sharding.from_writer(lambda: measured if sharding.writes else None)
    if sharding is None or sharding.writes:
        atomic_write(base_path(config), json.dumps({"key": json.loads(base_key(config)), **measured}, indent=2,
                                                   sort_keys=True) + "\n")
    return measured


def measure(config: RunConfig, model: torch.nn.Module, tokenizer: Any, suite: Suite, judge: Any) -> dict[str, Any]:
    """One evaluation: every task's score with its per-item records, and the retention NLL."""
    scores = evaluate(model, tokenizer, suite, config.eval, judge=judge, per_item=True)
    return {"scores": scores, "retention": retention(model, tokenizer, config.eval.retention, config.eval.batch_size)}


def split_measured(measured: dict[str, Any], evaluation: str | int,
                   suite: Suite) -> tuple[dict[str, Any], float | None, list[ItemRecord]]:
    """(scores without items, retention, item records) of one ``measure``."""
    scores = copy.deepcopy(measured["scores"])
    records = res.item_records(evaluation, scores)
    return scores, measured.get("retention"), records


def ensure_base_scores(config: RunConfig) -> None:
    """Measure and cache the base scores of ``config``'s backbone (a grid does this once per
    backbone before its trials start, so no two trials measure the same thing)."""
    if base_path(config).is_file():
        return
    keep_freed_memory()
    suite = load_suite(config)
    precision = Precision.from_config(config.train.precision, device())
    model, tokenizer = load_backbone(config.backbone.name, precision.param_dtype, config.seed, precision.device)
    judge = build_judge(config.eval.judge) if config.eval.judge else None
    with precision.evaluation(model):
        base_scores(config, model, tokenizer, suite, judge)


def base_key(config: RunConfig) -> str:
    """What the base scores depend on (backbone, tasks, eval, the resolved precision policy; the
    seed for random-init backbones)."""
    c = to_dict(config)
    key = {k: c[k] for k in ("backbone", "tasks", "eval")}
    key["tasks"] = {k: v for k, v in key["tasks"].items() if k not in ("groups", "num_groups")}  # stages only
    key["seed"] = config.seed if resolve(config.backbone.name).random_init else None
    key["precision"] = Precision.from_config(config.train.precision, device()).name  # ``auto`` as resolved here
    key["format"] = FORMAT_VERSION
    digests = source_digests(config.tasks.sources)
    if digests:  # a rewritten data file is another suite (absent for generated tasks: old keys stay)
        key["source_sha256"] = digests
    return json.dumps(key, sort_keys=True)


def stale_sources(config: RunConfig, result: Result) -> list[str]:
    """The tasks whose local source file changed since ``result`` was measured: such a result is
    not returned as done, it is run again."""
    digests = source_digests(config.tasks.sources)
    rows = result.evaluation.data_rows
    return [t for t, d in digests.items() if rows.get(t, {}).get("source_sha256") != d]


def is_done(config: RunConfig, result: Result | None) -> bool:
    """A successful result of this cell, measured on the data its sources hold now."""
    return (result is not None and result.ok and bool(result.evaluation.stages)  # a success with no stage is not done
            and not stale_sources(config, result))


def done_result(config: RunConfig) -> Result | None:
    """The cell's result when it is done (``is_done``); None when it is to run (a corrupt result is redone)."""
    try:
        previous = res.read_result(config.run_dir)
    except res.ResultError:
        return None
    return previous if is_done(config, previous) else None


def base_path(config: RunConfig) -> Path:
    digest = hashlib.sha1(base_key(config).encode()).hexdigest()[:10]
    return Path(config.results_dir) / config.study / "base" / f"{digest}.json"


def new_run_info(config: RunConfig) -> RunInfo:
    """The ``run`` section of a run that is starting."""
    return RunInfo(run_id=config.run_id, study=config.study, status="running", method=config.method.name,
                   regime=config.regime, backbone=config.backbone.name, seed=config.seed,
                   tasks=list(config.tasks.names), config=to_dict(config),
                   started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def load_suite(config: RunConfig) -> Suite:
    """The run's tasks (generated or loaded, written as lm-eval tasks)."""
    return build_suite(config.tasks.names, config.tasks.data_seed, config.tasks.train_size,
                       config.tasks.test_size, Path(config.results_dir) / config.study / "data",
                       config.eval.max_gen_toks, config.tasks.sources)


def describe_suite(config: RunConfig, suite: Suite) -> dict[str, Any]:
    """What the tasks are, for the ``evaluation`` section: metrics, scorers, rows and chance."""
    return {"metrics": {t.name: t.metric for t in suite.tasks}, "scorers": {t.name: t.scorer for t in suite.tasks},
            "data_rows": {t.name: {"train": len(suite.train[t.name]), "test": len(suite.test[t.name]),
                                   **suite.notes.get(t.name, {})} for t in suite.tasks},
            "chance": {t.name: t.chance(suite.test[t.name][:config.eval.limit]) for t in suite.tasks}}


def open_checkpoint(config: RunConfig, restart: bool, sharding: Sharding,
                    snapshot: Callable[[], dict[str, Any]]) -> tuple[Checkpointer, dict[str, Any] | None]:
    """The run's checkpointer and its last checkpoint (None: start from step 0); ``snapshot``
    gives what a checkpoint keeps of the result being built. A fresh run starts with empty logs.
    Every rank of a sharded run reads its own file; only rank 0 deletes anything."""
    every = config.train.checkpoint_interval(torch.cuda.is_available())
    checkpointer = Checkpointer(config.run_dir, config.config_hash, every, snapshot, sharding,
                                safe_types=(Evaluation, StageResult))  # what ``snapshot`` holds besides plain data
    if restart:
        checkpointer.discard()
    saved = checkpointer.load()
    if saved is None:
        if sharding.writes:
            RunLog(config.run_dir).clear_files()  # logs of an earlier attempt without a checkpoint
        return checkpointer, None
    if sharding.writes:
        print(f"[run] {config.run_id}: resuming from the checkpoint at step {saved['step']}", file=sys.stderr)
    return checkpointer, saved


def all_tasks_data(config: RunConfig, features: dict[str, list[Feature]], pad_id: int,
                   precision: Precision) -> StageData:
    """Batches of every task of the run (for a method's stage plan and for the analyses)."""
    return StageData(-1, features, config.train.batch_size, pad_id, precision.device, config.seed,
                     config.tasks.mix == "balanced", precision)


def build_trainer(config: RunConfig, precision: Precision, method: methods.Method, model: torch.nn.Module,
                  data: StageData, progress: bool, checkpointer: Checkpointer, saved: dict[str, Any] | None,
                  listeners: list[Callable[[dict[str, Any]], None]], sharding: Sharding) -> Trainer:
    observers = [LostUpdateSentinel(config.seed, held_fixed=method.held_fixed),
                 *analysis.build(dataclasses.asdict(config.analysis), data)]
    trainer = Trainer(model, method, config.train, data.pad_id, precision, run_dir=config.run_dir,
                      progress=progress and sharding.writes, checkpointer=checkpointer, observers=observers,
                      listeners=listeners, sharding=sharding)
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
    return trainer


def evaluate_stage(config: RunConfig, trainer: Trainer, suite: Suite, tokenizer: Any, judge: Any) -> dict[str, Any]:
    """Scores of every task on the exported model; in a sharded run every rank gathers the whole
    model and evaluates its share of the items, and every rank gets the gathered scores."""
    return trainer.on_exported_model(lambda model: measure(config, model, tokenizer, suite, judge))


def stage_result(stage: Any, steps_done: int, scores: dict[str, Any], retention_nll: float | None) -> StageResult:
    return StageResult(stage=stage.index, trained_on=stage.tasks, steps_done=steps_done,
                       scores={t: s["score"] for t, s in scores.items()}, nll={t: s["nll"] for t, s in scores.items()},
                       details={t: {k: v for k, v in s.items() if k not in ("score", "nll")} for t, s in scores.items()},
                       retention=retention_nll)


def train_and_evaluate(config: RunConfig, trainer: Trainer, suite: Suite, tokenizer: Any, judge: Any,
                       evaluation: Evaluation, timing: dict[str, float], everything: StageData,
                       precision: Precision) -> None:
    """The stage plan (the regime's, or the method's), then every stage: train, then evaluate
    all tasks on the exported model. ``evaluation`` is the result's section, extended after
    every stage so that a checkpoint keeps the stages measured so far."""
    features, balanced = everything.rows, config.tasks.mix == "balanced"
    if not evaluation.plan:  # a resumed run keeps the plan it had made
        with timed(timing, "plan_s"):
            chosen = trainer.plan_stages(regime_plan(config), everything, config.seed)
        evaluation.plan = {"groups": chosen.groups, **chosen.details}
    done = len(evaluation.stages)  # stages a resumed run had already evaluated
    # and trained (a checkpoint of an earlier version says nothing: it trained what it evaluated)
    trained = trainer.stages_done if trainer.stages_done >= 0 else done
    for position, stage in enumerate(stages(StagePlan(evaluation.plan["groups"]))[done:], done):
        rows = {t: features[t] for t in stage.tasks}
        stream = Stream(rows, f"{config.seed}:{stage.index}", balanced)
        data = StageData(stage.index, rows, config.train.batch_size, tokenizer.pad_token_id, precision.device,
                         config.seed, balanced, precision)
        if trained <= position:  # a run resumed after this stage's training evaluates it only
            trainer.run_stage(stage.index, data, stream, config.train.steps_per_stage)
        with timed(timing, "eval_s"):
            try:
                measured = evaluate_stage(config, trainer, suite, tokenizer, judge)
            except Exception:  # e.g. the judge is down: keep the trained stage, a rerun evaluates it
                trainer.save_checkpoint(always=True)
                raise
        scores, retention_nll, records = split_measured(measured, stage.index, suite)
        if trainer.sharding.writes:
            res.add_item_records(config.run_dir, records)
        evaluation.stages.append(stage_result(stage, trainer.step, scores, retention_nll))
        evaluation.scorers = {t: s["scorer"] for t, s in scores.items()}
        trainer.save_checkpoint()


def error_info(error: BaseException, step: int | None) -> ErrorInfo:
    return ErrorInfo(type=type(error).__name__, message=str(error), step=getattr(error, "step", step),
                     traceback=traceback.format_exc()[-5000:])


def train_info(trainer: Trainer | None, method: methods.Method | None, wall_s: float, workers: int) -> TrainInfo:
    """Training statistics, method statistics and timing, whatever the outcome."""
    report = trainer.report() if trainer is not None else {
        "method_stats": method.stats() if method is not None else {}}
    return TrainInfo(**report, wall_s=wall_s, peak_memory_bytes=res.peak_memory_bytes(),
                     **({} if trainer is not None else {"workers": workers}))


@contextlib.contextmanager
def timed(timing: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - start


def execute(config: RunConfig, *, progress: bool = True, force: bool = False, restart: bool = False,
            listeners: list[Callable[[dict[str, Any]], None]] | None = None,
            timing: dict[str, float] | None = None) -> Result:
    """Train and evaluate one run, resuming from its checkpoint if it has one (``restart``
    discards it); returns (and writes) its result. ``listeners`` get every metrics line;
    ``timing`` (seconds by phase, e.g. the caller's imports) is completed and recorded."""
    keep_freed_memory()
    run_dir = config.run_dir
    if not force and (previous := done_result(config)) is not None:
        return previous  # without waiting for the lock of a run that may be going on
    run_dir.mkdir(parents=True, exist_ok=True)
    refuse_links(run_dir, RUN_FOLDERS)
    precision = Precision.from_config(config.train.precision, device())
    sharding = Sharding(precision.device, workers=config.train.workers)  # Ray Train started the process group
    with run_lock(run_dir) if sharding.writes else contextlib.nullcontext():
        return _execute(config, sharding, precision, progress=progress, force=force, restart=restart,
                        listeners=listeners, timing=timing)


class RunBusy(RuntimeError):
    """Another process (an ``isobench run`` or a grid's trial) is running this cell."""


def run_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """``<run_dir>/.run.lock``, held while the run executes: two processes never run one cell."""
    def busy(holder: str) -> RunBusy:
        return RunBusy(f"another isobench process (pid {holder}) is running {run_dir.name} in {run_dir}; wait for "
                       f"it to finish (its result is then returned as it is), then run this command again")

    return hold_lock(run_dir / RUN_LOCK, busy)


def _execute(config: RunConfig, sharding: Sharding, precision: Precision, *, progress: bool, force: bool,
             restart: bool, listeners: list[Callable[[dict[str, Any]], None]] | None,
             timing: dict[str, float] | None) -> Result:
    """``execute`` under the run's lock."""
    run_dir = config.run_dir
    if not force and (previous := done_result(config)) is not None:
        return previous  # it finished while this process waited for the lock
    run, evaluation, provenance = new_run_info(config), Evaluation(), res.provenance()
    start = time.perf_counter()
    trainer = method = None
    timing = dict(timing or {})
    try:
        with timed(timing, "checkpoint_read_s"):
            checkpointer, saved = open_checkpoint(config, restart or force, sharding, lambda: {
                "evaluation": copy.deepcopy(evaluation), "resumed_from": list(run.resumed_from)})
        if saved is not None:  # a resumed run takes the stage results it had measured
            evaluation = saved["run"]["evaluation"]
            run.resumed_from = [*saved["run"]["resumed_from"], saved["step"]]
        seed_everything(config.seed)
        with timed(timing, "data_s"):
            suite = sharding.writer_first(lambda: load_suite(config))  # rank 0 writes the task files
        for key, value in describe_suite(config, suite).items():
            setattr(evaluation, key, value)
        judge = build_judge(config.eval.judge) if config.eval.judge else None
        if judge is not None and hasattr(judge, "probe"):
            sharding.on_writer(judge.probe)  # an unreachable judge fails the run before anything trains
        with timed(timing, "model_s"):
            model, tokenizer = load_backbone(config.backbone.name, precision.param_dtype, config.seed, precision.device)
        if config.train.activation_checkpointing:
            enable_activation_checkpointing(model)
        method = methods.build(config.method.name, config.method.options)
        if saved is None:
            with precision.evaluation(model), timed(timing, "base_s"):
                measured = base_scores(config, model, tokenizer, suite, judge, sharding)
            evaluation.base, evaluation.retention_base, records = split_measured(measured, "base", suite)
            if sharding.writes:
                res.add_item_records(config.run_dir, records)
        features = {t: [encode(r, tokenizer, config.train.max_length) for r in rows] for t, rows in suite.train.items()}
        everything = all_tasks_data(config, features, tokenizer.pad_token_id, precision)
        trainer = build_trainer(config, precision, method, model, everything, progress, checkpointer, saved,
                                list(listeners or []), sharding)
        train_and_evaluate(config, trainer, suite, tokenizer, judge, evaluation, timing, everything, precision)
        if config.train.keep_final_weights:
            trainer.save_final(config.run_dir / "final", tokenizer)
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
            train.budget["state_bytes_per_param"] = state_per_parameter(config)
        run.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        result = Result(run=run, evaluation=evaluation, train=train, provenance=provenance)
        if run.status != "running" and sharding.writes:  # Ctrl-C leaves no result: the run is simply missing
            res.write_result(run_dir, result)
    return result


def crash_result(config: RunConfig, error: BaseException) -> Result:
    """The result of a trial that died without writing one (e.g. killed for memory)."""
    run = new_run_info(config)
    run.status = "failed"
    run.error = ErrorInfo(type=type(error).__name__, message=str(error)[-2000:])
    return Result(run=run, provenance=res.provenance())
