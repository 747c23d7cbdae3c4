"""Typed options from a plain table: one implementation for the run config, every method's
options and every analysis's options.

``build(cls, table)`` makes a frozen dataclass ``cls`` from a dict read from TOML (or ``--set``):

- an unknown key is refused with the allowed keys and the closest ones ("did you mean");
- every value is checked against the field's annotation: ``bool`` is not a number, ``int`` is
  not a ``bool``, a ``float`` must be finite (an ``int`` is widened), ``tuple[str, ...]`` and
  ``list[T]`` are checked item by item, ``X | None`` admits null, a nested dataclass is built
  recursively with dotted keys, ``Any`` and tables are checked to hold finite numbers only;
- a field's metadata may name ``choices`` and a ``minimum``;
- then ``cls(**values)`` runs, so ``__post_init__`` checks cross-field rules.

Errors are raised as ``error`` (default ``ValueError``) with ``where: `` in front, and say
``bad value V for <what> 'K'; allowed: ...``: the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any


def close_names(name: str, names: list[str]) -> str:
    """`` (did you mean 'a'?)`` for the names closest to ``name``, or the empty string."""
    close = difflib.get_close_matches(name, names, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def _finite_problem(value: Any) -> str | None:
    """NaN and inf are refused in every number, also inside lists and tables."""
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if isinstance(value, list | tuple):
        return next((p for v in value if (p := _finite_problem(v))), None)
    if isinstance(value, Mapping):
        return next((p for v in value.values() if (p := _finite_problem(v))), None)
    return None


def check_value(value: Any, tp: Any) -> tuple[Any, str | None]:
    """``(value, None)`` when ``value`` fits annotation ``tp`` (an int widened to float, also
    inside a ``list[float]``), else ``(value, what was allowed)``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and value is None:
            return value, None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            value, problem = check_value(value, inner[0])
            return value, problem and (f"null or {problem}" if type(None) in args else problem)
        return value, _finite_problem(value)
    if tp is bool:
        return value, None if isinstance(value, bool) else "true or false"
    if tp is int:
        return value, None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return (float(value), None) if ok else (value, "a finite number")
    if tp is str:
        return value, None if isinstance(value, str) else "a string"
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return value, "a list"
        inner_tp = args[0] if args else Any
        checked = [check_value(v, inner_tp) for v in value]
        problem = next((p for _, p in checked if p), None)
        items = [v for v, _ in checked]
        return (items if origin is list else value), problem and f"a list of {problem.removeprefix('a ')}s"
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            return value, "a table"
        return dict(value), _finite_problem(value)
    return value, _finite_problem(value)


def build(cls: type, table: Any, *, where: str = "", what: str = "option", prefix: str = "",
          renamed: Mapping[str, str] | None = None, error: type[Exception] = ValueError) -> Any:
    """``cls(**table)`` with every key and value checked first (see the module docstring).
    ``prefix`` is prepended to key names in messages (dotted keys of nested tables);
    ``renamed`` maps keys of earlier versions to what replaced them."""
    lead = f"{where}: " if where else ""
    if not isinstance(table, Mapping):
        raise error(f"{lead}{what} {prefix.rstrip('.') or '(top)'!r} must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in sorted(set(table) - set(fields)):
        if renamed and prefix + key in renamed:
            raise error(f"{lead}{what} {prefix + key!r} was replaced by {renamed[prefix + key]}")
    unknown = sorted(set(table) - set(fields))
    if unknown:
        hint = close_names(unknown[0], list(fields))
        scope = f" in {prefix.rstrip('.')}" if prefix else " in the top level" if what == "key" else ""
        raise error(f"{lead}unknown {what}(s) {', '.join(prefix + k for k in unknown)}{hint}; "
                    f"allowed{scope}: {', '.join(fields) or '(none)'}")
    values = {}
    for name, value in table.items():
        key, tp, meta = prefix + name, hints[name], fields[name].metadata
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            values[name] = build(tp, value, where=where, what=what, prefix=key + ".", renamed=renamed, error=error)
            continue
        value, problem = check_value(value, tp)
        if problem is None and meta.get("choices") and value not in meta["choices"]:
            problem = ", ".join(map(repr, meta["choices"]))
        if problem is None and meta.get("minimum") is not None and value < meta["minimum"]:
            problem = f">= {meta['minimum']}"
        if problem:
            raise error(f"{lead}bad value {value!r} for {what} {key!r}; allowed: {problem}")
        values[name] = value
    try:
        return cls(**values)
    except error as e:
        if not lead or str(e).startswith(lead):
            raise
        raise error(f"{lead}{e}") from None


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of every field of ``cls``, for listings such as ``isobench methods``."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((f.name, str(f.type), default, f.metadata.get("help", "")))
    return rows


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """Base of a frozen options dataclass (a method's, an analysis's): ``build`` from a table,
    and ``check`` for the rules of ``__post_init__``."""

    def check(self, condition: bool, field: str, allowed: str) -> None:
        """Raise ``ValueError`` naming the field, its value and what is allowed."""
        if not condition:
            raise ValueError(f"{type(self).__qualname__}: bad value {getattr(self, field)!r} for option "
                             f"{field!r}; allowed: {allowed}")

    @classmethod
    def build(cls, table: Mapping[str, Any], where: str = "") -> Any:
        """From a config table, every key and value checked (``build`` above)."""
        return build(cls, table, where=where)


def as_table(options: Any) -> dict[str, Any]:
    """Every field of a built options dataclass as plain JSON data (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(options)))


def non_default(options: Any) -> dict[str, Any]:
    """The fields of a built options dataclass whose value differs from the field's default, as
    plain JSON data: what a table must say to build ``options`` again. ``{}``, ``{rho = 0.01}``
    and ``{rho = 0.01, beta = 0.9}`` built at their defaults all give ``{}``."""
    table = as_table(options)
    out = {}
    for f in dataclasses.fields(options):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # a required field is always said
            out[f.name] = table[f.name]
            continue
        if table[f.name] != json.loads(json.dumps(default)):
            out[f.name] = table[f.name]
    return out
