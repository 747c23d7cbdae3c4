"""The parts of one run that the loop is built from: the checkpointer with the run's last
checkpoint, batches of every task (for a method's stage plan and the analyses), and the trainer
with its observers (the lost-update sentinel and the enabled analyses)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

import methods
from bench import analysis
from bench.engine.checkpoint import CHECKPOINT_DIR, Checkpointer
from bench.engine.data import StageData, encode
from bench.engine.precision import Precision
from bench.engine.run_log import EVENTS_DIR, RunLog
from bench.engine.sentinel import LostUpdateSentinel
from bench.engine.sharding import Sharding
from bench.engine.train import Trainer
from bench.files import refuse_links
from bench.run import results as res
from bench.run.cell import Cell
from bench.suite.tasks import Suite
from reports.schema import ITEMS, Evaluation, StageResult, TrainInfo

# The folders a run writes and deletes in: never through a symbolic link (``refuse_links``).
RUN_FOLDERS = (CHECKPOINT_DIR, EVENTS_DIR, str(ITEMS.parent), "final")


def open_checkpoint(cell: Cell, restart: bool, sharding: Sharding,
                    snapshot: Callable[[], dict[str, Any]]) -> tuple[Checkpointer, dict[str, Any] | None]:
    """The run's checkpointer and its last checkpoint (None: start from step 0); ``snapshot``
    gives what a checkpoint keeps of the result being built. A fresh run starts with empty logs.
    Every rank of a sharded run reads its own file; only rank 0 deletes anything."""
    every = cell.train.checkpoint_interval(torch.cuda.is_available())
    checkpointer = Checkpointer(cell.run_dir, cell.config_hash, every, snapshot, sharding,
                                safe_types=(Evaluation, StageResult))  # what ``snapshot`` holds besides plain data
    if restart:
        checkpointer.discard()
    saved = checkpointer.load()
    if saved is None:
        if sharding.writes:
            RunLog(cell.run_dir).clear_files()  # logs of an earlier attempt without a checkpoint
        return checkpointer, None
    if sharding.writes:
        print(f"[run] {cell.run_id}: resuming from the checkpoint at step {saved['step']}", file=sys.stderr)
    return checkpointer, saved


def prepare_run_dir(cell: Cell) -> None:
    """Create the run folder; refuse one whose working folders are links (``RUN_FOLDERS``)."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    refuse_links(cell.run_dir, RUN_FOLDERS)


def all_tasks_data(cell: Cell, suite: Suite, tokenizer: Any, precision: Precision) -> StageData:
    """Every task's training rows, encoded, as batches (for a method's stage plan, the analyses
    and each stage's share)."""
    features = {t: [encode(r, tokenizer, cell.train.max_length) for r in rows] for t, rows in suite.train.items()}
    return StageData(-1, features, cell.train.batch_size, tokenizer.pad_token_id, precision.device, cell.seed,
                     cell.tasks.mix == "balanced", precision)


def build_trainer(cell: Cell, precision: Precision, method: methods.Method, model: torch.nn.Module,
                  data: StageData, progress: bool, checkpointer: Checkpointer, saved: dict[str, Any] | None,
                  listeners: list[Callable[[dict[str, Any]], None]], sharding: Sharding) -> Trainer:
    observers = [LostUpdateSentinel(cell.seed, held_fixed=method.held_fixed), *analysis.build(cell.analyses, data)]
    trainer = Trainer(model, method, cell.train, data.pad_id, precision, run_dir=cell.run_dir,
                      progress=progress and sharding.writes, checkpointer=checkpointer, observers=observers,
                      listeners=listeners, sharding=sharding)
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
    return trainer


def train_info(trainer: Trainer | None, method: methods.Method | None, wall_s: float, workers: int) -> TrainInfo:
    """Training statistics, method statistics and timing, whatever the outcome."""
    report = trainer.report() if trainer is not None else {
        "method_stats": method.stats() if method is not None else {}}
    return TrainInfo(**report, wall_s=wall_s, peak_memory_bytes=res.peak_memory_bytes(),
                     **({} if trainer is not None else {"workers": workers}))
