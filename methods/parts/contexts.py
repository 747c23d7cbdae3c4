"""What the hooks of a method receive (``methods.base`` lists the calls): a stage's data, the
context of a stage boundary, the context and result of planning the stages; and
``tensor_bytes`` for sizing any nested state."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
Row = tuple[list[int], list[int]]  # one tokenized training row: (input_ids, labels)


class StageData(Protocol):
    """What a method may see of a regime stage's training data (no paths, no run config).

    ``rows`` are the stage's tokenized rows (a data method keeps some, e.g. replay);
    ``batches(n, task)`` yields ``n`` ready-to-use batches of the stage's training mix (or of one
    task of it), ``loss(model, batch)`` is the exact loss the training loop optimizes (under the
    run's precision policy), ``optimizer(params, lr)`` the run's optimizer (its rounding too)
    for a method's own short fine-tunes (probes), without weight decay.
    """

    stage: int
    tasks: Sequence[str]
    rows: Mapping[str, Sequence[Row]]  # the stage's tokenized training rows, per task
    seed: int  # the run's data seed

    def batches(self, n: int, task: str | None = None) -> Iterator[Batch]: ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...

    def optimizer(self, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer: ...


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor reachable in a (nested) dict, list or tuple."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """The stages of a run: ``groups[k]`` are the tasks mixed in stage ``k``; ``details`` (JSON
    values) say how the plan was made and go into result.json (``evaluation.plan``)."""

    groups: list[list[str]]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PlanContext:
    """What ``plan_stages`` receives: the regime's plan, batches of every task of the run
    (``data.batches(n, task)``), the model and optimizer before any training, the run seed."""

    plan: StagePlan
    data: StageData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    seed: int


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What ``on_stage_start`` and ``on_stage_end`` receive."""

    stage: int
    step: int  # optimizer steps done so far, over all stages
    data: StageData
    model: nn.Module
    optimizer: torch.optim.Optimizer
