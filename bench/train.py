"""The one training loop. Forward, backward, clipping, AdamW, the LR schedule and logging live
here; the method acts only through its hooks, in the order of ``methods.base``. There is no
method-specific branch in this file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from bench.config import TrainConfig
from bench.data import Feature, StageData, answer_tokens, collate, summed_nll
from methods.base import Method


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; ``step`` is the optimizer step that produced it."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss is {value} at step {step}")
        self.step = step


class Trainer:
    """Owns model, optimizer and step counter across the stages of one run."""

    def __init__(self, model: nn.Module, method: Method, config: TrainConfig, pad_id: int,
                 on: torch.device, run_dir: Path | None = None, progress: bool = True) -> None:
        self.method, self.config, self.pad_id, self.on = method, config, pad_id, on
        self.model = method.prepare(model)
        self.groups = method.param_groups(self.model)
        self.params = [p for g in self.groups for p in g["params"]]
        self.optimizer = torch.optim.AdamW(self.groups, lr=config.lr, betas=tuple(config.betas),
                                           weight_decay=config.weight_decay, fused=on.type == "cuda" or None)
        self.autocast = config.bf16 == "on" or (config.bf16 == "auto" and on.type == "cuda")
        self.step = 0  # optimizer steps done, over all stages
        self.losses: list[float] = []
        self.tokens = 0
        self.train_seconds = 0.0
        self.run_dir, self.progress = run_dir, progress
        self._log: list[str] = []
        self._events: list[str] = []

    def run_stage(self, stage: int, data: StageData, stream: Iterator[Feature], steps: int) -> None:
        """``steps`` optimizer steps on ``stream`` with a fresh LR schedule for this stage."""
        self.model.train()
        scheduler = get_scheduler(self.config.schedule, self.optimizer,
                                  num_warmup_steps=self.config.warmup_steps, num_training_steps=steps)
        self.method.on_stage_start(stage, data)
        self._collect_events()
        bar = tqdm(range(steps), desc=f"stage {stage}", disable=not self.progress, leave=False)
        for _ in bar:
            loss = self.train_step([next(stream) for _ in range(self.config.batch_size)], scheduler, stage)
            bar.set_postfix(loss=f"{loss:.3f}")
        self.method.on_stage_end(stage, self.model)
        self._collect_events()
        self.flush()

    def train_step(self, rows: list[Feature], scheduler: Any, stage: int = 0) -> float:
        """One optimizer step over ``rows`` split into ``grad_accum`` micro-batches."""
        start = time.perf_counter()
        c, step = self.config, self.step
        self.method.before_step(step, self.model)
        size = len(rows) // c.grad_accum
        micro = [collate(rows[i:i + size], self.pad_id, self.on) for i in range(0, len(rows), size)]
        total = sum(answer_tokens(b) for b in micro)
        loss_sum = torch.zeros((), device=self.on)
        for batch in micro:
            with torch.autocast(self.on.type, dtype=torch.bfloat16, enabled=self.autocast):
                nll = summed_nll(self.model, batch)
            (nll / total).backward()
            loss_sum += nll.detach()
        self.method.after_backward(step, self.model)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
                     if c.max_grad_norm > 0 else None)
        loss = float(loss_sum) / max(total, 1)
        if not math.isfinite(loss):
            raise NonFiniteLoss(step, loss)
        self.optimizer.step()
        scheduler.step()
        self.method.after_step(step, self.model, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.losses.append(loss)
        self.tokens += sum(int(b["attention_mask"].sum()) for b in micro)
        self.train_seconds += time.perf_counter() - start
        if step % c.log_every == 0:
            record = {"step": step, "stage": stage, "loss": loss, "lr": scheduler.get_last_lr()[0],
                      "grad_norm": None if grad_norm is None else float(grad_norm),
                      "tokens": self.tokens, "train_s": round(self.train_seconds, 4), **self.method.stats()}
            self._log.append(json.dumps(record))
        self._collect_events()
        return loss

    def _collect_events(self) -> None:
        self._events.extend(json.dumps(e) for e in self.method.drain_events())

    def flush(self) -> None:
        """Append buffered log lines to ``metrics.jsonl`` / ``masks.jsonl`` (once per stage:
        no disk I/O on the step path)."""
        if self.run_dir is None:
            self._log, self._events = [], []
            return
        for name, lines in (("metrics.jsonl", self._log), ("masks.jsonl", self._events)):
            if lines:
                with open(self.run_dir / name, "a") as f:
                    f.write("\n".join(lines) + "\n")
        self._log, self._events = [], []

    def summary(self) -> dict[str, Any]:
        """Loss curve summary and throughput for result.json."""
        n = len(self.losses)
        tail = self.losses[-max(1, n // 10):] if n else []
        return {"steps": self.step, "loss_first": self.losses[0] if n else None,
                "loss_last": self.losses[-1] if n else None, "loss_min": min(self.losses) if n else None,
                "loss_last_10pct_mean": sum(tail) / len(tail) if tail else None,
                "tokens": self.tokens, "train_s": self.train_seconds,
                "tokens_per_s": self.tokens / self.train_seconds if self.train_seconds else None}
