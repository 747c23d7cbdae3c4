"""Fuzz: malformed configs derived from the smoke config, one mutation each. Every one must be
refused up front: exit 2, a message starting with 'error:', no model loaded, nothing written
anywhere but the temporary results_dir (validation only, no training)."""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path

import pytest

from bench.cli import main

SMOKE = Path(__file__).parents[1] / "configs" / "smoke.toml"
NAN, INF = float("nan"), float("inf")


def toml(value) -> str:  # noqa: ANN001 - a TOML literal for a Python value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {True: "nan", False: "inf" if value > 0 else "-inf"}[value != value] if value != value or abs(value) == INF \
            else repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {toml(v)}' for k, v in value.items()) + "}"
    return str(value)


def dump(data: dict, prefix: str = "") -> str:
    scalars = [f'"{k}" = {toml(v)}' for k, v in data.items() if not isinstance(v, dict) or not v or k in
               ("resources", "options", "sources", "judge")]
    tables = [dump(v, f"{prefix}{k}.") for k, v in data.items() if isinstance(v, dict) and v and k not in
              ("resources", "options", "sources", "judge")]
    head = f"[{prefix.rstrip('.')}]\n" if prefix else ""
    return head + "\n".join(scalars) + "\n\n" + "".join(tables)


def setting(path: str, value):  # noqa: ANN001, ANN201
    def apply(data: dict, tmp: Path) -> None:
        *parents, last = path.split(".")
        table = data
        for p in parents:
            table = table.setdefault(p, {})
        table[last] = value(tmp) if callable(value) else value
    return apply


def file_at(tmp: Path) -> str:
    (tmp / "a_file").write_text("x")
    return str(tmp / "a_file" / "results")


MUTATIONS = {
    # types
    "lr as string": setting("train.lr", "fast"), "batch_size float": setting("train.batch_size", 8.5),
    "steps bool": setting("train.steps_per_stage", True), "seed string": setting("seed", "zero"),
    "names not list": setting("tasks.names", "arithmetic"), "betas strings": setting("train.betas", ["a", "b"]),
    "eval.nll string": setting("eval.nll", "yes"), "regime int": setting("regime", 3),
    # ranges, NaN, inf
    "lr nan": setting("train.lr", NAN), "lr inf": setting("train.lr", INF), "lr negative": setting("train.lr", -1e-3),
    "weight_decay nan": setting("train.weight_decay", NAN), "max_grad_norm -inf": setting("train.max_grad_norm", -INF),
    "betas nan": setting("train.betas", [0.9, NAN]), "betas 1": setting("train.betas", [0.9, 1.0]),
    "batch 0": setting("train.batch_size", 0), "grad_accum not dividing": setting("train.grad_accum", 3),
    "steps 0": setting("train.steps_per_stage", 0), "seed negative": setting("seed", -1),
    "eval.limit > test_size": setting("eval.limit", 31), "max_length 2": setting("train.max_length", 2),
    "checkpoint_every -5": setting("train.checkpoint_every", -5), "test_size 0": setting("tasks.test_size", 0),
    # choices
    "regime unknown": setting("regime", "curriculum"), "schedule unknown": setting("train.schedule", "exp"),
    "mix unknown": setting("tasks.mix", "random"), "precision unknown": setting("train.precision", "fp8"),
    "old key train.bf16": setting("train.bf16", "on"), "old key backbone.dtype": setting("backbone.dtype", "bfloat16"),
    # unknown keys
    "unknown top key": setting("epochs", 3), "unknown train key": setting("train.learning_rate", 1e-3),
    "unknown grid key": setting("grid.workers", 2),
    # duplicates
    "duplicate task": setting("tasks.names", ["arithmetic", "logic", "arithmetic"]),
    "duplicate method": setting("grid.methods", ["full_sft", "full_sft"]),
    "duplicate seed": setting("grid.seeds", [0, 0]),
    "duplicate backbone": setting("grid.backbones", ["tiny-llama", "tiny-llama"]),
    "duplicate regime": setting("grid.regimes", ["sequential", "sequential"]),
    "empty tasks": setting("tasks.names", []), "unknown task": setting("tasks.names", ["poetry"]),
    # grid
    "empty grid.methods": setting("grid.methods", []), "empty grid.seeds": setting("grid.seeds", []),
    "unknown grid method": setting("grid.methods", ["full_sft", "epii"]),
    "method.name not in grid": setting("method.name", "lora"), "method.name unknown": setting("method.name", "nope"),
    "options for absent method": setting("grid.method_options.lora", {"r": [4]}),
    "gpu -1": setting("grid.resources", {"gpu": -1}), "cpu nan": setting("grid.resources", {"cpu": NAN}),
    "resource unknown": setting("grid.resources", {"tpu": 1}),
    "max_failures -1": setting("grid.max_failures", -1),
    # method options
    "rho 2": setting("grid.method_options.epi.rho", 2.0), "rho nan": setting("grid.method_options.epi.rho", NAN),
    "refresh float": setting("grid.method_options.epi.refresh_every", 2.5),
    "beta string": setting("grid.method_options.epi.beta", "high"),
    "unknown option": setting("grid.method_options.epi.rh0", 0.1),
    # paths
    "study dotdot": setting("study", "../../escape"), "study absolute": setting("study", "/tmp/escape"),
    "study slash": setting("study", "a/b"), "study empty": setting("study", ""),
    "results under a file": setting("results_dir", file_at),
    "local backbone missing": setting("backbone.name", "/nonexistent/model-folder"),
    "local backbone without config": setting("backbone.name", lambda tmp: str(tmp)),
    "grid backbone missing": setting("grid.backbones", ["./no-such-model"]),
    "task source missing": setting("tasks.sources", {"gsm8k": "/nonexistent/gsm8k"}),
    "unknown backbone key": setting("backbone.revision", "main"),
    "judge kind unknown": setting("eval.judge", {"kind": "oracle"}),
}


@pytest.fixture
def no_model(monkeypatch):
    import bench.backbones.registry
    import bench.run.execution

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model was loaded for a malformed config")

    monkeypatch.setattr(bench.backbones.registry, "load_backbone", refuse)
    monkeypatch.setattr(bench.run.execution, "load_backbone", refuse)


def test_there_are_at_least_40_mutations():
    assert len(MUTATIONS) >= 40


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_malformed_config_is_refused_up_front(tmp_path, capsys, no_model, name):
    data = copy.deepcopy(tomllib.loads(SMOKE.read_text()))
    data["results_dir"] = str(tmp_path / "results")
    MUTATIONS[name](data, tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(dump(data))
    before = set(os.listdir(tmp_path))
    for command in (["run", str(config)], ["grid", "--dry-run", str(config)]):
        assert main(command) == 2, f"{name}: {command[0]} accepted it"
        err = capsys.readouterr().err
        assert err.startswith("error:"), err
    assert set(os.listdir(tmp_path)) == before  # nothing written, not even the results folder
    assert not (tmp_path.parent / "escape").exists()


def test_the_unmutated_config_passes_validation(tmp_path, capsys):
    data = tomllib.loads(SMOKE.read_text())
    data["results_dir"] = str(tmp_path / "results")
    config = tmp_path / "config.toml"
    config.write_text(dump(data))
    assert main(["grid", "--dry-run", str(config)]) == 0
