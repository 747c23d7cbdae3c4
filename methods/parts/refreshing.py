"""Isolation whose mask is re-selected on a schedule: after ``warmup_steps`` and then every
``refresh_every`` optimizer steps, the global top-rho of an abstract ``scores`` function becomes
the new mask (``epi``: gradient importance; ``random_isolation``: uniform noise). A subclass
implements ``scores`` and, if it wants, ``reset_keys``; everything else is shared.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch
from torch import nn

from methods.base import StageContext
from methods.parts.isolation import IsolationConfig, IsolationMethod
from methods.parts.selection import select_top_fraction
from pluggable.search import log_int


@dataclasses.dataclass(frozen=True, kw_only=True)
class RefreshConfig(IsolationConfig):
    """Options of methods that re-select their mask during training (epi, random_isolation)."""

    refresh_every: int = dataclasses.field(default=50, metadata={"help": "optimizer steps between mask refreshes",
                                                                 "search": log_int(2, 200)})
    warmup_steps: int | None = dataclasses.field(
        default=None, metadata={"help": "steps before the first mask (None = refresh_every)"})
    max_refreshes: int = dataclasses.field(
        default=0, metadata={"help": "stop refreshing after this many masks (0 = never stop)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check(isinstance(self.refresh_every, int) and self.refresh_every > 0, "refresh_every", "an integer > 0")
        self.check(self.warmup_steps is None or (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0),
                   "warmup_steps", "None or an integer >= 0")
        self.check(isinstance(self.max_refreshes, int) and self.max_refreshes >= 0, "max_refreshes", "an integer >= 0")

    def refresh_due(self, steps_done: int, refreshes_done: int) -> bool:
        """True after ``steps_done`` optimizer steps when a new mask is due."""
        warmup = self.refresh_every if self.warmup_steps is None else self.warmup_steps
        if self.max_refreshes and refreshes_done >= self.max_refreshes:
            return False
        return steps_done >= warmup and (steps_done - warmup) % self.refresh_every == 0


RC = TypeVar("RC", bound=RefreshConfig)


class RefreshingIsolation(IsolationMethod[RC]):
    """Re-selects the mask as the global top-rho of ``scores`` on ``RefreshConfig``'s schedule."""
    normalize = False  # per-tensor min-max normalization before the global selection

    def on_stage_start(self, ctx: StageContext) -> None:
        super().on_stage_start(ctx)
        self.optimizer, self.steps_done = ctx.optimizer, ctx.step

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().after_step(step, model, optimizer)
        self.optimizer, self.steps_done = optimizer, step + 1
        if self.config.refresh_due(step + 1, self.refreshes):
            self.refresh(step + 1, optimizer)

    def scores(self, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """Importance of every eligible entry (shaped like its parameter); higher = isolated first."""
        raise NotImplementedError

    def reset_keys(self) -> tuple[str, ...]:
        """Optimizer state cleared for entries that become isolated (default: none)."""
        return ()

    def refresh(self, steps_done: int, optimizer: torch.optim.Optimizer) -> None:
        """Select the new mask from the current scores and isolate it."""
        index = select_top_fraction(self.scores(optimizer), self.config.rho, normalize=self.normalize)
        self.isolate(index, steps_done, optimizer, self.reset_keys())

    def planned_state_bytes(self) -> int:
        """The isolation state, plus the int32 indices of the set a step began with: a refresh
        after the step assigns the new set while ``held_fixed`` still reports the old one."""
        return super().planned_state_bytes() + round(self.config.rho * self.eligible_count) * 4

    def timed_operations(self) -> dict[str, Any]:
        return {"refresh": lambda: self.refresh(self.steps_done, self.optimizer)}
