"""Base classes of the isolation methods: hold an ``IsolatedSet``, keep it bit-exact, log drift.

``IsolationMethod``: subclasses decide *which* entries to isolate and *when*
(``static_isolation``; ``methods.parts.refreshing`` for masks re-selected on a schedule); they call
``self.isolate(index, step)`` and this class does the rest:
zero isolated gradients before clipping, restore frozen values after every optimizer step,
optionally clear the Adam moments of entries that become isolated, and emit one ``set_drift``
event per mask change (size, fraction, entries per layer, Jaccard with the previous and the
first mask).

``index`` format of ``isolate``: ``{parameter name: 1-D integer tensor of flat indices into that
parameter}`` (as ``methods.parts.selection.select_top_fraction`` returns); names absent from it isolate
nothing.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypeVar

import torch
from torch import nn

from methods.base import Method, MethodConfig, StageContext
from methods.parts.collectives import local, total
from methods.parts.masks import IsolatedSet, clear_moments, eligible_parameters
from methods.parts.selection import jaccard, per_layer_counts
from pluggable.search import log_uniform


@dataclasses.dataclass(frozen=True, kw_only=True)
class IsolationConfig(MethodConfig):
    """Options every isolation method shares."""

    rho: float = dataclasses.field(default=0.01, metadata={"help": "fraction of eligible entries isolated",
                                                           "search": log_uniform(1e-3, 0.2)})
    eligible: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "regexes of parameter names that may be isolated; empty = all 2-D weights"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "eligible", tuple(self.eligible))
        self.check(0.0 <= self.rho <= 1.0, "rho", "a fraction in [0, 1]")
        for p in self.eligible:
            try:
                re.compile(p)
            except re.error:
                self.check(False, "eligible", "a list of valid regular expressions")


IC = TypeVar("IC", bound=IsolationConfig)


class IsolationMethod(Method[IC]):
    """Keeps isolated entries bit-identical; subclasses choose the mask."""

    isolates = True

    def __init__(self, config: IC) -> None:
        super().__init__(config)
        self.first: dict[str, torch.Tensor] | None = None
        self.refreshes = 0
        self.stage = 0
        self.events: list[dict[str, Any]] = []
        self.last_event: dict[str, Any] = {}

    # -- hooks shared by every isolation method ---------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        self.params = eligible_parameters(model, self.config.eligible)
        self.isolated: IsolatedSet = IsolatedSet(self.params)
        self.sizes = {n: local(p).numel() for n, p in self.params.items()}  # this rank's entries
        self.eligible_count = sum(p.numel() for p in self.params.values())  # all ranks' entries
        self.trainable_total = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model

    def on_stage_start(self, ctx: StageContext) -> None:
        self.stage = ctx.stage

    def before_step(self, step: int, model: nn.Module) -> None:
        self.held = dict(self.isolated.index)  # the set this step keeps (a refresh after it assigns anew)

    def after_backward(self, step: int, model: nn.Module) -> None:
        self.isolated.zero_grads()

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.isolated.restore()

    # -- for subclasses ---------------------------------------------------------------------------
    def isolate(self, index: dict[str, torch.Tensor], step: int,
                optimizer: torch.optim.Optimizer | None = None, reset_keys: tuple[str, ...] = ()) -> None:
        """Make ``index`` (flat indices per parameter name) the isolated set, freezing the
        entries' current values; clear ``reset_keys`` optimizer state of newly isolated entries;
        record a ``set_drift`` event."""
        previous = dict(self.isolated.index)
        added = self.isolated.assign(index)
        if optimizer is not None and reset_keys:
            for name, idx in added.items():
                clear_moments(optimizer, self.params[name], idx, reset_keys)
        current = self.isolated.index
        if self.first is None:
            self.first = {n: i.clone() for n, i in current.items()}
        per_layer = per_layer_counts(current)
        count = self.count = sum(per_layer.values())  # over all ranks
        self.refreshes += 1
        self.last_event = {
            "kind": "set_drift", "set": "mask", "index": self.refreshes, "step": step,
            "stage": self.stage, "size": count, "fraction": count / max(self.eligible_count, 1),
            "added": int(total(sum(a.numel() for a in added.values()))),
            "jaccard_prev": jaccard(previous, current, self.sizes) if self.refreshes > 1 else None,
            "jaccard_first": jaccard(self.first, current, self.sizes),
            "per_group": per_layer,
        }
        self.events.append(self.last_event)

    # -- outputs ----------------------------------------------------------------------------------
    def planned_state_bytes(self) -> int:
        """State now, plus a full isolated set: rho of the eligible entries as int32 indices, a
        copy of them as the first mask, and their frozen values."""
        k = round(self.config.rho * self.eligible_count)
        value_bytes = next(iter(self.params.values())).element_size()
        return super().planned_state_bytes() + k * (4 + 4 + value_bytes)

    def isolation_masks(self) -> dict[str, torch.Tensor]:
        return self.isolated.masks() if hasattr(self, "isolated") else {}

    def held_fixed(self) -> dict[str, torch.Tensor]:
        """The isolated set as it was when the step began (sorted flat indices)."""
        return getattr(self, "held", {})

    def stats(self) -> dict[str, float]:
        count = getattr(self, "count", 0)
        out = {"isolated": float(count), "density": count / max(getattr(self, "eligible_count", 1), 1),
               "trainable": float(getattr(self, "trainable_total", 0) - count),
               "refreshes": float(self.refreshes)}
        if self.last_event.get("jaccard_prev") is not None:
            out["jaccard_prev"] = float(self.last_event["jaccard_prev"])
        return out

    def drain_events(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    def state_dict(self) -> dict[str, Any]:
        return {"isolated": self.isolated.state_dict(), "first": self.first,
                "refreshes": self.refreshes, "stage": self.stage, "last_event": self.last_event}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.isolated.load_state_dict(state["isolated"])
        self.first, self.refreshes = state["first"], state["refreshes"]
        self.stage, self.last_event = state["stage"], state["last_event"]
        self.count = int(total(self.isolated.count()))
