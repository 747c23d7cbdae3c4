"""Evolving Parameter Isolation (EPI): the isolation mask follows gradient importance online.

1. Every optimizer step: ``I <- beta * I + (1 - beta) * g^2`` with g the accumulated gradient of
   the step's mixed batch, before clipping (``importance = "ema"``). ``importance = "adam_v"``
   reads AdamW's ``exp_avg_sq`` instead (the same EMA with beta = beta2, after clipping) and keeps
   no extra per-parameter state.
2. After ``warmup_steps`` and then every ``refresh_every`` steps: per-tensor min-max
   normalization (``normalize = "layer_minmax"``; ``"none"`` is the paper's ablation) and one
   global top-rho selection -> the new mask. Released entries train again at the next step.
3. Isolated entries get no update at all (see ``methods.isolation``). With ``reset_moments`` the
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

from methods.isolation import IsolationMethod, RefreshConfig
from methods.masks import select_top_fraction
from methods.registry import register


@dataclasses.dataclass(frozen=True, kw_only=True)
class EPIConfig(RefreshConfig):
    beta: float = dataclasses.field(default=0.9, metadata={"help": "EMA decay of g^2"})
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
class EPI(IsolationMethod):
    Config = EPIConfig
    config: EPIConfig

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        self.ema: dict[str, torch.Tensor] = {}
        if self.config.importance == "ema":
            self.ema = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params.items()}
        return model

    def after_backward(self, step: int, model: nn.Module) -> None:
        if self.ema:
            # Mixed precision is fine here: a bf16 gradient is promoted inside the kernel, no copy.
            pairs = [(self.ema[n], p.grad) for n, p in self.params.items() if p.grad is not None]
            ema, grads = [e for e, _ in pairs], [g for _, g in pairs]
            torch._foreach_mul_(ema, self.config.beta)
            torch._foreach_addcmul_(ema, grads, grads, value=1.0 - self.config.beta)
        super().after_backward(step, model)  # then zero the isolated entries' gradients

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().after_step(step, model, optimizer)
        if self.config.refresh_due(step + 1, self.refreshes):
            self.refresh(step + 1, optimizer)

    def refresh(self, steps_done: int, optimizer: torch.optim.Optimizer) -> None:
        """Select the new mask from the current importance and isolate it."""
        if self.ema:
            scores = self.ema
        else:
            scores = {n: optimizer.state[p]["exp_avg_sq"] for n, p in self.params.items()}
        index = select_top_fraction(scores, self.config.rho,
                                    normalize=self.config.normalize == "layer_minmax")
        keys: tuple[str, ...] = ()
        if self.config.reset_moments:
            keys = ("exp_avg", "exp_avg_sq") if self.ema else ("exp_avg",)
        self.isolate(index, steps_done, optimizer, keys)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ema": {n: t.clone() for n, t in self.ema.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for n, t in state["ema"].items():
            self.ema[n].copy_(t)
