"""One run, end to end, in named steps: load the suite, build the parts (precision, backbone,
method, trainer), measure the base scores, train and evaluate every stage of the regime, and
write ``result.json`` (schema: ``reports.schema``) atomically whatever happens: ``run.status``
says how it ended.

A run whose result says ``success`` is never redone unless ``force``; a failed run records the
error type, message and the step it reached, and is redone from scratch on the next attempt.
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
from bench.engine.checkpoint import Checkpointer
from bench.engine.data import Feature, StageData, Stream, encode
from bench.engine.precision import Precision
from bench.engine.run_log import RunLog
from bench.engine.sentinel import LostUpdateSentinel
from bench.engine.sharding import Sharding
from bench.engine.train import Trainer
from bench.files import atomic_write
from bench.run import results as res
from bench.run.regimes import regime_plan, stages
from bench.suite.evaluate import evaluate
from bench.suite.judge import build_judge
from bench.suite.tasks import Suite, build_suite
from bench.suite.tasks.lm_eval_files import FORMAT_VERSION
from methods.base import StagePlan
from reports.schema import ErrorInfo, Result, RunInfo, StageResult


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def base_scores(config: RunConfig, model: torch.nn.Module, tokenizer: Any, suite: Suite, judge: Any) -> dict[str, Any]:
    """Scores of the untrained backbone, measured once per (backbone, tasks, eval) and cached
    under ``<study>/base/`` (the seed matters only for random-init backbones)."""
    path = base_path(config)
    if path.is_file():
        return json.loads(path.read_text())["scores"]
    scores = evaluate(model, tokenizer, suite, config.eval, judge=judge)
    atomic_write(path, json.dumps({"key": json.loads(base_key(config)), "scores": scores}, indent=2, sort_keys=True) + "\n")
    return scores


def ensure_base_scores(config: RunConfig) -> None:
    """Measure and cache the base scores of ``config``'s backbone (a grid does this once per
    backbone before its trials start, so no two trials measure the same thing)."""
    if base_path(config).is_file():
        return
    suite = load_suite(config, new_result(config))
    precision = Precision.from_config(config.train.precision, device())
    model, tokenizer = load_backbone(config.backbone.name, precision.param_dtype, config.seed, precision.device)
    judge = build_judge(config.eval.judge) if config.eval.judge else None
    with precision.autocast():
        base_scores(config, model, tokenizer, suite, judge)


def base_key(config: RunConfig) -> str:
    """What the base scores depend on (backbone, tasks, eval; the seed for random-init backbones)."""
    c = to_dict(config)
    key = {k: c[k] for k in ("backbone", "tasks", "eval")}
    key["tasks"] = {k: v for k, v in key["tasks"].items() if k not in ("groups", "num_groups")}  # stages only
    key["seed"] = config.seed if resolve(config.backbone.name).random_init else None
    key["format"] = FORMAT_VERSION
    return json.dumps(key, sort_keys=True)


def base_path(config: RunConfig) -> Path:
    digest = hashlib.sha1(base_key(config).encode()).hexdigest()[:10]
    return Path(config.results_dir) / config.study / "base" / f"{digest}.json"


def new_result(config: RunConfig) -> Result:
    """The result skeleton of a run that is starting."""
    info = RunInfo(run_id=config.run_id, study=config.study, status="running", method=config.method.name,
                   regime=config.regime, backbone=config.backbone.name, seed=config.seed,
                   tasks=list(config.tasks.names), config=to_dict(config),
                   started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return Result(run=info, provenance=res.provenance())


def load_suite(config: RunConfig, result: Result) -> Suite:
    """The run's tasks (generated or loaded, written as lm-eval tasks) and what they are."""
    suite = build_suite(config.tasks.names, config.tasks.data_seed, config.tasks.train_size,
                        config.tasks.test_size, Path(config.results_dir) / config.study / "data",
                        config.eval.max_gen_toks, config.tasks.sources)
    ev = result.evaluation
    ev.metrics = {t.name: t.metric for t in suite.tasks}
    ev.scorers = {t.name: t.scorer for t in suite.tasks}
    ev.data_rows = {t.name: {"train": len(suite.train[t.name]), "test": len(suite.test[t.name])} for t in suite.tasks}
    ev.chance = {t.name: t.chance(suite.test[t.name][:config.eval.limit]) for t in suite.tasks}
    return suite


def open_checkpoint(config: RunConfig, result: Result, restart: bool,
                    sharding: Sharding) -> tuple[Checkpointer, dict[str, Any] | None]:
    """The run's checkpointer and its last checkpoint (None: start from step 0). A resumed run
    takes the stage results it had measured; a fresh one starts with empty logs. Every rank of
    a sharded run reads its own file; only rank 0 deletes anything."""
    every = config.train.checkpoint_interval(torch.cuda.is_available())
    checkpointer = Checkpointer(config.run_dir, config.config_hash, every,
                                lambda: {"evaluation": copy.deepcopy(result.evaluation),
                                         "resumed_from": list(result.run.resumed_from)}, sharding)
    if restart:
        checkpointer.discard()
    saved = checkpointer.load()
    if saved is None:
        if sharding.writes:
            RunLog(config.run_dir).clear_files()  # logs of an earlier attempt without a checkpoint
        return checkpointer, None
    result.evaluation = saved["run"]["evaluation"]
    result.run.resumed_from = [*saved["run"]["resumed_from"], saved["step"]]
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
    observers = [LostUpdateSentinel(config.seed), *analysis.build(dataclasses.asdict(config.analysis), data)]
    trainer = Trainer(model, method, config.train, data.pad_id, precision, run_dir=config.run_dir,
                      progress=progress and sharding.writes, checkpointer=checkpointer, observers=observers,
                      listeners=listeners, sharding=sharding)
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
    return trainer


def keep_final_weights(config: RunConfig, trainer: Trainer, tokenizer: Any) -> None:
    """``<run_dir>/final/model`` (plain HF model, e.g. LoRA merged) plus the method's extras
    (a sharded run gathers the whole model on rank 0, which writes them)."""
    whole = trainer.sharding.evaluation_model(trainer.model)
    if whole is not None:
        folder = config.run_dir / "final"
        trainer.method.export(whole).save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "model")
        trainer.method.save_extras(whole, folder)
    trainer.sharding.after_evaluation()


def evaluate_stage(config: RunConfig, trainer: Trainer, suite: Suite, tokenizer: Any, judge: Any) -> dict[str, Any]:
    """Scores of every task on the exported model; a sharded run gathers the whole model on
    rank 0, which evaluates while the others wait, and every rank gets rank 0's scores."""
    whole = trainer.sharding.evaluation_model(trainer.model)

    def scores() -> dict[str, Any]:
        assert whole is not None
        with trainer.precision.autocast():
            return evaluate(trainer.method.export(whole), tokenizer, suite, config.eval, judge=judge)

    try:
        return trainer.sharding.on_writer(scores)
    finally:
        trainer.sharding.after_evaluation()


def train_and_evaluate(config: RunConfig, trainer: Trainer, suite: Suite, tokenizer: Any, judge: Any,
                       result: Result, timing: dict[str, float], everything: StageData) -> None:
    """The stage plan (the regime's, or the method's), then every stage: train, then evaluate
    all tasks on the exported model."""
    features, balanced = everything.rows, config.tasks.mix == "balanced"
    if not result.evaluation.plan:  # a resumed run keeps the plan it had made
        with timed(timing, "plan_s"):
            chosen = trainer.plan_stages(regime_plan(config), everything, config.seed)
        result.evaluation.plan = {"groups": chosen.groups, **chosen.details}
    done = len(result.evaluation.stages)  # stages a resumed run had already evaluated
    for stage in stages(StagePlan(result.evaluation.plan["groups"]))[done:]:
        rows = {t: features[t] for t in stage.tasks}
        stream = Stream(rows, f"{config.seed}:{stage.index}", balanced)
        data = StageData(stage.index, rows, config.train.batch_size, tokenizer.pad_token_id, trainer.on,
                         config.seed, balanced, trainer.precision)
        trainer.run_stage(stage.index, data, stream, config.train.steps_per_stage)
        with timed(timing, "eval_s"):
            scores = evaluate_stage(config, trainer, suite, tokenizer, judge)
        result.evaluation.stages.append(StageResult(
            stage=stage.index, trained_on=stage.tasks, steps_done=trainer.step,
            scores={t: s["score"] for t, s in scores.items()}, nll={t: s["nll"] for t, s in scores.items()},
            details={t: {k: v for k, v in s.items() if k not in ("score", "nll")} for t, s in scores.items()}))
        result.evaluation.scorers = {t: s["scorer"] for t, s in scores.items()}
        if trainer.checkpointer is not None:
            trainer.checkpointer.save(trainer)


def record_failure(result: Result, error: BaseException, trainer: Trainer | None) -> None:
    result.run.status = "failed"
    result.run.error = ErrorInfo(type=type(error).__name__, message=str(error),
                                 step=getattr(error, "step", trainer.step if trainer else None),
                                 traceback=traceback.format_exc()[-5000:])


def finish(result: Result, trainer: Trainer | None, method: methods.Method | None, wall_s: float) -> None:
    """Training statistics, method statistics and timing, whatever the outcome."""
    if trainer is not None:
        trainer.flush()
        result.train.summary = trainer.summary()
        result.train.precision = trainer.precision.describe()
        if trainer.checkpointer is not None:
            result.train.checkpoint = dict(trainer.checkpointer.stats, every=trainer.checkpointer.every)
        result.train.observers = {o.name: o.summary() for o in trainer.observers if o.summary() is not None}
    if method is not None:
        result.train.method_stats = method.stats()
    result.train.wall_s = wall_s
    result.train.peak_memory_bytes = res.peak_memory_bytes()
    result.run.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")


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
    run_dir = config.run_dir
    try:
        previous = res.read_result(run_dir)
    except res.ResultError:
        previous = None  # a corrupt result is redone
    if previous is not None and previous.ok and not force:
        return previous
    run_dir.mkdir(parents=True, exist_ok=True)
    result = new_result(config)
    start = time.perf_counter()
    trainer = method = None
    timing = dict(timing or {})
    precision = Precision.from_config(config.train.precision, device())
    sharding = Sharding(precision.device)  # a process group exists when Ray Train started N workers
    try:
        with timed(timing, "checkpoint_read_s"):
            checkpointer, saved = open_checkpoint(config, result, restart or force, sharding)
        seed_everything(config.seed)
        with timed(timing, "data_s"):
            suite = sharding.writer_first(lambda: load_suite(config, result))  # rank 0 writes the task files
        with timed(timing, "model_s"):
            model, tokenizer = load_backbone(config.backbone.name, precision.param_dtype, config.seed, precision.device)
        if config.train.activation_checkpointing:
            enable_activation_checkpointing(model)
        method = methods.build(config.method.name, config.method.options)
        judge = build_judge(config.eval.judge) if config.eval.judge else None
        if saved is None:
            with precision.autocast(), timed(timing, "base_s"):
                result.evaluation.base = sharding.on_writer(lambda: base_scores(config, model, tokenizer, suite, judge))
        features = {t: [encode(r, tokenizer, config.train.max_length) for r in rows] for t, rows in suite.train.items()}
        everything = all_tasks_data(config, features, tokenizer.pad_token_id, precision)
        trainer = build_trainer(config, precision, method, model, everything, progress, checkpointer, saved,
                                list(listeners or []), sharding)
        train_and_evaluate(config, trainer, suite, tokenizer, judge, result, timing, everything)
        if config.train.keep_final_weights:
            keep_final_weights(config, trainer, tokenizer)
        checkpointer.discard()
        result.run.status = "success"
    except Exception as e:  # noqa: BLE001 - every failure is recorded, then the grid goes on
        record_failure(result, e, trainer)
    finally:
        finish(result, trainer, method, time.perf_counter() - start)
        timing["train_s"] = result.train.summary.get("train_s") or 0.0
        result.train.timing = {k: round(v, 3) for k, v in timing.items()}
        result.train.workers = sharding.workers
        if result.run.status != "running" and sharding.writes:  # Ctrl-C leaves no result: the run is simply missing
            res.write_result(run_dir, result)
    return result


def crash_result(config: RunConfig, error: BaseException) -> Result:
    """The result of a trial that died without writing one (e.g. killed for memory)."""
    result = new_result(config)
    result.run.status = "failed"
    result.run.error = ErrorInfo(type=type(error).__name__, message=str(error)[-2000:])
    return result
