"""The one interface every fine-tuning method implements.

The training loop (``bench/train.py``) owns forward, backward, clipping, the optimizer and the
schedule; a method only acts through the hooks below, which all do nothing by default. Two runs
that differ only in their ``Method`` object are therefore a fair comparison.

Hook order for one run (``step`` counts optimizer steps, never micro-batches)::

    prepare -> param_groups -> (optimizer built) ->
    for each stage: on_stage_start -> [before_step -> backward(s) -> after_backward
                                       -> clip -> optimizer.step -> after_step]* -> on_stage_end
    export (before evaluation)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class StageData(Protocol):
    """What a method may see of a regime stage's training data (no paths, no run config).

    ``batches(n, task)`` yields ``n`` ready-to-use batches of the stage's training mix (or of one
    task of it), ``loss(model, batch)`` is the exact loss the training loop optimizes.
    """

    stage: int
    tasks: Sequence[str]

    def batches(self, n: int, task: str | None = None) -> Iterator[Batch]: ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method's options; subclasses validate in ``__post_init__``."""

    def check(self, condition: bool, field: str, allowed: str) -> None:
        """Raise ``ValueError`` naming the field, its value and what is allowed."""
        if not condition:
            value = getattr(self, field)
            raise ValueError(f"{type(self).__qualname__}: bad value {value!r} for option "
                             f"{field!r}; allowed: {allowed}")


class Method:
    """Base class: every hook is a no-op, so a method overrides only what it changes."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    # -- set-up -------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        """Freeze, inject adapters or allocate state; return the model to train."""
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Parameter groups the optimizer sees (default: every trainable parameter)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    # -- training -----------------------------------------------------------------------------
    def on_stage_start(self, stage: int, data: StageData) -> None:
        """Start of a regime stage (e.g. calibrate importance on a few batches)."""

    def before_step(self, step: int, model: nn.Module) -> None:
        """Before the micro-batches of optimizer step ``step``."""

    def after_backward(self, step: int, model: nn.Module) -> None:
        """Gradients accumulated for ``step``, before clipping (mask grads, read importance)."""

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After ``optimizer.step()`` (restore isolated entries, refresh masks)."""

    def on_stage_end(self, stage: int, model: nn.Module) -> None:
        """End of a regime stage."""

    # -- outputs ------------------------------------------------------------------------------
    def export(self, model: nn.Module) -> nn.Module:
        """A plain model for evaluation and saving (e.g. LoRA merged)."""
        return model

    def isolation_masks(self) -> dict[str, torch.Tensor]:
        """Current isolation masks by parameter name, True = isolated; empty if none."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically (masks, importance, counters)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict``."""

    def stats(self) -> dict[str, float]:
        """Scalars for the log (density, churn, trainable count)."""
        return {}

    def drain_events(self) -> list[dict[str, Any]]:
        """Records produced since the last call (e.g. one per mask refresh), for ``masks.jsonl``."""
        return []

