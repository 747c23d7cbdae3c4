"""Name -> method class registry with explicit registration (no directory scanning).

``register`` rejects duplicate and malformed names; ``get`` suggests close names on a miss;
``build`` validates options through the method's frozen config dataclass before any model exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, TypeVar

from methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
M = TypeVar("M", bound=type[Method])


def register(name: str):  # noqa: ANN201 - returns a class decorator
    """Class decorator: ``@register("epi")`` makes the class buildable by that name."""
    if not _NAME.match(name):
        raise ValueError(f"method name {name!r} must match {_NAME.pattern}")

    def decorate(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__module__}")
        if not issubclass(cls, Method):
            raise TypeError(f"{cls.__qualname__} must subclass methods.base.Method")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def names() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> type[Method]:
    """The class registered as ``name``; unknown names list close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown method {name!r}.{hint} Registered: {', '.join(_REGISTRY)}") from None


def build(name: str, options: dict[str, Any] | None = None) -> Method:
    """Instantiate a method from plain options, validated before anything else happens."""
    cls = get(name)
    options = dict(options or {})
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"method {name!r}: unknown option(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(fields)) or '(none)'}")
    return cls(cls.Config(**options))


def describe(name: str) -> list[tuple[str, str, Any, str]]:
    """(option, type, default, help) rows of a method's config, for ``isobench methods``."""
    rows = []
    for f in dataclasses.fields(get(name).Config):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((f.name, str(f.type), default, f.metadata.get("help", "")))
    return rows
