"""``isobench tune``: every method of a grid searched on the validation split, on the same budget.

For each (backbone, regime, method) of the grid one Ray Tune ``Tuner`` runs ``[grid.tune]``'s
``trials`` trials over the method's declared search space (``bench.run.tuning_space``: the
learning rate and each option with a domain), with the same search algorithm (random search by
default, Optuna's TPE with ``search = "optuna"``), the same steps per stage and the same tuning
seeds; only the space differs, and each method declares its own.

A trial is an ordinary cell: the grid's first cell of that (backbone, regime, method) with the
drawn values, the tuning seed, and ``eval.split = "validation"``, in the study
``<study>-tuning``. Its result.json is written like any run's, so a killed tune resumes like a
grid, and a trial whose resolved cell was already run (the same values, spelled any way) reuses
that result instead of training again. No tuning trial evaluates the test split.

The chosen values (the highest objective, the first on a tie) and every trial go to
``results/<study>/tuned.toml`` (``bench.run.tuning_spec``), which ``isobench grid --tuned`` reads.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.backbones.registry import prepare_backbone
from bench.config import ConfigError, RunConfig, from_dict, to_dict
from bench.engine.precision import CPU_BF16_ENV, cpu_bf16
from bench.files import atomic_write
from bench.launch.dispatch import check_resources, resources, run_cell
from bench.launch.ray_session import ray_session
from bench.launch.study_lock import study_lock
from bench.run.base_scores import base_key, ensure_base_scores
from bench.run.cell import Cell, resolve
from bench.run.cells import Grid
from bench.run.objective import objective
from bench.run.tuning_space import space_of
from bench.run.tuning_spec import Choice, TuneSpec, key_of, tune_spec, tuned_toml
from pluggable.search import Domain

FAILED = -1e9  # a failed trial's objective for the search: below any score


def to_tune(domain: Domain) -> Any:
    """The Ray Tune sampler of a declared domain (integer bounds included)."""
    from ray import tune

    if domain.kind == "log_uniform":
        return tune.loguniform(domain.low, domain.high)
    if domain.kind == "uniform":
        return tune.uniform(domain.low, domain.high)
    if domain.kind == "log_int":
        return tune.lograndint(int(domain.low), int(domain.high) + 1)
    if domain.kind == "int_range":
        return tune.randint(int(domain.low), int(domain.high) + 1)
    return tune.choice(list(domain.values))


def safe(key: str) -> str:
    """A dotted config key as a flat name for Tune's config (``train.lr`` -> ``train__lr``)."""
    return key.replace(".", "__")


def trial_cell(base: Cell, values: dict[str, Any], seed: int, where: str = "<tuning trial>") -> Cell:
    """``base`` with the drawn ``values`` (dotted keys), ``seed``, the validation split, in the study
    ``<study>-tuning``."""
    config = to_dict(base.config)
    config["seed"], config["study"] = seed, tuning_study(base.study)
    config["eval"] = {**config.get("eval", {}), "split": "validation"}
    for key, value in values.items():
        section, *rest = key.split(".")
        if section == "method":
            config["method"]["options"] = {**config["method"].get("options", {}), rest[-1]: value}
        else:
            config[section] = {**config.get(section, {}), rest[0]: value}
    return resolve(from_dict(RunConfig, config, where), where)


def tuning_study(study: str) -> str:
    return f"{study}-tuning"


def _trial(space: dict[str, Any]) -> None:
    """Ray Tune function trainable: one draw, run on every tuning seed; reports the mean objective."""
    from ray import tune

    base = resolve(from_dict(RunConfig, space["base"], "<tuning base>"), "<tuning base>")
    values = {key: space[safe(key)] for key in space["keys"]}
    scores, run_ids = [], []
    for seed in space["seeds"]:
        try:
            cell = trial_cell(base, values, seed)
        except ConfigError as e:  # a draw the method's own checks refuse (e.g. two bounds crossed): a failed trial
            print(f"[tune] a draw refused: {e}", file=sys.stderr)
            scores.append(FAILED)
            continue
        run_ids.append(cell.run_id)
        result = run_cell(cell, space["resources"], progress=False)
        value = objective(result, space["objective"])
        scores.append(FAILED if value is None or not math.isfinite(value) else value)
    tune.report({"objective": sum(scores) / len(scores), "run_ids": ",".join(run_ids),
                 "failed": float(any(s == FAILED for s in scores))})


def search_algorithm(spec: TuneSpec) -> Any:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=spec.search_seed)
    return BasicVariantGenerator(random_state=spec.search_seed)


def bases(grid: Grid) -> dict[str, Cell]:
    """The first cell of every (backbone, regime, method) of the grid: what its trials start from."""
    out: dict[str, Cell] = {}
    for c in grid.cells:
        out.setdefault(key_of(c.backbone.name, c.regime, c.method_name), c)
    return out


def run_tune(grid: Grid, address: str | None = None, verbose: bool = False) -> Path:
    """Tune every (backbone, regime, method) of ``grid``; returns the path of ``tuned.toml``."""
    from ray import tune

    spec = tune_spec(grid.spec.tune, grid.spec.seeds, str(grid.path))
    seeds = spec.seeds_for(sorted({c.seed for c in grid.cells}))
    address = address or os.environ.get("RAY_ADDRESS")
    starts = bases(grid)
    per_trial = {k: resources(c, grid.spec.resources) for k, c in starts.items()}
    for r in per_trial.values():
        check_resources(r, address)
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    os.environ.setdefault(CPU_BF16_ENV, "1" if cpu_bf16() else "0")
    study_dir = grid.study_dir.resolve()
    tuning_dir = study_dir.parent / tuning_study(grid.cells[0].study)
    choices: list[Choice] = []
    with study_lock(tuning_dir):
        for backbone in sorted({c.backbone.name for c in starts.values()}):
            prepare_backbone(backbone)
        firsts = {base_key(cell): cell for cell in (trial_cell(c, {}, seeds[0]) for c in starts.values())}
        for cell in firsts.values():
            print(f"[tune] base scores of {cell.backbone.name} on validation", file=sys.stderr, flush=True)
            ensure_base_scores(cell)
        with ray_session(tuning_dir, address, verbose):
            for key, base in starts.items():
                choices.append(_tune_one(tune, key, base, spec, seeds, per_trial[key], tuning_dir, verbose,
                                         grid.spec.max_concurrent_trials))
    budget = {"trials": spec.trials, "seeds": seeds, "search": spec.search, "objective": spec.objective,
              "split": "validation", "search_seed": spec.search_seed}
    path = study_dir / "tuned.toml"
    header = (f"isobench tune {grid.path}: chosen on the validation split, {spec.trials} trials per method, the same "
              f"search ({spec.search}) and seeds for every method.\nUse: isobench grid {grid.path} --tuned {path}")
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, tuned_toml(budget, choices, header))
    return path


def _tune_one(tune: Any, key: str, base: Cell, spec: TuneSpec, seeds: list[int], per_trial: dict[str, float],
              tuning_dir: Path, verbose: bool, at_once: int) -> Choice:
    space = space_of(base.method_name)
    done: list[dict[str, Any]] = []
    started = time.perf_counter()

    class Progress(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001, ANN202
            values = {k: trial.config[safe(k)] for k in space}
            done.append({"values": values, "objective": result["objective"], "run_ids": result["run_ids"],
                         "failed": bool(result["failed"])})
            best = max(done, key=lambda d: d["objective"])
            print(f"[tune {time.perf_counter() - started:.0f}s] {key}: {len(done)}/{spec.trials} trials, best "
                  f"{best['objective']:.2f} ({_short(best['values'])})", file=sys.stderr, flush=True)

    param_space = {"base": {**to_dict(base.config), "results_dir": str(Path(base.results_dir).resolve())},
                   "keys": list(space), "seeds": seeds, "objective": spec.objective, "resources": per_trial,
                   **{safe(k): to_tune(d) for k, d in space.items()}}
    tuner = tune.Tuner(
        tune.with_resources(_trial, per_trial), param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=spec.trials, search_alg=search_algorithm(spec), metric="objective",
                                    mode="max", reuse_actors=True, max_concurrent_trials=at_once or None),
        run_config=tune.RunConfig(name=f"tune-{base.method_name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str(tuning_dir / ".ray"), verbose=2 if verbose else 0,
                                  callbacks=[Progress()]))
    tuner.fit()
    ok = [d for d in done if not d["failed"]]
    if not ok:
        raise RuntimeError(f"{key}: every one of its {len(done)} tuning trials failed; see their result.json files "
                           f"under {tuning_dir}")
    best = max(ok, key=lambda d: d["objective"])  # the first of equals: Tune reports in completion order
    options = {k.removeprefix("method.options."): v for k, v in best["values"].items() if k.startswith("method.")}
    lr = float(best["values"]["train.lr"])
    trials = [{**{k: _plain(v) for k, v in d["values"].items()}, "objective": d["objective"], "run_ids": d["run_ids"],
               "failed": d["failed"]} for d in done]
    print(f"[tune] {key}: chose {_short(best['values'])}, objective {best['objective']:.2f} on validation",
          file=sys.stderr)
    return Choice(base.backbone.name, base.regime, base.method_name, lr, {k: _plain(v) for k, v in options.items()},
                  float(best["objective"]), trials)


def _plain(value: Any) -> Any:
    """numpy scalars from Tune's samplers as plain Python numbers."""
    return value.item() if hasattr(value, "item") else value


def _short(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_plain(v):.3g}" if isinstance(_plain(v), float) else
                     f"{k.split('.')[-1]}={_plain(v)}" for k, v in values.items())
