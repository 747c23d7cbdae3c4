"""EPI with its isolation ratio and refresh interval adapted online from the drift it measures.

The EPI paper leaves both as hand-set hyperparameters and names "adaptive schemes to
automatically tune isolation ratio and update interval based on training dynamics" as future
work. This method is one such scheme, built from EPI's own signals and nothing else:

- **Interval from mask drift.** At each refresh the new mask is compared with the one it
  replaces (the Jaccard EPI's paper reports). Below ``drifting_below`` the importance is moving:
  the next refresh comes twice as soon. Above ``stable_above`` it has settled: twice as late.
  In between the interval stays. Bounds: ``[min_interval, max_interval]``; the first interval is
  ``refresh_every`` brought into them (so a tuner may draw it from EPI's own domain), the first
  mask comes after ``warmup_steps`` (default ``refresh_every``).
- **Ratio from how concentrated importance is.** With ``I~`` the per-tensor min-max normalized
  importance EPI selects on, over N eligible entries, the participation share
  ``(sum I~)^2 / (N * sum I~^2)`` is the fraction of entries that effectively carry the
  importance mass: exactly k/N when k entries share it equally and the rest have none, small when
  a few entries dominate, 1 when all are equal. The mask isolates that fraction,
  ``rho_t = clip(share, rho_min, rho)``: a concentrated signal protects few entries, a diffuse one
  more. ``rho`` is the ceiling, so the memory plan and the update budget hold at their bound.
  The Jaccard therefore also drops when rho_t changes size; the events keep both numbers.

Everything else is EPI (the EMA of g^2, normalization, global top-k, bit-exact isolation). Each
refresh writes a ``schedule`` event (step, stage, ratio = rho_t, interval, jaccard, participation), which
the report plots per run. The meta-parameters declare search domains like EPI's own, so tuning
gives both methods the same budget.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from methods.epi import EPI, EPIConfig
from methods.parts.collectives import local, reduce_
from methods.parts.isolation import IsolationMethod
from methods.parts.selection import block_extremes, select_top_fraction
from methods.registry import register
from pluggable.search import log_uniform, uniform

SCHEDULE = "schedule"  # event kind: a refresh's adapted rho (``ratio``) and interval


@dataclasses.dataclass(frozen=True, kw_only=True)
class EPIAdaptiveConfig(EPIConfig):
    rho: float = dataclasses.field(default=0.05, metadata={
        "help": "the most entries a mask may isolate (a fraction of the eligible; the plan's bound)",
        "search": log_uniform(5e-3, 0.2)})
    rho_min: float = dataclasses.field(default=1e-3, metadata={"help": "the fewest entries a mask isolates"})
    min_interval: int = dataclasses.field(default=2, metadata={"help": "shortest refresh interval (steps)", "minimum": 1})
    max_interval: int = dataclasses.field(default=200, metadata={"help": "longest refresh interval (steps)", "minimum": 1})
    drifting_below: float = dataclasses.field(default=0.5, metadata={
        "help": "Jaccard with the previous mask below which the interval halves", "search": uniform(0.1, 0.7)})
    stable_above: float = dataclasses.field(default=0.9, metadata={
        "help": "Jaccard with the previous mask above which the interval doubles", "search": uniform(0.7, 0.99)})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check(0.0 < self.rho_min <= self.rho, "rho_min", f"a fraction in (0, rho = {self.rho}]")
        self.check(self.min_interval <= self.max_interval, "min_interval", f"at most max_interval = {self.max_interval}")
        self.check(0.0 <= self.drifting_below < self.stable_above <= 1.0, "drifting_below",
                   f"a Jaccard in [0, stable_above = {self.stable_above})")


def participation_share(scores: dict[str, torch.Tensor], normalize: bool) -> float:
    """``(sum x)^2 / (N * sum x^2)`` over every entry of ``scores`` (per-tensor min-max normalized
    first when ``normalize``), over all ranks' blocks; 1.0 when every entry is zero."""
    blocks = [local(t).detach().reshape(-1).double() for t in scores.values()]
    lows, highs = block_extremes(blocks)
    sums = torch.zeros(3, dtype=torch.float64, device=blocks[0].device)  # sum x, sum x^2, N
    for i, b in enumerate(blocks):
        x = (b - lows[i]) / (highs[i] - lows[i] + 1e-12) if normalize else b
        sums += torch.stack([x.sum(), x.square().sum(), torch.tensor(float(b.numel()), dtype=torch.float64,
                                                                          device=b.device)])
    s1, s2, n = reduce_(sums).tolist()
    return 1.0 if s2 <= 0 else s1 * s1 / (n * s2)


@register("epi_adaptive")
class EPIAdaptive(EPI):
    """EPI whose rho and refresh interval follow the importance's concentration and the mask's drift."""

    Config = EPIAdaptiveConfig
    config: EPIAdaptiveConfig

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        c = self.config
        self.interval = min(max(c.refresh_every, c.min_interval), c.max_interval)
        self.next_refresh = c.refresh_every if c.warmup_steps is None else c.warmup_steps
        self.rho_now = 0.0
        return model

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        IsolationMethod.after_step(self, step, model, optimizer)  # restore the held entries
        self.optimizer, self.steps_done = optimizer, step + 1
        c = self.config
        capped = c.max_refreshes and self.refreshes >= c.max_refreshes
        if step + 1 >= self.next_refresh and not capped:
            self.refresh(step + 1, optimizer)

    def refresh(self, steps_done: int, optimizer: torch.optim.Optimizer) -> None:
        c = self.config
        scores = self.scores(optimizer)
        share = participation_share(scores, self.normalize)
        self.rho_now = min(max(share, c.rho_min), c.rho)
        self.isolate(select_top_fraction(scores, self.rho_now, normalize=self.normalize), steps_done, optimizer,
                     self.reset_keys())
        jaccard = self.last_event["jaccard_prev"]
        if jaccard is not None and jaccard < c.drifting_below:
            self.interval = max(c.min_interval, self.interval // 2)
        elif jaccard is not None and jaccard > c.stable_above:
            self.interval = min(c.max_interval, self.interval * 2)
        self.next_refresh = steps_done + self.interval
        self.events.append({"kind": SCHEDULE, "step": steps_done, "stage": self.stage, "ratio": self.rho_now,
                            "interval": self.interval, "jaccard": jaccard, "participation": share,
                            "isolated": self.last_event["size"]})

    def stats(self) -> dict[str, float]:
        return {**super().stats(), "rho": self.rho_now, "interval": float(self.interval)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "schedule": {"interval": self.interval, "next_refresh": self.next_refresh,
                                                     "rho": self.rho_now}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        schedule = state["schedule"]
        self.interval, self.next_refresh, self.rho_now = (int(schedule["interval"]), int(schedule["next_refresh"]),
                                                          float(schedule["rho"]))
