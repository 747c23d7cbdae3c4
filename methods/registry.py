"""One registry idiom for every pluggable kind (methods here; tasks and backbones in ``bench/``).

A ``Registry`` maps names to entries with explicit registration (no directory scanning that
hides import errors), rejects duplicate and malformed names, and on a miss suggests close names
(lm-eval's registry, without its bulk). The method registry below adds ``build``: options are
validated through the method's frozen config dataclass before any model exists.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from core import options as typed
from methods.base import Method

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


METHODS: Registry[type[Method]] = Registry("method", re.compile(r"^[a-z][a-z0-9_]*$"))
M = TypeVar("M", bound=type[Method])


def register(name: str) -> Callable[[M], M]:
    """Class decorator: ``@register("epi")`` makes the class buildable by that name."""
    if not METHODS.pattern.match(name):
        raise ValueError(f"method name {name!r} must match {METHODS.pattern.pattern}")

    def decorate(cls: M) -> M:
        if not issubclass(cls, Method):
            raise TypeError(f"{cls.__qualname__} must subclass methods.base.Method")
        METHODS.add(name, cls)
        cls.name = name
        return cls

    return decorate


def names() -> list[str]:
    """Registered method names, in registration order."""
    return METHODS.names()


def get(name: str) -> type[Method]:
    return METHODS.get(name)


def build(name: str, options: dict[str, Any] | None = None) -> Method:
    """Instantiate a method from plain options, validated (``core.options``) before anything else happens."""
    cls = get(name)
    return cls(typed.build(cls.Config, dict(options or {}), where=f"method {name!r}"))


def describe(name: str) -> list[tuple[str, str, Any, str]]:
    """(option, type, default, help) rows of a method's config, for ``isobench methods``."""
    return typed.describe(get(name).Config)
