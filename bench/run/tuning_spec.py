"""What a tuning is (``[grid.tune]``) and what it chose (``tuned.toml``).

``[grid.tune]`` gives every (backbone, regime, method) of a grid the same budget::

    [grid.tune]
    trials = 16                  # trials per method, the same for every method
    seeds = [100]                # tuning seeds (default: one above the grid's largest seed)
    search = "random"            # random (Ray Tune's BasicVariantGenerator) | optuna (TPE)
    objective = "avg_norm"       # avg_norm | avg_norm - forgetting (bench.run.objective)
    search_seed = 0              # seed of the search algorithm's proposals

``isobench tune`` writes ``results/<study>/tuned.toml``: per (backbone, regime, method), the chosen
``train.lr`` and method options, the objective they reached on validation, the budget, and every
trial. ``isobench grid CONFIG --tuned FILE`` builds the grid's cells with those choices
(``Tuned.overrides``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.config import ConfigError, read_toml
from pluggable.options import Options, build

if TYPE_CHECKING:
    from bench.run.cell import Cell

OBJECTIVES = ("avg_norm", "avg_norm - forgetting")
SEARCHES = ("random", "optuna")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuneSpec(Options):
    trials: int = dataclasses.field(default=16, metadata={"help": "trials per method", "minimum": 1})
    seeds: list[int] = dataclasses.field(default_factory=list, metadata={
        "help": "tuning seeds; default: one above the grid's largest seed (never a seed of the final grid)"})
    search: str = dataclasses.field(default="random", metadata={"help": "search algorithm", "choices": SEARCHES})
    objective: str = dataclasses.field(default="avg_norm", metadata={"help": "what a trial maximizes on validation",
                                                                     "choices": OBJECTIVES})
    search_seed: int = dataclasses.field(default=0, metadata={"help": "seed of the search's proposals", "minimum": 0})

    def seeds_for(self, grid_seeds: list[int]) -> list[int]:
        return list(self.seeds) or [max(grid_seeds) + 1]


def tune_spec(table: dict[str, Any], grid_seeds: list[int], where: str) -> TuneSpec:
    """``[grid.tune]`` (``table``) built and checked against the grid's seeds: an unknown key or a
    bad value names ``grid.tune.<key>``."""
    tuned = build(TuneSpec, table, where=where, what="key", prefix="grid.tune.", error=ConfigError)
    overlap = sorted(set(tuned.seeds) & set(grid_seeds))
    if overlap:
        raise ConfigError(f"{where}: key 'grid.tune.seeds' shares seed(s) {overlap} with grid.seeds; allowed: seeds the "
                          f"final grid does not run, so that no choice is made on the seeds it reports")
    if tuned.search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError(f"{where}: grid.tune.search = 'optuna' needs the optuna package; install it with "
                              f"pip install -e '.[tune]', or use search = 'random'") from None
    return tuned


def key_of(backbone: str, regime: str, method: str) -> str:
    return f"{backbone} / {regime} / {method}"


@dataclasses.dataclass(frozen=True)
class Choice:
    """The chosen learning rate and method options of one (backbone, regime, method)."""

    backbone: str
    regime: str
    method: str
    lr: float
    options: dict[str, Any]
    objective: float
    trials: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Tuned:
    """A ``tuned.toml``: the budget every method had and what it chose."""

    path: Path
    budget: dict[str, Any]  # trials, seeds, search, objective, split
    choices: dict[str, Choice]

    def overrides(self, backbone: str, regime: str, method: str) -> dict[str, Any]:
        """The config keys a cell of this (backbone, regime, method) takes from the tuning: the
        learning rate, and the tuned method options, to be laid over the cell's other options
        (``bench.run.cells.load_grid``), as the trials laid their draws over them."""
        choice = self.choices.get(key_of(backbone, regime, method))
        if choice is None:
            return {}
        return {"train": {"lr": choice.lr}, "method": {"options": dict(choice.options)}}

    def check_covers(self, cells: list[Cell], where: str) -> None:
        """Every cell's (backbone, regime, method) was tuned: a grid half tuned is refused."""
        missing = sorted({key_of(c.backbone.name, c.regime, c.method_name) for c in cells} - set(self.choices))
        if missing:
            raise ConfigError(f"{where}: --tuned {self.path} has no choice for {', '.join(missing)}; allowed: the "
                              f"tuned.toml that `isobench tune` wrote for this grid file (it tunes "
                              f"{', '.join(sorted(self.choices)) or 'nothing'})")

    def caption(self) -> str:
        b = self.budget
        return (f"tuned on validation, {b['trials']} trials per method, same budget ({b['search']} search, objective "
                f"{b['objective']}, seeds {', '.join(map(str, b['seeds']))})")


def toml_value(value: Any) -> str:
    """A TOML literal of plain JSON-like data (numbers, strings, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return '"none"'
    raise TypeError(f"no TOML literal for {type(value).__name__}")


def tuned_toml(budget: dict[str, Any], choices: list[Choice], header: str) -> str:
    """The text of a ``tuned.toml`` (read back by ``read_tuned``)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k} = {toml_value(v)}" for k, v in budget.items()]
    for c in choices:
        lines += ["", "[[choice]]"] + [f"{k} = {toml_value(getattr(c, k))}" for k in
                                       ("backbone", "regime", "method", "lr", "options", "objective", "trials")]
    return "\n".join(lines) + "\n"


def read_tuned(path: str | Path) -> Tuned:
    """A ``tuned.toml``; a missing or malformed file raises ``ConfigError`` naming it."""
    path = Path(path)
    try:
        data = read_toml(path)
    except (ConfigError, OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--tuned {path}: cannot be read as a tuned.toml ({e})") from None
    try:
        budget = {k: data[k] for k in ("trials", "seeds", "search", "objective", "split")}
        choices = [Choice(c["backbone"], c["regime"], c["method"], float(c["lr"]), dict(c["options"]),
                          float(c["objective"]), list(c.get("trials", []))) for c in data.get("choice", [])]
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"--tuned {path}: not a tuned.toml written by `isobench tune` (missing or bad {e})") from None
    return Tuned(path, budget, {key_of(c.backbone, c.regime, c.method): c for c in choices})
