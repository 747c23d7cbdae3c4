"""Grid files: a run config (defaults + overrides) plus a ``[grid]`` table of sweep axes.

Expansion is plain, deterministic Python: backbones x regimes x methods x (each method's own
option lists, crossed only with that method) x seeds. The same cell always resolves to the same
config and therefore the same run id.

    [grid]
    seeds = [0, 1]
    methods = ["full_sft", "lora"]
    backbones = ["tiny-llama"]          # default: the file's backbone.name
    regimes = ["sequential"]            # default: the file's regime
    max_concurrent_trials = 2           # default: as many as resources allow
    max_failures = 1                    # Ray retries of a trial whose process died (resumes from its checkpoint)
    resources = { cpu = 1, gpu = 0 }    # per trial; default: 1 GPU if visible, else 1 CPU
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
from pathlib import Path
from typing import Any

from bench.config import ConfigError, RunConfig, from_dict, merge, parse_override, read_toml, resolve_sources, validate


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
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Grid:
    path: Path
    spec: GridSpec
    cells: list[RunConfig]

    @property
    def study_dir(self) -> Path:
        first = self.cells[0]
        return Path(first.results_dir) / first.study


def _option_axes(options: dict[str, Any]) -> list[dict[str, Any]]:
    keys = sorted(options)
    axes = [options[k] if isinstance(options[k], list) else [options[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def load_grid(path: str | Path, overrides: dict[str, Any] | None = None) -> Grid:
    """Read and expand a grid file; every cell is validated before anything runs."""
    where = str(path)
    data = merge(resolve_sources(read_toml(path), path), overrides or {})
    spec_data = data.pop("grid", {})
    spec = from_dict(GridSpec, spec_data, where, "grid.")
    base = from_dict(RunConfig, data, where)
    for table in ("method_options", "method_axes"):
        for m in getattr(spec, table):
            if m not in (spec.methods or [base.method.name]):
                raise ConfigError(f"{where}: key 'grid.{table}.{m}': {m!r} is not in grid.methods "
                                  f"({', '.join(spec.methods or [base.method.name])})")
    unknown_res = sorted(set(spec.resources) - {"cpu", "gpu"})
    if unknown_res:
        raise ConfigError(f"{where}: unknown key(s) grid.resources.{', '.join(unknown_res)}; allowed: cpu, gpu")
    cells = []
    for backbone, regime, method, axes, seed in itertools.product(
            spec.backbones or [base.backbone.name], spec.regimes or [base.regime],
            spec.methods or [base.method.name], _option_axes(spec.axes), spec.seeds or [base.seed]):
        for options, own_axes in itertools.product(_option_axes(spec.method_options.get(method, {})),
                                                   _option_axes(spec.method_axes.get(method, {}))):
            cell: dict[str, Any] = {"backbone": {"name": backbone}, "regime": regime, "seed": seed,
                                    "method": {"name": method, "options": {
                                        **(base.method.options if method == base.method.name else {}), **options}}}
            for key, value in {**axes, **own_axes}.items():
                cell = merge(cell, parse_override(f"{key}={json.dumps(value)}"))
            config = from_dict(RunConfig, merge(data, cell), where)
            cells.append(validate(config, where))
    ids = [c.run_id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: the grid expands to duplicate cells (same resolved config twice)")
    return Grid(Path(path), spec, cells)


def load_cells(path: str | Path, overrides: dict[str, Any] | None = None) -> list[RunConfig]:
    """The cells of a grid file, or the single run of a plain run file."""
    if "grid" in read_toml(path):
        return load_grid(path, overrides).cells
    from bench.config import load_run_config

    return [load_run_config(path, overrides)]
