"""The stages of one run: the stage plan (the regime's, or the method's), then each stage
trained and every task evaluated on the exported model, appended to the result's
``evaluation`` section as it goes, so that a checkpoint keeps the stages measured so far."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from bench.engine.data import StageData, Stream
from bench.engine.precision import Precision
from bench.engine.train import Trainer
from bench.run import results as res
from bench.run.cell import Cell
from bench.run.measuring import measure, split_measured, stage_result
from bench.run.regimes import regime_plan, stages
from bench.suite.judge import Judge
from bench.suite.tasks import Suite
from methods.base import StagePlan
from reports.schema import Evaluation


@contextlib.contextmanager
def timed(timing: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - start


def evaluate_stage(cell: Cell, trainer: Trainer, suite: Suite, tokenizer: Any, judge: Judge | None) -> dict[str, Any]:
    """Scores of every task on the exported model; in a sharded run every rank gathers the whole
    model and evaluates its share of the items, and every rank gets the gathered scores."""
    return trainer.on_exported_model(lambda model: measure(cell, model, tokenizer, suite, judge))


def train_and_evaluate(cell: Cell, trainer: Trainer, suite: Suite, tokenizer: Any, judge: Judge | None,
                       evaluation: Evaluation, timing: dict[str, float], everything: StageData,
                       precision: Precision) -> None:
    """The stage plan (the regime's, or the method's), then every stage: train, then evaluate
    all tasks on the exported model. ``evaluation`` is the result's section, extended after
    every stage so that a checkpoint keeps the stages measured so far."""
    features, balanced = everything.rows, cell.tasks.mix == "balanced"
    if not evaluation.plan:  # a resumed run keeps the plan it had made
        with timed(timing, "plan_s"):
            chosen = trainer.plan_stages(regime_plan(cell), everything, cell.seed)
        evaluation.plan = {"groups": chosen.groups, **chosen.details}
    done = len(evaluation.stages)  # stages a resumed run had already evaluated
    # and trained (a checkpoint of an earlier version says nothing: it trained what it evaluated)
    trained = trainer.stages_done if trainer.stages_done >= 0 else done
    for position, stage in enumerate(stages(StagePlan(evaluation.plan["groups"]))[done:], done):
        rows = {t: features[t] for t in stage.tasks}
        stream = Stream(rows, f"{cell.seed}:{stage.index}", balanced)
        data = StageData(stage.index, rows, cell.train.batch_size, tokenizer.pad_token_id, precision.device,
                         cell.seed, balanced, precision)
        if trained <= position:  # a run resumed after this stage's training evaluates it only
            trainer.run_stage(stage.index, data, stream, cell.train.steps_per_stage)
        with timed(timing, "eval_s"):
            try:
                measured = evaluate_stage(cell, trainer, suite, tokenizer, judge)
            except Exception:  # e.g. the judge is down: keep the trained stage, a rerun evaluates it
                trainer.save_checkpoint(always=True)
                raise
        scores, retention_nll, records = split_measured(measured, stage.index)
        if trainer.sharding.writes:
            res.add_item_records(cell.run_dir, records)
        evaluation.stages.append(stage_result(stage, trainer.step, scores, retention_nll))
        evaluation.scorers = {t: s["scorer"] for t, s in scores.items()}
        trainer.save_checkpoint()
