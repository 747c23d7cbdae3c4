"""Static isolation (CPI-FT style): estimate importance once, isolate the top-rho entries for the
rest of training.

Importance sources (``methods.parts.importance``):
- ``gradient``: mean of g^2 over ``calibration_batches`` batches of the stage's training mix at
  the starting weights; no update is made.
- ``probe``: CPI-FT core regions. Per task, a copy of the model is fine-tuned for ``probe_steps``
  steps on that task alone; importance = |theta_probe - theta_0|; the global top-rho of each task
  is taken and the union over tasks isolated. The trained model is never touched by a probe.

With ``accumulate_per_stage`` (sequential regime) every finished stage's core region, estimated
at the end of that stage on that stage's data, is added to the isolated set.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from methods.base import StageContext, StageData
from methods.parts.importance import mean_grad_squared, probe_displacement
from methods.parts.isolation import IsolationConfig, IsolationMethod
from methods.parts.selection import select_top_fraction
from methods.registry import register
from pluggable.search import log_int


@dataclasses.dataclass(frozen=True, kw_only=True)
class StaticIsolationConfig(IsolationConfig):
    source: str = dataclasses.field(default="gradient", metadata={"help": "gradient | probe"})
    calibration_batches: int = dataclasses.field(default=8, metadata={"help": "batches for the gradient source",
                                                                      "search": log_int(2, 32)})
    probe_steps: int = dataclasses.field(default=20, metadata={"help": "fine-tuning steps per task probe"})
    probe_lr: float = dataclasses.field(default=1e-4, metadata={"help": "probe AdamW learning rate"})
    normalize: str = dataclasses.field(default="layer_minmax", metadata={"help": "layer_minmax | none"})
    accumulate_per_stage: bool = dataclasses.field(
        default=False, metadata={"help": "add each finished stage's core region to the isolated set"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check(self.source in ("gradient", "probe"), "source", "'gradient' or 'probe'")
        self.check(self.normalize in ("layer_minmax", "none"), "normalize", "'layer_minmax' or 'none'")
        self.check(self.calibration_batches > 0, "calibration_batches", "an integer > 0")
        self.check(self.probe_steps > 0, "probe_steps", "an integer > 0")
        self.check(self.probe_lr > 0, "probe_lr", "a number > 0")


@register("static_isolation")
class StaticIsolation(IsolationMethod[StaticIsolationConfig]):

    def on_stage_start(self, ctx: StageContext) -> None:
        super().on_stage_start(ctx)
        if self.refreshes == 0:
            self.isolate(self.core_region(ctx.model, ctx.data), ctx.step)

    def on_stage_end(self, ctx: StageContext) -> None:
        if self.config.accumulate_per_stage:
            core = self.core_region(ctx.model, ctx.data)
            union = {n: torch.unique(torch.cat([self.isolated.index[n].long(), core[n]])) for n in core}
            self.isolate(union, ctx.step)

    def core_region(self, model: nn.Module, data: StageData) -> dict[str, torch.Tensor]:
        """Flat indices of the entries to isolate for ``data``."""
        normalize = self.config.normalize == "layer_minmax"
        if self.config.source == "gradient":
            return select_top_fraction(self.importance(model, data), self.config.rho, normalize=normalize)
        union: dict[str, torch.Tensor] = {}
        for task in data.tasks:
            core = select_top_fraction(self.probe(model, data, task), self.config.rho, normalize=normalize)
            union = {n: torch.unique(torch.cat([union[n], i])) if n in union else i for n, i in core.items()}
        return union

    def importance(self, model: nn.Module, data: StageData) -> dict[str, torch.Tensor]:
        """Mean g^2 over the calibration batches at the current weights (no update)."""
        n = self.config.calibration_batches
        return mean_grad_squared(model, self.params, data.batches(n), data.loss, n)

    def probe(self, model: nn.Module, data: StageData, task: str) -> dict[str, torch.Tensor]:
        """|theta_probe - theta_0| after a short fine-tune of a copy on ``task`` alone."""
        return probe_displacement(model, self.params, data.batches(self.config.probe_steps, task=task),
                                  data.loss, self.config.probe_lr, data.optimizer)
