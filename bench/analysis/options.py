"""Options of an analysis: a frozen dataclass per analysis, validated like a method's options
(a bad value names the option, the value and what is allowed)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    def check(self, condition: bool, field: str, allowed: str) -> None:
        if not condition:
            raise ValueError(f"bad value {getattr(self, field)!r} for option {field!r}; allowed: {allowed}")

    @classmethod
    def build(cls, table: dict[str, Any]) -> Options:
        """From a config table; unknown keys are refused with the allowed ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(table) - set(names))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
        for f in dataclasses.fields(cls):
            value = table.get(f.name, f.default)
            kind = type(f.default)
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float) if kind is float else kind):
                raise ValueError(f"bad value {value!r} for option {f.name!r}; allowed: a {kind.__name__}")
        return cls(**table)
