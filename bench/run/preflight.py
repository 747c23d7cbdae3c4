"""May this cell run here? One place for the checks that depend on the machine rather than on
the config: the precision policy's optimizer package, the memory plan against the device, and
a results folder that can be written. ``isobench run``, ``isobench grid`` and its dry run ask
``preflight``, before any model loads; the config's own checks ran when the cell was resolved
(``bench.run.cell.resolve``)."""

from __future__ import annotations

import dataclasses

from bench.engine.precision import check_cpu_bf16_setting, missing_package
from bench.run.cell import Cell
from bench.run.memory_plan import DoesNotFit, Plan, check_fits, device_memory, parse_size


@dataclasses.dataclass(frozen=True)
class Preflight:
    """What ``preflight`` found: the problems (empty: the cell may run here) and the memory plan
    (None when it was not asked for or the backbone's shape is unknown offline)."""

    problems: list[str]
    plan: Plan | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def device_bytes(given: str | None, fallback: str = "") -> int | None:
    """The accelerator memory the memory plan is checked against: ``given`` (``--device-memory``),
    else the visible GPU's, else ``fallback`` (a grid's ``device_memory``), else None (a CPU
    machine: the plan is printed, not checked). A bad size raises ``ValueError``."""
    if given:
        return parse_size(given)
    found = device_memory()
    return found if found is not None else (parse_size(fallback) if fallback else None)


def environment_problems() -> list[str]:
    """Settings of this process's environment that no cell can run with (checked before any
    config loads)."""
    try:
        check_cpu_bf16_setting()
    except ValueError as e:
        return [str(e)]
    return []


def preflight(cell: Cell, device_bytes: int | None = None, *, memory: bool = True, writable: bool = True) -> Preflight:
    """Why ``cell`` cannot run on this machine: a missing optimizer package; with ``memory``, a
    memory plan over ``device_bytes``; with ``writable``, a results folder that cannot be
    created. ``writable`` creates the run folder (nothing is written in it)."""
    problems, plan = [], None
    if (why := missing_package(cell.train.precision)) is not None:
        problems.append(why)
    if memory:
        try:
            plan = check_fits(cell, device_bytes)
        except DoesNotFit as e:
            problems.append(str(e))
    if writable and not problems:
        try:
            cell.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            problems.append(f"cannot write results under {cell.run_dir}: {e.strerror or e}")
    return Preflight(problems, plan)
