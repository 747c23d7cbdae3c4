"""The method registry (``pluggable.registry.Registry``) and ``build``: a method's options are
validated through its frozen config dataclass before any model exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from methods.base import Method, MethodConfig
from pluggable import options as typed
from pluggable import search
from pluggable.registry import Registry

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


def build(name: str, options: dict[str, Any] | MethodConfig | None = None) -> Method:
    """Instantiate a method from its parsed config, or from plain options, validated
    (``pluggable.options``) before anything else happens."""
    cls = get(name)
    if isinstance(options, cls.Config):
        return cls(options)
    if isinstance(options, MethodConfig):
        raise TypeError(f"method {name!r} takes a {cls.Config.__qualname__}, not a {type(options).__qualname__}")
    return cls(typed.build(cls.Config, dict(options or {}), where=f"method {name!r}"))


def describe(name: str) -> list[tuple[str, str, Any, str]]:
    """(option, type, default, help) rows of a method's config, for ``isobench methods``."""
    return typed.describe(get(name).Config)


def search_space(name: str) -> dict[str, search.Domain]:
    """The domains a tuner searches for method ``name``: each option that declares one (its field's
    ``search`` metadata), by option name, plus ``train.lr`` when the method narrows the learning
    rate's domain (``Method.lr_search``; otherwise the run config's own domain applies)."""
    cls = get(name)
    space = dict(search.domains(cls.Config))
    if cls.lr_search is not None:
        space["train.lr"] = cls.lr_search
    return space
