"""Tuning on equal terms: declared search domains, the validation split, the trial objective,
``isobench tune`` on Ray Tune and ``isobench grid --tuned``."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

import methods
from bench.cli import main
from bench.config import ConfigError
from bench.config.schema import TrainConfig, validation_rows
from bench.run.cells import load_grid
from bench.run.objective import objective
from bench.run.tuning_space import space_of
from bench.run.tuning_spec import read_tuned
from bench.suite.tasks import build_suite
from pluggable.search import choice, domains, log_int, log_uniform, uniform
from reports.schema import Evaluation, Result, RunInfo, StageResult

# The options the field tunes for each method (issue: every registered method declares domains).
NAMED = {"epi": {"rho", "refresh_every"}, "epi_adaptive": {"rho", "drifting_below", "stable_above"},
         "mofo": {"alpha"}, "ewc": {"lambda_"}, "replay": {"ratio"}, "lora": {"r"}, "hft": {"selection"},
         "static_isolation": {"rho"}, "random_isolation": {"rho", "refresh_every"}, "cpi_ft": {"rho", "tau"}}


@pytest.mark.parametrize("name", methods.names())
def test_every_method_declares_a_space_that_holds_its_defaults(name):
    space = space_of(name)
    assert space["train.lr"].contains(TrainConfig().lr)
    assert NAMED.get(name, set()) <= {k.removeprefix("method.options.") for k in space}
    defaults = methods.build(name, {})
    for option, domain in domains(methods.get(name).Config).items():
        assert domain.contains(getattr(defaults.config, option)), (name, option, domain)


def test_isobench_methods_prints_every_methods_domains(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in methods.names():
        block = out.split(f"\n{name}: ")[1] if not out.startswith(f"{name}: ") else out[len(name) + 2:]
        block = block.split("\n", 1)[1].split("\n" + methods.names()[-1] + ": ")[0]
        assert "train.lr: search log_uniform(" in block, name
    assert "lambda_ (float, default 50000.0; search log_uniform(100, 1e+06))" in out
    assert "rho (float, default 0.01; search log_uniform(0.001, 0.2))" in out


def test_domains_sample_inside_their_bounds_through_ray_tune():
    import random

    from bench.launch.tuning import to_tune

    random.seed(0)
    import numpy as np

    np.random.seed(0)
    for domain in (log_uniform(1e-5, 1e-2), uniform(0.1, 0.7), log_int(2, 200), choice(4, 8, 16)):
        drawn = [to_tune(domain).sample() for _ in range(400)]
        assert all(domain.contains(v.item() if hasattr(v, "item") else v) for v in drawn), domain
        if domain.kind == "log_int":  # both ends reachable: the upper bound is included
            assert min(drawn) <= 3 and max(drawn) >= 150


def test_a_domain_refuses_bounds_that_are_not_a_range():
    with pytest.raises(ValueError, match="low < high"):
        uniform(1.0, 1.0)
    with pytest.raises(ValueError, match="bounds > 0"):
        log_uniform(0.0, 1.0)


TASKS3 = ["arithmetic", "logic", "format"]


def test_the_validation_split_leaves_train_and_test_as_they_were_and_shares_no_prompt(tmp_path):
    plain = build_suite(TASKS3, 0, 120, 20, tmp_path, 8)
    val = build_suite(TASKS3, 0, 120, 20, tmp_path, 8, split="validation", val_size=validation_rows(120, -1))
    assert validation_rows(120, -1) == 32 and validation_rows(1000, -1) == 100 and validation_rows(10, 5) == 5
    assert plain.lm_eval_dir != val.lm_eval_dir
    for t in TASKS3:
        assert val.train[t] == plain.train[t]  # the same rows, in the same order
        prompts = {r["prompt"] for r in val.test[t]}
        assert len(val.test[t]) == 32
        assert not prompts & {r["prompt"] for r in plain.test[t]}
        assert not prompts & {r["prompt"] for r in plain.train[t]}
        assert val.notes[t]["split"] == "validation" and val.notes[t]["validation_rows"] == 32
        assert len(val.notes[t]["validation_sha256"]) == 64


def test_a_validation_split_beyond_a_generators_distinct_prompts_is_refused(tmp_path):
    from bench.run.cells import load_cells

    path = tmp_path / "g.toml"
    body = '[tasks]\nnames = ["program"]\ntrain_size = 900\ntest_size = 50\n[eval]\nlimit = 10\n'
    path.write_text(body)
    load_cells(path)  # 950 of the program generator's 972 prompts
    path.write_text(body + 'split = "validation"\n')
    with pytest.raises(ConfigError, match="validation rows .tasks.val_size. = 1040, but task 'program' has 972"):
        load_cells(path)


def result_of(stages: list[dict[str, float]], trained: list[list[str]], chance: dict[str, float]) -> Result:
    return Result(run=RunInfo(run_id="x", study="s", method="m", backbone="b", regime="sequential", seed=0,
                              tasks=list(chance), config={}, status="success"),
                  evaluation=Evaluation(stages=[StageResult(k, trained[k], s, {}) for k, s in enumerate(stages)],
                                        chance=chance, scorers={t: "exact_match" for t in chance}))


def test_the_objective_by_hand():
    r = result_of([{"a": 80.0, "b": 50.0}, {"a": 60.0, "b": 75.0}], [["a"], ["b"]], {"a": 0.0, "b": 25.0})
    # final: a 60, b (75 - 25) / 75 * 100 = 66.67; forgetting of a: 80 - 60 = 20 (b is trained last)
    assert objective(r, "avg_norm") == pytest.approx((60 + 200 / 3) / 2)
    assert objective(r, "avg_norm - forgetting") == pytest.approx((60 + 200 / 3) / 2 - 20)
    assert objective(dataclasses.replace(r, run=dataclasses.replace(r.run, status="failed")), "avg_norm") is None


def grid_file(tmp_path: Path, tune: str = "trials = 2\nseeds = [100]\n") -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(f'study = "t"\nresults_dir = {str(tmp_path / "results")!r}\nregime = "sequential"\n'
                    '[tasks]\nnames = ["arithmetic", "logic"]\ntrain_size = 60\ntest_size = 8\n'
                    '[train]\nsteps_per_stage = 2\nbatch_size = 4\nlr = 3e-3\nmax_length = 64\n'
                    '[eval]\nlimit = 8\nbatch_size = 16\nmax_gen_toks = 4\nretention = {}\n'
                    '[grid]\nmethods = ["full_sft", "epi"]\nseeds = [0]\nresources = { cpu = 1 }\n'
                    'max_concurrent_trials = 1\n[grid.method_options.epi]\nrefresh_every = 2\nwarmup_steps = 1\n'
                    f'[grid.tune]\n{tune}')
    return path


def test_grid_tune_keys_are_checked_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="grid.tune.trails"):
        load_grid(grid_file(tmp_path, "trails = 2\n"))
    with pytest.raises(ConfigError, match="'grid.tune.search'; allowed: 'random', 'optuna'"):
        load_grid(grid_file(tmp_path, 'search = "grid"\n'))
    with pytest.raises(ConfigError, match="shares seed"):
        load_grid(grid_file(tmp_path, "seeds = [0]\n"))


def test_a_tuned_file_that_does_not_cover_the_grid_or_is_not_one_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("trials = 2\n")
    with pytest.raises(ConfigError, match="not a tuned.toml"):
        read_tuned(bad)
    with pytest.raises(ConfigError, match="cannot be read"):
        read_tuned(tmp_path / "absent.toml")
    half = tmp_path / "half.toml"
    half.write_text('trials = 2\nseeds = [100]\nsearch = "random"\nobjective = "avg_norm"\nsplit = "validation"\n'
                    '[[choice]]\nbackbone = "tiny-llama"\nregime = "sequential"\nmethod = "full_sft"\nlr = 1e-3\n'
                    'options = {}\nobjective = 1.0\n')
    with pytest.raises(ConfigError, match="no choice for tiny-llama / sequential / epi"):
        load_grid(grid_file(tmp_path), tuned=read_tuned(half))


def test_tune_searches_every_method_on_validation_and_the_grid_takes_its_choices(tmp_path, capsys):
    """``isobench tune`` end to end on Ray (tiny model, 2 trials per method), then ``grid --tuned``:
    every trial is a run scored on validation rows only, and the grid's cells carry the choices."""
    path = grid_file(tmp_path)
    assert main(["tune", str(path)]) == 0
    tuned_path = tmp_path / "results" / "t" / "tuned.toml"
    data = tomllib.loads(tuned_path.read_text())
    assert data["trials"] == 2 and data["seeds"] == [100] and data["split"] == "validation"
    assert {c["method"] for c in data["choice"]} == {"full_sft", "epi"}
    test_prompts = {t: {r["prompt"] for r in rows} for t, rows in
                    build_suite(["arithmetic", "logic"], 0, 60, 8, tmp_path / "s", 4).test.items()}
    trial_dirs = sorted((tmp_path / "results" / "t-tuning").glob("*/result.json"))
    assert len(trial_dirs) == 4  # 2 methods x 2 trials x 1 seed
    for path_ in trial_dirs:
        result = json.loads(path_.read_text())
        assert result["run"]["status"] == "success" and result["run"]["seed"] == 100
        assert result["run"]["config"]["eval"]["split"] == "validation"
        for rows in result["evaluation"]["data_rows"].values():
            assert "test" not in rows and rows["validation"] == rows["validation_rows"] > 0
        suite_val = build_suite(["arithmetic", "logic"], 0, 60, 8, tmp_path / "s", 4, split="validation",
                                val_size=validation_rows(60, -1))
        for task in ("arithmetic", "logic"):
            assert not {r["prompt"] for r in suite_val.test[task]} & test_prompts[task]
    for choice_ in data["choice"]:
        assert choice_["objective"] == max(t["objective"] for t in choice_["trials"])
        assert len(choice_["trials"]) == 2
    tuned = read_tuned(tuned_path)
    grid = load_grid(path, tuned=tuned)
    for cell in grid.cells:
        chosen = tuned.choices[f"tiny-llama / sequential / {cell.method_name}"]
        assert cell.train.lr == chosen.lr
        assert all(getattr(cell.options, k) == v for k, v in chosen.options.items())
        assert cell.eval.split == "test"
        # the grid cell is the chosen trial's config but for seed and split: options it did not tune stay
        best = next(t for t in chosen.trials if t["objective"] == chosen.objective)
        trial = json.loads(next((tmp_path / "results" / "t-tuning").glob(f"{best['run_ids']}/result.json")).read_text())
        assert trial["run"]["config"]["method"]["options"] == cell.config.method.options
        assert trial["run"]["config"]["train"]["lr"] == cell.train.lr
    assert [c.options.warmup_steps for c in grid.cells if c.method_name == "epi"] == [1]
    from bench.launch.manifest import write_manifest
    from reports.report import tuned_caption

    write_manifest(grid)
    caption = tuned_caption(grid.study_dir)
    assert caption.startswith("Options tuned on validation, 2 trials per method, same budget (random search")
    assert f"epi (tiny-llama / sequential): lr {tuned.choices['tiny-llama / sequential / epi'].lr:.3g}" in caption
    capsys.readouterr()
    assert main(["tune", str(path)]) == 0  # a second tune reuses every trial's result: nothing trains again
    assert "resuming" not in capsys.readouterr().err
    assert len(sorted((tmp_path / "results" / "t-tuning").glob("*/result.json"))) == 4


def test_optuna_search_is_built_when_asked_and_refused_with_the_extra_to_install_when_missing(tmp_path, monkeypatch):
    import builtins

    from bench.launch.tuning import search_algorithm
    from bench.run.tuning_spec import tune_spec

    spec = tune_spec({"search": "optuna", "search_seed": 3}, [0], "g.toml")
    assert type(search_algorithm(spec)).__name__ == "OptunaSearch"
    assert type(search_algorithm(tune_spec({}, [0], "g.toml"))).__name__ == "BasicVariantGenerator"
    real_import = builtins.__import__

    def no_optuna(name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name == "optuna":
            raise ImportError("no optuna")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    with pytest.raises(ConfigError, match=r"needs the optuna package; install it with pip install -e '.\[tune\]'"):
        tune_spec({"search": "optuna"}, [0], "g.toml")


def test_a_trial_is_the_base_cell_with_its_draw_on_validation_and_a_refused_draw_is_a_config_error(tmp_path):
    from bench.launch.tuning import trial_cell

    base = next(c for c in load_grid(grid_file(tmp_path)).cells if c.method_name == "epi")
    cell = trial_cell(base, {"train.lr": 2e-4, "method.options.rho": 0.03}, 100)
    assert (cell.train.lr, cell.options.rho, cell.options.refresh_every, cell.options.warmup_steps) == (2e-4, 0.03, 2, 1)
    assert cell.seed == 100 and cell.eval.split == "validation" and cell.study == "t-tuning"
    with pytest.raises(ConfigError, match="rho"):
        trial_cell(base, {"method.options.rho": 2.0}, 100)
