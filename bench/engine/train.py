"""The one training loop, as a composition of small stateful parts.

``Trainer`` owns the step: forward and backward of every micro-batch, clipping, the optimizer,
the LR schedule and logging. Everything that varies between runs is a part it is given:

- ``Precision``: the model's dtype, the autocast of every forward, how the optimizer is built;
- ``Sharding``: FSDP2 over the process group, or nothing in one process (``bench.engine.sharding``);
- the one ``Method``: acts only through its hooks, in the order ``methods.base`` lists;
- ``observers``: the same hooks, read-only (empty unless the config asks for analyses);
- ``RunLog``: ``metrics.jsonl`` and one ``events/<source>.jsonl`` per event source;
- an optional ``Checkpointer``: saves this state every ``checkpoint_every`` steps;
- the stage's ``Stream`` of rows and its LR scheduler.

``state_dict()`` / ``load_state_dict()`` capture everything needed to continue identically:
model, optimizer, scheduler, method, observers, data-stream position, RNG states, counters and
the log lines not yet written. There is no method-specific branch in this file. The one place
that knows an optimizer's kind: a resumed stage puts its LR back into each param group as a
float, or into the tensor torchao's optimizers keep it in.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from bench.config import TrainConfig
from bench.engine.checkpoint import Checkpointer
from bench.engine.data import IGNORE, Feature, StageData, Stream, collate, summed_nll
from bench.engine.observers import Observer
from bench.engine.precision import Precision
from bench.engine.run_log import RunLog
from bench.engine.sharding import Sharding
from methods.base import Method, PlanContext, StageContext, StagePlan
from methods.parts.held import held_count

T = TypeVar("T")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; ``step`` is the optimizer step that produced it."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss is {value} at step {step}")
        self.step = step


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Model, optimizer, scheduler and counters across the stages of one run."""

    def __init__(self, model: nn.Module, method: Method, config: TrainConfig, pad_id: int, precision: Precision,
                 *, observers: Sequence[Observer] = (), run_dir: Path | None = None, progress: bool = True,
                 checkpointer: Checkpointer | None = None, sharding: Sharding | None = None,
                 listeners: Sequence[Callable[[dict[str, Any]], None]] = ()) -> None:
        self.method, self.config, self.pad_id, self.precision = method, config, pad_id, precision
        self.on = precision.device
        self.observers = list(observers)
        self.sharding = sharding or Sharding(self.on)
        self.model = method.prepare(self.sharding.shard(method.adapt(model), precision))
        for observer in self.observers:
            observer.attach(self.model)
        self.groups = method.param_groups(self.model)
        self.params = [p for g in self.groups for p in g["params"]]
        self.optimizer = precision.optimizer(self.groups, config.lr, tuple(config.betas), config.weight_decay)
        self.log = RunLog(run_dir if self.sharding.writes else None, list(listeners))
        self.progress, self.checkpointer = progress, checkpointer
        self.scheduler: Any = None
        self.stream: Stream | None = None
        self.data: StageData | None = None
        self.step = 0  # optimizer steps done, over all stages
        self.stage: int | None = None  # the stage in progress (None between stages)
        self.stage_step = 0  # optimizer steps done in the stage in progress
        self.stages_done = 0  # stages trained to their end
        self.losses: list[float] = []
        self.method_losses: list[float] = []  # the method's own loss term per step (Method.loss), if any
        self.held_entries: int | torch.Tensor = 0  # entries held fixed (Method.held_fixed) over steps, this rank
        self.named = dict(self.model.named_parameters())
        self.trainable = sum(p.numel() for p in self.params)  # over all ranks
        self.tokens = 0
        self.train_seconds = 0.0
        self._resume_stream: dict[str, Any] | None = None

    @property
    def parts(self) -> list[Method | Observer]:
        return [self.method, *self.observers]

    def context(self) -> StageContext:
        assert self.stage is not None and self.data is not None
        return StageContext(self.stage, self.step, self.data, self.model, self.optimizer)

    # -- stages -----------------------------------------------------------------------------------
    def plan_stages(self, plan: StagePlan, data: StageData, seed: int) -> StagePlan:
        """The method's stage plan (``Method.plan_stages``), or the regime's ``plan``; ``data``
        holds every task of the run."""
        chosen = self.method.plan_stages(PlanContext(plan, data, self.model, self.optimizer, seed))
        self._collect_events()
        return chosen if chosen is not None else plan

    def run_stage(self, stage: int, data: StageData, stream: Stream, steps: int) -> None:
        """``steps`` optimizer steps on ``stream`` with a fresh LR schedule for this stage; a
        trainer restored in the middle of this stage continues where it stopped."""
        self.start_stage(stage, data, stream, steps)
        bar = tqdm(total=steps, initial=self.stage_step, desc=f"stage {stage}", disable=not self.progress, leave=False)
        while self.stage_step < steps:
            loss = self.step_once()
            if self.checkpointer is not None:
                self.checkpointer.after_step(self)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        bar.close()
        self.end_stage()

    def start_stage(self, stage: int, data: StageData, stream: Stream, steps: int) -> None:
        """Build the stage's scheduler and call ``on_stage_start``, or, when the trainer was
        restored inside this stage, put the saved scheduler and stream position back."""
        self.model.train()
        self.data, self.stream = data, stream
        resuming = self.stage == stage and self._resume_stream is not None
        if self.stage is not None and not resuming:
            raise RuntimeError(f"stage {stage} started while stage {self.stage} is in progress")
        saved_scheduler = self.scheduler.state_dict() if resuming and self.scheduler is not None else None
        self.scheduler = get_scheduler(self.config.schedule, self.optimizer,
                                       num_warmup_steps=self.config.warmup_steps, num_training_steps=steps)
        if resuming:
            self.scheduler.load_state_dict(saved_scheduler)
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                if isinstance(group["lr"], torch.Tensor):  # torchao keeps lr as a tensor
                    group["lr"].fill_(float(lr))
                else:
                    group["lr"] = lr
            stream.load_state_dict(self._resume_stream)
            self._resume_stream = None
            return
        self.stage, self.stage_step = stage, 0
        for part in self.parts:
            part.on_stage_start(self.context())
        self._collect_events()

    def end_stage(self) -> None:
        """``on_stage_end``, then the stage's log lines go to disk."""
        for part in self.parts:
            part.on_stage_end(self.context())
        self._collect_events()
        self.stage, self.stage_step = None, 0
        self.stages_done += 1
        self.flush()

    def step_once(self) -> float:
        """One optimizer step on the next ``batch_size`` rows of the stage's stream."""
        assert self.stream is not None, "start_stage first"
        return self.train_step([next(self.stream) for _ in range(self.config.batch_size)])

    # -- the step -----------------------------------------------------------------------------------
    def train_step(self, rows: list[Feature]) -> float:
        """One optimizer step over ``rows`` split into ``grad_accum`` micro-batches (dealt out
        to the workers of a sharded run)."""
        start = time.perf_counter()
        c, step, shards = self.config, self.step, self.sharding
        for part in self.parts:
            part.before_step(step, self.model)
        rows = self._method_rows(step, rows)
        mine = shards.my_micro_batches(rows, c.grad_accum)
        total = sum(sum(label != IGNORE for label in labels[1:]) for _, labels in rows)  # the step's answer tokens
        loss_sum = torch.zeros((), device=self.on)
        for i, features in enumerate(mine):
            batch = collate(features, self.pad_id, self.on)
            shards.sync(self.model, last=i == len(mine) - 1)
            with self.precision.autocast():
                nll = summed_nll(self.model, batch)
            shards.step_loss(nll, total).backward()
            loss_sum += nll.detach()
        term = self.method.loss(step, self.model)
        if term is not None:
            term.backward()
            term = float(shards.sum(term.detach().float().reshape(1)))  # the ranks' parts add up to the term
        for observer in self.observers:
            observer.on_gradients(step, self.model)
        for part in self.parts:
            part.after_backward(step, self.model)
        grad_norm = shards.clip(self.params, c.max_grad_norm) if c.max_grad_norm > 0 else None
        loss = float(shards.sum(loss_sum)) / max(total, 1)
        if not math.isfinite(loss + (term or 0.0)):
            raise NonFiniteLoss(step, loss + (term or 0.0))
        self.optimizer.step()
        self.scheduler.step()
        for part in self.parts:
            part.after_step(step, self.model, self.optimizer)
        self.held_entries += sum(held_count(v, self.named[n]) for n, v in self.method.held_fixed().items())
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.stage_step += 1
        self.losses.append(loss)
        self.tokens += sum(len(ids) for ids, _ in rows)
        self.train_seconds += time.perf_counter() - start
        if term is not None:
            self.method_losses.append(term)
        if step % c.log_every == 0:
            extra = {} if term is None else {"method_loss": term}
            self.log.metric({"step": step, "stage": self.stage, "loss": loss, **extra,
                             "lr": float(self.scheduler.get_last_lr()[0]),
                             "grad_norm": None if grad_norm is None else float(grad_norm),
                             "tokens": self.tokens, "train_s": round(self.train_seconds, 4), **self.method.stats()})
        self._collect_events()
        return loss

    def _method_rows(self, step: int, rows: list[Feature]) -> list[Feature]:
        """The method's rows for this step (``Method.rows``), the same count as drawn."""
        chosen = list(self.method.rows(step, list(rows)))
        if len(chosen) != len(rows):
            raise RuntimeError(f"method {self.method.name!r} returned {len(chosen)} rows for step {step}, "
                               f"not the {len(rows)} drawn")
        return chosen

    def _collect_events(self) -> None:
        self.log.event("method", self.method.drain_events())
        for observer in self.observers:
            self.log.event(observer.name, observer.drain_events())

    def flush(self) -> None:
        self.log.flush()

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically. Tensors are live views of the training
        state: serialize (``torch.save``) or deep-copy before training on."""
        return {
            "counters": {"step": self.step, "stage": self.stage, "stage_step": self.stage_step,
                         "stages_done": self.stages_done,
                         "losses": list(self.losses), "method_losses": list(self.method_losses),
                         "held_entries": int(self.held_entries),
                         "tokens": self.tokens, "train_seconds": self.train_seconds},
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None and self.stage is not None else None,
            "stream": self.stream.state_dict() if self.stream is not None and self.stage is not None else None,
            "method": self.method.state_dict(),
            "observers": {o.name: o.state_dict() for o in self.observers},
            "rng": rng_state(), "log": self.log.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` into a trainer built from the same config; the next
        ``run_stage`` of the saved stage continues from the saved step."""
        counters = state["counters"]
        self.step, self.stage, self.stage_step = counters["step"], counters["stage"], counters["stage_step"]
        self.losses, self.tokens = list(counters["losses"]), counters["tokens"]
        self.method_losses = list(counters.get("method_losses", []))
        self.held_entries = counters.get("held_entries", 0)
        self.train_seconds = counters["train_seconds"]
        self.stages_done = counters.get("stages_done", -1)  # -1: a checkpoint of an earlier version
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        for observer in self.observers:
            observer.load_state_dict(state["observers"][observer.name])
        self.log.load_state_dict(state["log"])
        set_rng_state(state["rng"])
        self.scheduler = _Saved(state["scheduler"]) if state["scheduler"] is not None else None
        self._resume_stream = state["stream"]

    # -- what a run asks of the trainer ------------------------------------------------------------
    def on_exported_model(self, fn: Callable[[nn.Module], T]) -> T:
        """``fn(the method's export of the whole model)`` under ``Precision.evaluation``; in a sharded
        run on every rank (each gathers the whole model; ``fn`` may split its work over them),
        and rank 0's value is sent to all."""
        with self.sharding.whole_model(self.model) as whole:
            def export_and_apply() -> T:
                exported = self.method.export(whole)
                with self.precision.evaluation(exported):
                    return fn(exported)

            return self.sharding.from_writer(export_and_apply)

    def save_final(self, folder: Path, tokenizer: Any) -> None:
        """``folder/model`` (a plain HF model, e.g. LoRA merged) plus the method's extras; a
        sharded run gathers the whole model, and rank 0 writes them."""
        with self.sharding.whole_model(self.model) as whole:
            if self.sharding.writes:
                self.method.export(whole).save_pretrained(folder / "model")
                tokenizer.save_pretrained(folder / "model")
                self.method.save_extras(whole, folder)

    def save_checkpoint(self, always: bool = False) -> None:
        """A checkpoint now (after a stage), when the run keeps checkpoints, or ``always`` (to
        keep what was trained when the run is about to fail)."""
        if self.checkpointer is not None:
            self.checkpointer.save(self, always=always)

    def report(self) -> dict[str, Any]:
        """What result.json's ``train`` section takes from the trainer: the loss summary, the
        precision, the checkpoint statistics, each observer's summary and the method's stats."""
        self.flush()
        checkpoint = ({} if self.checkpointer is None
                      else dict(self.checkpointer.stats, every=self.checkpointer.every))
        return {"summary": self.summary(), "precision": self.precision.describe(), "checkpoint": checkpoint,
                "observers": {o.name: o.summary() for o in self.observers if o.summary() is not None},
                "method_stats": self.method.stats(), "budget": self.budget(), "workers": self.sharding.workers}

    def budget(self) -> dict[str, float | None]:
        """What the method spent, for a comparison at a matched budget: the mean share of trainable
        entries a step updated (those not declared in ``Method.held_fixed``) and the trainable count
        (the run adds the planned state bytes per parameter, ``bench.run.execution``)."""
        held = float(self.sharding.sum(torch.tensor(float(int(self.held_entries)), dtype=torch.float64, device=self.on)))
        steps = self.step * self.trainable
        return {"updated_share": None if not steps else 1.0 - held / steps, "trainable": self.trainable}

    def summary(self) -> dict[str, Any]:
        """Loss curve summary and throughput for result.json."""
        n = len(self.losses)
        tail = self.losses[-max(1, n // 10):] if n else []
        return {"steps": self.step, "loss_first": self.losses[0] if n else None,
                "loss_last": self.losses[-1] if n else None, "loss_min": min(self.losses) if n else None,
                "loss_last_10pct_mean": sum(tail) / len(tail) if tail else None,
                "method_loss_last": self.method_losses[-1] if self.method_losses else None,
                "tokens": self.tokens, "train_s": self.train_seconds,
                "tokens_per_s": self.tokens / self.train_seconds if self.train_seconds else None}


class _Saved:
    """A scheduler state waiting for ``start_stage`` to rebuild the scheduler it belongs to."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state
