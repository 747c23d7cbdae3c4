"""A task: rows (prompt, target, optional choices), its prompt format and its scoring.

Every row is ``{"prompt": str, "target": str}`` plus, for multiple choice, ``"choices"`` and
``"gold"`` (index of the right choice; ``target == choices[gold]``), and where the scored answer
differs from the training target (GSM8K's final number), ``"eval_target"``. The training text
is ``prompt + " " + target``; the loss covers the target tokens (and end-of-text) only.

Kinds and their scorers (all through lm-eval tasks):
- ``generate``: greedy generation, exact match (0-100);
- ``gsm8k``: greedy generation, exact match of the last number in the output (0-100);
- ``choice``: log-likelihood of each choice, accuracy (0-100);
- ``open``: greedy generation, ROUGE-L F1 against the reference (0-100), or an LLM judge (1-10)
  when one is configured.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]

METRIC = {"generate": ("exact_match", "none"), "gsm8k": ("exact_match", "flexible-extract"),
          "choice": ("acc", "none"), "open": ("rougeL", "none")}
SCORER = {"generate": "exact match", "gsm8k": "exact match (final number)", "choice": "accuracy (log-likelihood)",
          "open": "ROUGE-L F1"}


@dataclasses.dataclass(frozen=True)
class Task:
    """One task. Offline tasks have ``make(rng) -> row``; paper tasks a ``loader``."""

    name: str
    family: str
    kind: str
    make: Callable[[random.Random], Row] | None
    description: str
    loader: Callable[..., tuple[list[Row], list[Row], dict[str, Any]]] | None = None
    distinct: int | None = None  # a generator's number of distinct prompts (train_size + test_size may not exceed it)

    @property
    def metric(self) -> str:
        """lm-eval's result key for the score, e.g. ``exact_match,none``."""
        return ",".join(METRIC[self.kind])

    def points(self, value: float) -> float:
        """lm-eval's value of the score metric on the task's documented 0-100 scale: exact match
        and accuracy are fractions (x 100), ROUGE-L is already 0-100 (``scoring.rouge_l_f1``)."""
        return float(value) if self.kind == "open" else 100.0 * float(value)

    @property
    def scorer(self) -> str:
        return SCORER[self.kind]

    def chance(self, rows: list[Row]) -> float:
        """Score (0-100) of a guesser: mean 1/len(choices) for choice tasks, else 0."""
        if self.kind != "choice":
            return 0.0
        return 100.0 * sum(1 / len(r["choices"]) for r in rows) / len(rows)

    def split(self, seed: int, train_size: int, test_size: int,
              source: str = "generated") -> tuple[list[Row], list[Row], dict[str, Any]]:
        """Deterministic (train, test, notes about the data) for ``seed``."""
        if self.loader is not None:
            return self.loader(self, seed, train_size, test_size, source)
        return (*self.generate(seed, train_size, test_size), {})

    def validation(self, seed: int, train_size: int, test_size: int, val_size: int,
                   source: str = "generated") -> list[Row]:
        """``val_size`` rows of the training pool beyond the ``train_size`` rows trained on: the
        split is drawn for ``train_size + val_size`` and the rows after the first ``train_size``
        taken, so the training rows, the test rows and their order stay exactly those of
        ``split(seed, train_size, test_size)``. A row whose prompt is also a training prompt is
        dropped (test prompts are dropped from the pool already)."""
        train, _, _ = self.split(seed, train_size + val_size, test_size, source)
        trained = {r["prompt"] for r in train[:train_size]}
        return [r for r in train[train_size:] if r["prompt"] not in trained]

    def generate(self, seed: int, train_size: int, test_size: int) -> tuple[list[Row], list[Row]]:
        """Disjoint (by prompt) generated train and test rows, deterministic in ``seed``."""
        assert self.make is not None, f"task {self.name} has no generator"
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
