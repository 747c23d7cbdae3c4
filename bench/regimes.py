"""Regimes: which rows each stage trains on. ``multitask`` is one stage over the mixture of all
tasks; ``sequential`` is one stage per task, in the configured order. After every stage all
tasks are evaluated, which gives the matrix ``A[stage][task]``."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stage:
    index: int
    tasks: list[str]


def stages(regime: str, tasks: list[str]) -> list[Stage]:
    if regime == "multitask":
        return [Stage(0, list(tasks))]
    if regime == "sequential":
        return [Stage(i, [t]) for i, t in enumerate(tasks)]
    raise ValueError(f"unknown regime {regime!r}; allowed: multitask, sequential")
