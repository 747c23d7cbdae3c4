"""Evolving Parameter Isolation (EPI): the isolation mask follows gradient importance online.

1. Every optimizer step: ``I <- beta * I + (1 - beta) * g^2`` with g the accumulated gradient of
   the step's mixed batch, before clipping (``importance = "ema"``). ``importance = "adam_v"``
   reads the optimizer's second moment instead (the same EMA with beta = beta2, after clipping)
   and keeps no extra per-parameter state.
2. After ``warmup_steps`` and then every ``refresh_every`` steps: per-tensor min-max
   normalization (``normalize = "layer_minmax"``; ``"none"`` is the paper's ablation) and one
   global top-rho selection -> the new mask. Released entries train again at the next step.
3. Isolated entries get no update at all (see ``methods.parts.isolation``). With ``reset_moments`` the
   first moment of entries that become isolated is cleared, and with ``importance = "ema"`` the
   second as well, so a released entry does not carry stale momentum (with ``adam_v`` the second
   moment *is* the importance signal and is kept).

beta and the refresh interval are not given by the paper: the defaults (0.9, 50) are our choice.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from methods.parts.importance import GradSquaredEMA, second_moment
from methods.parts.refreshing import RefreshConfig, RefreshingIsolation
from methods.registry import register
from pluggable.search import uniform


@dataclasses.dataclass(frozen=True, kw_only=True)
class EPIConfig(RefreshConfig):
    beta: float = dataclasses.field(default=0.9, metadata={"help": "EMA decay of g^2", "search": uniform(0.5, 0.99)})
    importance: str = dataclasses.field(default="ema", metadata={"help": "ema | adam_v"})
    reset_moments: bool = dataclasses.field(
        default=False, metadata={"help": "clear Adam moments of entries that become isolated"})
    normalize: str = dataclasses.field(default="layer_minmax", metadata={"help": "layer_minmax | none"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check(0.0 <= self.beta < 1.0, "beta", "0 <= beta < 1")
        self.check(self.importance in ("ema", "adam_v"), "importance", "'ema' or 'adam_v'")
        self.check(self.normalize in ("layer_minmax", "none"), "normalize", "'layer_minmax' or 'none'")
        self.check(isinstance(self.reset_moments, bool), "reset_moments", "true or false")


@register("epi")
class EPI(RefreshingIsolation[EPIConfig]):

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        self.normalize = self.config.normalize == "layer_minmax"
        self.ema = GradSquaredEMA(self.params, self.config.beta) if self.config.importance == "ema" else None
        return model

    def after_backward(self, step: int, model: nn.Module) -> None:
        if self.ema is not None:
            self.ema.update()
        super().after_backward(step, model)  # then zero the isolated entries' gradients

    def scores(self, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        if self.ema is not None:
            return self.ema.values
        return {n: second_moment(optimizer, p) for n, p in self.params.items()}

    def reset_keys(self) -> tuple[str, ...]:
        if not self.config.reset_moments:
            return ()
        return ("exp_avg", "exp_avg_sq") if self.ema is not None else ("exp_avg",)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ema": self.ema.state_dict() if self.ema is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
