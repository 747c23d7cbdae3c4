"""The lost-update sentinel: an observer, on in every run under every precision.

At each stage end it records, over a fixed sample of trainable entries (2^20 by default, drawn
from the run seed, so it costs a few MB even at 8B), the fraction of entries that received a
non-zero gradient during the stage (after the method's hooks, so entries a method freezes on
purpose have none) in a step that did not declare it held fixed (``Method.held_fixed``: MoFO
keeps the gradients of the entries it holds) and at a learning rate above 0 (a warm-up's first
step moves nothing, by design), but whose value never changed. Under fp32 or
bf16-mixed that fraction is ~0;
under bf16-pure at a small learning rate most updates round away. A frozen entry is then frozen
on purpose, not by rounding: the report flags runs above a threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.engine.observers import Observer, Recorder
from methods.base import StageContext
from methods.parts.collectives import local, local_indices, reduce_
from methods.parts.held import held_at

SAMPLE = 1 << 20


class LostUpdateSentinel(Observer):
    name = "lost_update"

    def __init__(self, seed: int, sample: int = SAMPLE,
                 held_fixed: Callable[[], dict[str, torch.Tensor]] = dict) -> None:
        """``held_fixed``: the method's ``Method.held_fixed`` (entries it kept on purpose)."""
        self.seed, self.sample, self.held_fixed = seed, sample, held_fixed
        self.stepped: dict[str, torch.Tensor] = {}  # sampled entries with a gradient in this step
        self.optimizer: torch.optim.Optimizer | None = None
        self.index: dict[str, torch.Tensor] = {}
        self.start: dict[str, torch.Tensor] = {}
        self.touched: dict[str, torch.Tensor] = {}
        self.recorder = Recorder()

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def _draw(self, params: dict[str, nn.Parameter]) -> None:
        """Per parameter, a share of the sample proportional to its size (fixed by the seed)."""
        total = sum(p.numel() for p in params.values())
        generator = torch.Generator().manual_seed(self.seed)
        for name, p in params.items():
            count = min(p.numel(), max(1, round(self.sample * p.numel() / total)))
            drawn = torch.randint(p.numel(), (count,), generator=generator).to(local(p).device)
            self.index[name] = local_indices(drawn, p)  # a sharded run: the entries in this rank's block

    def on_stage_start(self, ctx: StageContext) -> None:
        self.optimizer = ctx.optimizer  # its learning rate before each update (the step's own)
        params = self._params(ctx.model)
        if not self.index:
            self._draw(params)
        for name, p in params.items():
            self.start[name] = local(p).detach().reshape(-1)[self.index[name]].clone()
            self.touched[name] = torch.zeros(self.index[name].numel(), dtype=torch.bool, device=self.start[name].device)

    def after_backward(self, step: int, model: nn.Module) -> None:
        if self.optimizer is not None and not any(float(g["lr"]) > 0 for g in self.optimizer.param_groups):
            self.stepped = {}  # this step's learning rate is 0: no update is due, none can be lost
            return
        self.stepped = {name: local(p.grad).reshape(-1)[self.index[name]] != 0
                        for name, p in self._params(model).items() if p.grad is not None and name in self.touched}

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        held, params = self.held_fixed(), dict(model.named_parameters())
        for name, had_gradient in self.stepped.items():
            if name in held:
                had_gradient &= ~held_at(held[name], self.index[name], params[name])
            self.touched[name] |= had_gradient
        self.stepped = {}

    def on_stage_end(self, ctx: StageContext) -> None:
        counts = torch.zeros(3, dtype=torch.long)
        for name, p in self._params(ctx.model).items():
            same = local(p).detach().reshape(-1)[self.index[name]] == self.start[name]
            counts += torch.tensor([self.index[name].numel(), int(self.touched[name].sum()),
                                    int((same & self.touched[name]).sum())])
        sampled, updated, unchanged = reduce_(counts.to(next(iter(self.start.values())).device)).tolist()
        record = {"kind": "lost_update", "stage": ctx.stage, "step": ctx.step, "sampled": sampled,
                  "with_gradient": updated, "unchanged": unchanged, "fraction": unchanged / updated if updated else None}
        self.recorder.add(record)

    def drain_events(self) -> list[dict[str, Any]]:
        return self.recorder.drain()

    def summary(self) -> list[dict[str, Any]]:
        return list(self.recorder.records)

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start, "touched": self.touched, **self.recorder.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index, self.start, self.touched = dict(state["index"]), dict(state["start"]), dict(state["touched"])
        self.recorder.load_state_dict(state)
