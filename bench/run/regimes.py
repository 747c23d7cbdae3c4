"""Regimes: which tasks each stage trains on. After every stage all tasks are evaluated, which
gives the matrix ``A[stage][task]``.

- ``multitask``: one stage over the mixture of all tasks;
- ``sequential``: one stage per task, in the configured order;
- ``multistage``: the tasks split into groups, each group one stage of mixed training (the
  papers' multi-stage baseline): ``tasks.groups`` gives them, otherwise ``tasks.num_groups`` = K
  groups of a random split drawn from the run seed. A method that plans its own stages
  (``Method.plans_stages``) replaces this grouping before the first stage.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from bench.config import REGIMES
from bench.run.cell import Cell
from methods.base import StagePlan

__all__ = ["REGIMES", "Stage", "plan", "random_groups", "regime_plan", "stages"]


@dataclasses.dataclass(frozen=True)
class Stage:
    index: int
    tasks: list[str]


def random_groups(tasks: Sequence[str], count: int, seed: int) -> list[list[str]]:
    """``count`` groups of a seeded shuffle of ``tasks``, sizes differing by at most one."""
    order = list(tasks)
    random.Random(f"{seed}:groups").shuffle(order)
    size, extra = divmod(len(order), count)
    bounds = [k * size + min(k, extra) for k in range(count + 1)]
    return [order[bounds[k]:bounds[k + 1]] for k in range(count)]


def plan(regime: str, tasks: Sequence[str], groups: Sequence[Sequence[str]] = (), num_groups: int = 3,
         seed: int = 0) -> StagePlan:
    """The regime's stage plan, with how it was made (recorded in result.json)."""
    if regime == "multitask":
        return StagePlan([list(tasks)], {"source": "regime multitask: one stage over all tasks"})
    if regime == "sequential":
        return StagePlan([[t] for t in tasks], {"source": "regime sequential: one stage per task"})
    if regime == "multistage":
        if groups:
            return StagePlan([list(g) for g in groups], {"source": "tasks.groups"})
        return StagePlan(random_groups(tasks, num_groups, seed),
                         {"source": f"random split into tasks.num_groups = {num_groups}, drawn from seed {seed}"})
    raise ValueError(f"unknown regime {regime!r}; allowed: {', '.join(REGIMES)}")


def regime_plan(cell: Cell) -> StagePlan:
    """The stage plan of a cell's regime (a method may replace it before the first stage)."""
    t = cell.tasks
    return plan(cell.regime, t.names, t.groups, t.num_groups, cell.seed)


def stages(stage_plan: StagePlan) -> list[Stage]:
    return [Stage(i, list(g)) for i, g in enumerate(stage_plan.groups)]
