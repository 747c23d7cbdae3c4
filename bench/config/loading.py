"""Loading a run config: TOML files and ``--set`` overrides -> ``RunConfig``, through the one
typed-options builder (``pluggable.options``). An unknown key or a bad value raises ``ConfigError``
naming the file, the dotted key and what is allowed."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from bench.config.schema import RENAMED, ConfigError
from pluggable import options


def check_unique(values: list[Any], key: str, where: str) -> None:
    """A list whose duplicates would misalign results (tasks, methods, seeds...)."""
    seen = [v for i, v in enumerate(values) if v in values[:i]]
    if seen:
        raise ConfigError(f"{where}: key {key!r} lists {seen[0]!r} more than once; allowed: distinct values")


def from_dict(cls: type, data: dict[str, Any], where: str, prefix: str = "") -> Any:
    """Build ``cls`` from a plain dict, rejecting unknown keys (with close names) and bad values."""
    return options.build(cls, data, where=where, what="key", prefix=prefix, renamed=RENAMED, error=ConfigError)


class Replace:
    """An override value that replaces a table instead of merging into it."""

    def __init__(self, value: Any) -> None:
        self.value = value


def merge(base: dict[str, Any], override: dict[str, Any], keep_replace: bool = False) -> dict[str, Any]:
    """Recursive dict merge; tables merge, everything else (lists included) is replaced, and a
    ``Replace`` value replaces a table whole (``keep_replace``: when combining overrides with
    each other, keep the marker for the merge into the file's data)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Replace):
            out[k] = v if keep_replace else v.value
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = merge(out[k], v, keep_replace)
        else:
            out[k] = v if keep_replace or not isinstance(v, dict) else merge({}, v)
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def expand_home(data: dict[str, Any]) -> dict[str, Any]:
    """``~`` in ``results_dir`` and in local ``tasks.sources`` expanded, once, here: every user of
    these paths (run folders, task data, the base-score cache) then sees the same folder."""
    out = dict(data)
    if isinstance(out.get("results_dir"), str):
        out["results_dir"] = os.path.expanduser(out["results_dir"])
    tasks = out.get("tasks")
    if isinstance(tasks, dict) and isinstance(tasks.get("sources"), dict):
        out["tasks"] = {**tasks, "sources": {t: os.path.expanduser(v) if isinstance(v, str) and v != "hub" else v
                                             for t, v in tasks["sources"].items()}}
    return out


def resolve_sources(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Make relative ``tasks.sources`` paths absolute, relative to the config file's folder."""
    sources = data.get("tasks", {}).get("sources")
    if not isinstance(sources, dict):
        return data
    data = expand_home(data)
    sources = data["tasks"]["sources"]
    base = Path(path).resolve().parent
    fixed = {t: s if s == "hub" or not isinstance(s, str) or Path(s).is_absolute() else str((base / s).resolve())
             for t, s in sources.items()}
    return merge(data, {"tasks": {"sources": fixed}})


def parse_override(text: str) -> dict[str, Any]:
    """``train.lr=1e-4`` -> ``{"train": {"lr": 0.0001}}`` (the value is parsed as TOML). An
    inline table (``grid.method_options={}``) replaces the table at that key whole."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: Any = Replace(value) if isinstance(value, dict) else value
    for part in reversed(key.strip().split(".")):
        out = {part: out}
    return out
