"""What a run measures, the same way before training and after every stage: its suite of
tasks (generated or loaded, written as lm-eval tasks), one evaluation of a model (every task's
score with its per-item records, and the retention NLL), and how that becomes a result's
stage section and item records."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from bench.config.schema import validation_rows
from bench.run import results as res
from bench.run.cell import Cell
from bench.suite.evaluate import evaluate
from bench.suite.judge import Judge
from bench.suite.retention import retention
from bench.suite.tasks import Suite, build_suite
from reports.schema import ItemRecord, StageResult


def load_suite(cell: Cell) -> Suite:
    """The run's tasks (generated or loaded, written as lm-eval tasks)."""
    return build_suite(cell.tasks.names, cell.tasks.data_seed, cell.tasks.train_size, cell.tasks.test_size,
                       Path(cell.results_dir) / cell.study / "data", cell.eval.max_gen_toks, cell.tasks.sources,
                       cell.eval.split, validation_rows(cell.tasks.train_size, cell.tasks.val_size))


def describe_suite(cell: Cell, suite: Suite) -> dict[str, Any]:
    """What the tasks are, for the ``evaluation`` section: metrics, scorers, rows and chance."""
    return {"metrics": {t.name: t.metric for t in suite.tasks}, "scorers": {t.name: t.scorer for t in suite.tasks},
            "data_rows": {t.name: {"train": len(suite.train[t.name]), cell.eval.split: len(suite.test[t.name]),
                                   **suite.notes.get(t.name, {})} for t in suite.tasks},
            "chance": {t.name: t.chance(suite.test[t.name][:cell.eval.limit]) for t in suite.tasks}}


def measure(cell: Cell, model: torch.nn.Module, tokenizer: Any, suite: Suite, judge: Judge | None) -> dict[str, Any]:
    """One evaluation: every task's score with its per-item records, and the retention NLL."""
    scores = evaluate(model, tokenizer, suite, cell.eval, judge=judge, per_item=True)
    return {"scores": scores, "retention": retention(model, tokenizer, cell.retention, cell.eval.batch_size)}


def split_measured(measured: dict[str, Any], evaluation: str | int) -> tuple[dict[str, Any], float | None, list[ItemRecord]]:
    """(scores without items, retention, item records) of one ``measure``."""
    scores = copy.deepcopy(measured["scores"])
    records = res.item_records(evaluation, scores)
    return scores, measured.get("retention"), records


def stage_result(stage: Any, steps_done: int, scores: dict[str, Any], retention_nll: float | None) -> StageResult:
    return StageResult(stage=stage.index, trained_on=stage.tasks, steps_done=steps_done,
                       scores={t: s["score"] for t, s in scores.items()}, nll={t: s["nll"] for t, s in scores.items()},
                       details={t: {k: v for k, v in s.items() if k not in ("score", "nll")} for t, s in scores.items()},
                       retention=retention_nll)
