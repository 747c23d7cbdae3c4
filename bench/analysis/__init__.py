"""Analyses of training that any method can be run with (the config's ``[analysis]`` table):
read-only observers on the ``Trainer``. Each name maps to its observer class; an empty table
leaves the analysis off. ``bench.run.checks.parse_analyses`` parses the tables before any model
loads; ``build`` makes the observers from the parsed options."""

from __future__ import annotations

from typing import Any

from bench.analysis.conflict import GradientConflict
from bench.analysis.drift import ImportanceDrift
from bench.engine.data import StageData
from bench.engine.observers import Observer
from pluggable.options import Options

ANALYSES: dict[str, Any] = {"importance_drift": ImportanceDrift, "gradient_conflict": GradientConflict}


def planned_bytes(chosen: dict[str, Options], trainable: int, tasks: int) -> int:
    """Memory the enabled analyses (name -> parsed options) hold for ``trainable`` parameters and
    ``tasks`` tasks."""
    return sum(ANALYSES[name].planned_bytes(options, trainable, tasks) for name, options in chosen.items())


def planned_passes(chosen: dict[str, Options], steps: int, tasks: int) -> float:
    """Forward + backward passes of one training batch the enabled analyses add over ``steps``
    optimizer steps of a run of ``tasks`` tasks (the cost plan counts them as training work)."""
    return sum(ANALYSES[name].planned_passes(options, steps, tasks) for name, options in chosen.items())


def build(chosen: dict[str, Options], data: StageData) -> list[Observer]:
    """The observers of the enabled analyses (name -> parsed options); ``data`` holds batches of
    every task of the run."""
    return [ANALYSES[name](options, data) for name, options in chosen.items()]
