"""Analyses of training that any method can be run with (the config's ``[analysis]`` table):
read-only observers on the ``Trainer``. Each name maps to its observer class; an empty table
leaves the analysis off. ``build`` makes the observers of a config, ``check`` validates the
table before any model loads."""

from __future__ import annotations

from typing import Any

from bench.analysis.conflict import GradientConflict
from bench.analysis.drift import ImportanceDrift
from bench.engine.data import StageData
from bench.engine.observers import Observer

ANALYSES: dict[str, Any] = {"importance_drift": ImportanceDrift, "gradient_conflict": GradientConflict}


def check(tables: dict[str, dict[str, Any]]) -> None:
    """Raise ``ValueError`` naming ``analysis.<name>`` for a bad option."""
    for name, table in tables.items():
        if table:
            try:
                ANALYSES[name].Options.build(table)
            except (ValueError, TypeError) as e:
                raise ValueError(f"key 'analysis.{name}': {e}") from None


def planned_bytes(tables: dict[str, dict[str, Any]], trainable: int, tasks: int) -> int:
    """Memory the enabled analyses hold for ``trainable`` parameters and ``tasks`` tasks."""
    return sum(ANALYSES[name].planned_bytes(ANALYSES[name].Options.build(table), trainable, tasks)
               for name, table in tables.items() if table)


def build(tables: dict[str, dict[str, Any]], data: StageData) -> list[Observer]:
    """The observers the tables ask for; ``data`` holds batches of every task of the run."""
    out: list[Observer] = []
    for name, table in tables.items():
        if not table:
            continue
        cls = ANALYSES[name]
        out.append(cls(cls.Options.build(table), data))
    return out
