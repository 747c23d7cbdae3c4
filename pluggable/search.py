"""Search domains an option declares for tuning, in its field's metadata (``search``).

A method's config field says where a tuner may look::

    rho: float = dataclasses.field(default=0.01, metadata={"help": "...", "search": log_uniform(1e-3, 0.1)})

The domains are plain data (no tuner is imported here): ``bench.launch.tuning`` maps each to Ray
Tune's own (``tune.loguniform``, ``tune.uniform``, ``tune.lograndint``, ``tune.randint``,
``tune.choice``), so random search and Optuna's TPE see the same space. ``str(domain)`` is what
``isobench methods`` prints. Every domain contains the option's default (checked by the tests),
so a tuned method can always land on its untuned self.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class Domain:
    """Where a tuner may draw one option's value from."""

    kind: str  # log_uniform | uniform | log_int | int_range | choice
    low: float = 0.0
    high: float = 0.0
    values: tuple[Any, ...] = ()

    def __str__(self) -> str:
        if self.kind == "choice":
            return f"choice({', '.join(map(repr, self.values))})"
        return f"{self.kind}({self.low:g}, {self.high:g})"

    def contains(self, value: Any) -> bool:
        """True when ``value`` is a point of this domain (an int domain's bounds included)."""
        if self.kind == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.kind in ("log_int", "int_range") and int(value) != value:
            return False
        return self.low <= value <= self.high


def _bounds(kind: str, low: float, high: float) -> Domain:
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{kind}({low!r}, {high!r}): allowed: finite bounds with low < high")
    if kind.startswith("log") and low <= 0:
        raise ValueError(f"{kind}({low!r}, {high!r}): allowed: a log domain's bounds > 0")
    return Domain(kind, low, high)


def log_uniform(low: float, high: float) -> Domain:
    """A float drawn uniformly in log space (learning rates, penalty strengths, fractions)."""
    return _bounds("log_uniform", low, high)


def uniform(low: float, high: float) -> Domain:
    """A float drawn uniformly (interpolation factors, decays)."""
    return _bounds("uniform", low, high)


def log_int(low: int, high: int) -> Domain:
    """An integer drawn uniformly in log space, bounds included (intervals, ranks, row counts)."""
    return _bounds("log_int", low, high)


def int_range(low: int, high: int) -> Domain:
    """An integer drawn uniformly, bounds included."""
    return _bounds("int_range", low, high)


def choice(*values: Any) -> Domain:
    """One of ``values``."""
    if not values:
        raise ValueError("choice(): allowed: at least one value")
    return Domain("choice", values=tuple(values))


def domains(cls: type) -> dict[str, Domain]:
    """The declared domain of every field of options class ``cls`` that has one, by field name."""
    return {f.name: f.metadata["search"] for f in dataclasses.fields(cls) if "search" in f.metadata}
