"""Grid files: a run config (defaults + overrides) plus a ``[grid]`` table of sweep axes.

Expansion is plain, deterministic Python: backbones x regimes x methods x (each method's own
option lists, crossed only with that method) x seeds. A method that plans its own stages
(``Method.plans_stages``, e.g. CPI-FT) is crossed with the ``multistage`` regime only, and one
that acts between stages (``Method.min_stages``: replay, EWC) only with regimes that make enough.
The same cell always resolves to the same
config and therefore the same run id.

    [grid]
    seeds = [0, 1]
    methods = ["full_sft", "lora"]
    backbones = ["tiny-llama"]          # default: the file's backbone.name
    regimes = ["sequential"]            # default: the file's regime
    max_concurrent_trials = 2           # default: as many as resources allow
    max_failures = 1                    # Ray retries of a trial whose process died (resumes from its checkpoint)
    resources = { cpu = 1, gpu = 0 }    # per trial; default: 1 GPU (if visible) and 1 CPU per train.workers
    device_memory = "80GiB"             # the GPU the memory plan is for (default: the visible one)
    [grid.method_options.lora]
    r = [8, 16]                         # a list = an axis; a scalar = a fixed option
    target_modules = [["q_proj", "v_proj"]]   # a list-valued option: wrapped in one more list
    [grid.axes]
    "train.lr" = [1e-3, 3e-4]           # any dotted config key, crossed with everything
    [grid.method_axes.lora]
    "train.lr" = [1e-3]                 # dotted keys for one method only (e.g. LoRA's own LR)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import methods
from bench.config import (
    ConfigError,
    RunConfig,
    check_unique,
    expand_home,
    from_dict,
    merge,
    parse_override,
    read_toml,
    resolve_sources,
)
from bench.run.cell import Cell, resolve
from bench.run.checks import stage_problem
from bench.run.memory_plan import parse_size
from bench.run.tuning_spec import Tuned, tune_spec


@dataclasses.dataclass(frozen=True)
class GridSpec:
    seeds: list[int] = dataclasses.field(default_factory=list)
    methods: list[str] = dataclasses.field(default_factory=list)
    backbones: list[str] = dataclasses.field(default_factory=list)
    regimes: list[str] = dataclasses.field(default_factory=list)
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    axes: dict[str, Any] = dataclasses.field(default_factory=dict)
    method_axes: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_concurrent_trials: int = 0
    max_failures: int = 1
    loggers: list[str] = dataclasses.field(default_factory=list)  # mlflow, wandb (tensorboard is always on)
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    device_memory: str = ""
    tune: dict[str, Any] = dataclasses.field(default_factory=dict)  # [grid.tune]: bench.run.tuning_spec.TuneSpec


@dataclasses.dataclass(frozen=True)
class Grid:
    path: Path
    spec: GridSpec
    cells: list[Cell]
    tuned: Tuned | None = None  # the choices of ``isobench tune`` the cells were built with (--tuned)

    @property
    def study_dir(self) -> Path:
        first = self.cells[0]
        return Path(first.results_dir) / first.study


def _option_axes(options: dict[str, Any]) -> list[dict[str, Any]]:
    keys = sorted(options)
    axes = [options[k] if isinstance(options[k], list) else [options[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


AXES = {"methods": "method.name", "backbones": "backbone.name", "regimes": "regime", "seeds": "seed"}


def dotted_keys(table: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"train": {"lr": 1}}`` -> ``["train.lr"]`` (a replaced table counts as its own key)."""
    out = []
    for k, v in table.items():
        out += dotted_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def check_option_overrides(spec: GridSpec, file_data: dict[str, Any], overrides: dict[str, Any],
                           where: str) -> None:
    """``--set method.options.X`` reaches the cells of ``method.name`` only, and loses to a
    ``[grid.method_options]`` or ``[grid.method_axes]`` entry of X: where it would be dropped or
    overridden in some cell, it is refused, naming the key that sets X in those cells."""
    options = overrides.get("method", {}).get("options")
    if not isinstance(options, dict) or not options:
        return
    name = overrides.get("method", {}).get("name", file_data.get("method", {}).get("name", "full_sft"))
    for method in spec.methods or [name]:
        per_method = {**spec.method_options.get(method, {}),
                      **{k.removeprefix("method.options."): v for k, v in spec.method_axes.get(method, {}).items()}}
        for option in options:
            if method != name or option in per_method:
                why = ("its cells take their options from the grid" if method != name
                       else f"grid.method_options.{method}.{option} sets it in every cell")
                raise ConfigError(f"{where}: --set method.options.{option}=... would not reach method {method!r}'s "
                                  f"cells ({why}); set --set grid.method_options.{method}.{option}=... instead")


def check_spec(spec: GridSpec, spec_data: dict[str, Any], file_data: dict[str, Any],
               overrides: dict[str, Any], where: str) -> None:
    """Grid keys that would silently do something else than what was written."""
    for axis, key in AXES.items():
        values = getattr(spec, axis)
        if axis in spec_data and not values:
            raise ConfigError(f"{where}: key 'grid.{axis}' is empty; allowed: a non-empty list, or leave it out "
                              f"to use {key} of the file")
        check_unique(values, f"grid.{axis}", where)
    for axis in ("methods", "backbones"):
        for name in getattr(spec, axis):
            if not isinstance(name, str):
                raise ConfigError(f"{where}: bad value {name!r} in key 'grid.{axis}'; allowed: names")
    for method in spec.methods:
        try:
            methods.get(method)
        except KeyError as e:
            raise ConfigError(f"{where}: key 'grid.methods': {e.args[0]}") from None
    written = file_data.get("method", {}).get("name")
    file_methods = file_data.get("grid", {}).get("methods")
    if isinstance(written, str):
        try:
            methods.get(written)
        except KeyError as e:
            raise ConfigError(f"{where}: key 'method.name': {e.args[0]}") from None
    if file_methods and written is not None and written not in file_methods:
        raise ConfigError(f"{where}: key 'method.name' = {written!r} is not in grid.methods "
                          f"({', '.join(file_methods)}): every cell takes its method from grid.methods; remove "
                          f"[method].name or add it to grid.methods")
    taken = {key for axis, key in AXES.items() if getattr(spec, axis)} | set(spec.axes)
    for key in dotted_keys({k: v for k, v in overrides.items() if k != "grid"}):
        if key in taken or any(key.startswith(t + ".") for t in taken):
            raise ConfigError(f"{where}: --set {key}=... would be overridden in every cell by the [grid] table "
                              f"(it sets {key}); override the grid axis instead, e.g. --set 'grid.methods=[\"...\"]', "
                              f"or --set 'grid.axes={{}}' to replace a table")
    check_option_overrides(spec, file_data, overrides, where)
    for res, count in spec.resources.items():
        if res not in ("cpu", "gpu"):
            raise ConfigError(f"{where}: unknown key grid.resources.{res}; allowed: cpu, gpu")
        if isinstance(count, bool) or not isinstance(count, int | float) or not math.isfinite(count) or count < 0:
            raise ConfigError(f"{where}: bad value {count!r} for key 'grid.resources.{res}'; allowed: a number >= 0")
    if spec.device_memory:
        try:
            parse_size(spec.device_memory)
        except ValueError as e:
            raise ConfigError(f"{where}: bad value {spec.device_memory!r} for key 'grid.device_memory'; "
                              f"allowed: e.g. 80GiB, 80GB, 81920MiB") from e
    for name in spec.loggers:
        if name not in ("tensorboard", "mlflow", "wandb"):
            raise ConfigError(f"{where}: bad value {name!r} in key 'grid.loggers'; allowed: tensorboard, mlflow, wandb")
    for key in ("max_concurrent_trials", "max_failures"):
        if getattr(spec, key) < 0:
            raise ConfigError(f"{where}: bad value {getattr(spec, key)!r} for key 'grid.{key}'; allowed: >= 0")
    tune_spec(spec.tune, spec.seeds, where)


def load_grid(path: str | Path, overrides: dict[str, Any] | None = None, tuned: Tuned | None = None) -> Grid:
    """Read and expand a grid file; every cell is validated before anything runs. With ``tuned``
    (``isobench grid --tuned``), each cell of a (backbone, regime, method) that was tuned takes
    the chosen learning rate and options over the file's."""
    where = str(path)
    file_data = resolve_sources(read_toml(path), path)
    data = expand_home(merge(file_data, overrides or {}))
    spec_data = data.pop("grid", {})
    spec = from_dict(GridSpec, spec_data, where, "grid.")
    check_spec(spec, spec_data, file_data, overrides or {}, where)
    base = from_dict(RunConfig, data, where)
    for table in ("method_options", "method_axes"):
        for m in getattr(spec, table):
            if m not in (spec.methods or [base.method.name]):
                raise ConfigError(f"{where}: key 'grid.{table}.{m}': {m!r} is not in grid.methods "
                                  f"({', '.join(spec.methods or [base.method.name])}); drop it, or replace the "
                                  f"table with --set 'grid.{table}={{}}'")
    regimes, grid_methods = spec.regimes or [base.regime], spec.methods or [base.method.name]
    for method in grid_methods:
        if methods.get(method).plans_stages and "multistage" not in regimes:
            raise ConfigError(f"{where}: method {method!r} plans its own stages and runs only in the 'multistage' "
                              f"regime; allowed: add 'multistage' to grid.regimes (now {', '.join(regimes)})")
    cells, skipped = [], {}
    for backbone, regime, method, axes, seed in itertools.product(
            spec.backbones or [base.backbone.name], regimes, grid_methods, _option_axes(spec.axes),
            spec.seeds or [base.seed]):
        if methods.get(method).plans_stages and regime != "multistage":
            continue  # such a method is crossed with the multistage regime only
        for options, own_axes in itertools.product(_option_axes(spec.method_options.get(method, {})),
                                                   _option_axes(spec.method_axes.get(method, {}))):
            cell: dict[str, Any] = {"backbone": {"name": backbone}, "regime": regime, "seed": seed,
                                    "method": {"name": method, "options": {
                                        **(base.method.options if method == base.method.name else {}), **options}}}
            for key, value in {**axes, **own_axes}.items():
                cell = merge(cell, parse_override(f"{key}={json.dumps(value)}"))
            if tuned is not None:  # the choice over the file's options: a key it did not tune stays
                chosen = tuned.overrides(backbone, regime, method)
                cell = merge(cell, {k: v for k, v in chosen.items() if k != "method"})
                cell["method"]["options"] = {**cell["method"]["options"], **chosen.get("method", {}).get("options", {})}
            config = from_dict(RunConfig, expand_home(merge(data, cell)), where)
            if (problem := stage_problem(config)) is not None:
                skipped.setdefault(method, problem)
                continue  # full SFT by construction in this regime: not crossed with it
            cells.append(resolve(config, where))
    for method, why in skipped.items():
        if not any(c.method_name == method for c in cells):
            raise ConfigError(f"{where}: grid.methods names {method!r}, but no regime of the grid suits it: {why}")
    if tuned is not None:
        tuned.check_covers(cells, where)
    ids = [c.run_id for c in cells]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"{where}: the grid expands to duplicate cells (the same resolved config twice: "
                          f"{', '.join(twice)}; an option at its default value is the same cell as the option "
                          f"left unset)")
    return Grid(Path(path), spec, cells, tuned)


def load_cells(path: str | Path, overrides: dict[str, Any] | None = None) -> list[Cell]:
    """The cells of a grid file, or the single run of a plain run file."""
    if "grid" in read_toml(path):
        return load_grid(path, overrides).cells
    return [load_run_config(path, overrides)]


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Cell:
    """Read a run config file (no ``[grid]`` table), apply overrides, resolve it into its cell."""
    data = resolve_sources(read_toml(path), path)
    if "grid" in data:
        raise ConfigError(f"{path}: has a [grid] table: run it with 'isobench grid {path}'")
    data = expand_home(merge(data, overrides or {}))
    return resolve(from_dict(RunConfig, data, str(path)), str(path))
