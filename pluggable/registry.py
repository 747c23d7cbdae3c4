"""One registry idiom for every pluggable kind (methods, tasks, backbones).

A ``Registry`` maps names to entries with explicit registration (no directory scanning that
hides import errors), rejects duplicate and malformed names, and on a miss suggests close names
(lm-eval's registry, without its bulk).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")


class Registry(Generic[T]):
    """Name -> entry, in registration order. ``kind`` names the entries in error messages."""

    def __init__(self, kind: str, pattern: re.Pattern[str] = _NAME) -> None:
        self.kind, self.pattern = kind, pattern
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; a duplicate or malformed name is an error."""
        if not self.pattern.match(name):
            raise ValueError(f"{self.kind} name {name!r} must match {self.pattern.pattern}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r})")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests that register a throw-away entry clean up with this)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; unknown names list close matches and every name."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Registered: {', '.join(self._entries)}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
