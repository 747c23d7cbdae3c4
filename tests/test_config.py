"""Config files: loading, errors that name file/key/allowed values, every shipped config."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import ConfigError, parse_override
from bench.run.cells import load_cells, load_run_config

CONFIGS = sorted(Path(__file__).parents[1].glob("configs/*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    path = write(tmp_path, "[train]\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown key\(s\) train.learning_rate; allowed in train: .*lr"):
        load_run_config(path)


def test_bad_choice_lists_allowed_values(tmp_path):
    path = write(tmp_path, 'regime = "curriculum"\n')
    with pytest.raises(ConfigError, match=r"bad value 'curriculum' for key 'regime'; allowed: 'multitask', 'sequential'"):
        load_run_config(path)


def test_bad_type_and_minimum(tmp_path):
    with pytest.raises(ConfigError, match="bad value '8' for key 'train.batch_size'; allowed: an integer"):
        load_run_config(write(tmp_path, '[train]\nbatch_size = "8"\n'))
    with pytest.raises(ConfigError, match="train.steps_per_stage.*>= 1"):
        load_run_config(write(tmp_path, "[train]\nsteps_per_stage = 0\n"))


def test_workers_must_divide_the_micro_batches(tmp_path):
    with pytest.raises(ConfigError, match=r"run.toml: bad value 2 for key 'train.grad_accum' with train.workers = 4; "
                                          r"allowed: a multiple of train.workers"):
        load_run_config(write(tmp_path, "[train]\nworkers = 4\ngrad_accum = 2\n"))
    one, two = (load_run_config(write(tmp_path, f"[train]\nworkers = {w}\ngrad_accum = 2\n")) for w in (1, 2))
    assert one.run_id == two.run_id  # the same science on 1 or 2 workers: one cell


def test_bad_method_option_is_reported_before_any_model_loads(tmp_path):
    path = write(tmp_path, '[method]\nname = "epi"\n[method.options]\nrho = 2.0\n')
    with pytest.raises(ConfigError, match=rf"{path}: key 'method':.*'rho'"):
        load_run_config(path)


def test_unknown_task(tmp_path):
    with pytest.raises(ConfigError, match="tasks.names.*allowed: a non-empty list of arithmetic"):
        load_run_config(write(tmp_path, '[tasks]\nnames = ["poetry"]\n'))


def test_overrides_and_run_id_stability(tmp_path):
    path = write(tmp_path, "seed = 1\n")
    a = load_run_config(path, parse_override("train.lr=0.5"))
    assert a.train.lr == 0.5 and a.seed == 1
    assert a.run_id == load_run_config(path, parse_override("train.lr=0.5")).run_id
    assert a.run_id != load_run_config(path).run_id
    assert a.run_id == load_run_config(path, {**parse_override("train.lr=0.5"), "results_dir": "elsewhere"}).run_id


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_expands(path):
    import tomllib

    sources = tomllib.loads(path.read_text()).get("tasks", {}).get("sources", {})
    missing = [s for s in sources.values() if s != "hub" and not (path.parent / s).exists()]
    if missing:
        pytest.skip(f"{path.name} reads local data that is not here: {missing} (the shared data folder)")
    cells = load_cells(path)
    assert cells and len({c.run_id for c in cells}) == len(cells)
