"""Observers: read-only parts of the ``Trainer`` that watch training (drift, gradient conflict).

An observer gets the same calls as the method (``methods.base`` lists them), always after the
method, plus ``on_gradients`` right after the backward pass, before the method's
``after_backward``. It must not change the model, its gradients or the optimizer: a run with and without
observers trains identically. Its events go to ``events/<name>.jsonl`` like the method's, and
its ``state_dict`` is saved with the trainer's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from methods.base import StageContext


class Observer:
    """Base class: every hook is a no-op."""

    name: ClassVar[str] = "observer"

    def attach(self, model: nn.Module) -> None:
        """The model as the method prepared it, once, before any other call (allocate state)."""

    def on_stage_start(self, ctx: StageContext) -> None: ...

    def before_step(self, step: int, model: nn.Module) -> None: ...

    def on_gradients(self, step: int, model: nn.Module) -> None:
        """The step's summed gradients as the loss gave them, before the method's
        ``after_backward`` (which may zero some, e.g. frozen entries)."""

    def after_backward(self, step: int, model: nn.Module) -> None: ...

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def on_stage_end(self, ctx: StageContext) -> None: ...

    def drain_events(self) -> list[dict[str, Any]]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def summary(self) -> Any:
        """What result.json records of this observer (``train.observers.<name>``); None = nothing."""
        return None


class Recorder:
    """An observer's measurements: each is kept for the summary and queued once as an event
    (``kept`` may leave bulky fields out of the summary)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []

    def add(self, event: dict[str, Any], kept: dict[str, Any] | None = None) -> None:
        self.records.append(event if kept is None else kept)
        self.pending.append(event)

    def drain(self) -> list[dict[str, Any]]:
        out, self.pending = self.pending, []
        return out

    def series(self, keys: tuple[str, ...]) -> dict[str, list[Any]]:
        """``{key: [value of every record]}``."""
        return {k: [r[k] for r in self.records] for k in keys}

    def state_dict(self) -> dict[str, Any]:
        return {"records": list(self.records), "pending": list(self.pending)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records, self.pending = list(state["records"]), list(state["pending"])
