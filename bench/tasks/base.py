"""A task: seeded rows (prompt, target, optional choices), its prompt format and its scoring.

Every row is ``{"prompt": str, "target": str}`` plus, for multiple choice, ``"choices"`` and
``"gold"`` (index of the right choice; ``target == choices[gold]``). The training text is
``prompt + " " + target``; the loss covers the target tokens (and the end-of-text token) only.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Task:
    """One task family. ``make(rng)`` returns one random row."""

    name: str
    family: str
    kind: str  # "generate" (exact match) | "choice" (log-likelihood accuracy)
    make: Callable[[random.Random], Row]
    description: str

    @property
    def metric(self) -> str:
        return "exact_match" if self.kind == "generate" else "acc"

    def chance(self, rows: list[Row]) -> float:
        """Score (0-100) of a guesser: 0 for exact match, mean 1/len(choices) for choice tasks."""
        if self.kind == "generate":
            return 0.0
        return 100.0 * sum(1 / len(r["choices"]) for r in rows) / len(rows)

    def generate(self, seed: int, train_size: int, test_size: int) -> tuple[list[Row], list[Row]]:
        """Disjoint (by prompt) train and test rows, deterministic in ``seed``."""
        rng = random.Random(f"{self.name}:{seed}")
        rows: dict[str, Row] = {}
        want = train_size + test_size
        for _ in range(50 * want):
            row = self.make(rng)
            rows.setdefault(row["prompt"], row)
            if len(rows) == want:
                break
        else:
            raise ValueError(f"task {self.name!r} has fewer than {want} distinct rows")
        ordered = list(rows.values())
        return ordered[test_size:], ordered[:test_size]
