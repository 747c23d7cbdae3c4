"""Grid expansion (no Ray) and the grid on real Ray: smoke, failure isolation, kill -9 resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.run.cells import load_grid

ROOT = Path(__file__).parents[1]

GRID = """
study = "g"
regime = "multitask"
results_dir = {results!r}
[tasks]
names = ["arithmetic", "logic"]
train_size = 16
test_size = 4
[train]
steps_per_stage = 3
warmup_steps = 0
batch_size = 4
[eval]
limit = 4
[grid]
methods = {methods}
seeds = {seeds}
max_concurrent_trials = {concurrent}
resources = {{ cpu = 1 }}
{extra}
"""


def grid_file(tmp_path: Path, methods=("full_sft", "epi"), seeds=(0,), concurrent=2, extra="") -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(GRID.format(results=str(tmp_path / "results"), methods=json.dumps(list(methods)),
                                seeds=json.dumps(list(seeds)), concurrent=concurrent, extra=extra))
    return path


def statuses(tmp_path: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "results" / "g").glob("*/result.json")}


def test_expansion_counts_per_method_axes_and_stable_ids(tmp_path):
    extra = ('[grid.method_options.epi]\nrho = [0.01, 0.05]\nbeta = 0.8\n[grid.axes]\n"train.lr" = [0.001, 0.0003]\n'
             '[grid.method_axes.lora]\n"train.weight_decay" = [0.0, 0.01]')
    path = grid_file(tmp_path, methods=("full_sft", "lora", "epi"), seeds=(0, 1, 2), extra=extra)
    cells = load_grid(path).cells
    assert len(cells) == (1 + 2 + 2) * 3 * 2
    assert {c.train.weight_decay for c in cells if c.method_name == "lora"} == {0.0, 0.01}
    assert {c.train.weight_decay for c in cells if c.method_name != "lora"} == {0.1}
    epi = [c for c in cells if c.method_name == "epi"]
    assert {c.options.rho for c in epi} == {0.01, 0.05} and all(c.options.beta == 0.8 for c in epi)
    assert all(c.config.method.options == {} for c in cells if c.method_name != "epi")
    assert {c.train.lr for c in cells} == {0.001, 0.0003}
    assert [c.run_id for c in cells] == [c.run_id for c in load_grid(path).cells]
    assert len({c.run_id for c in cells}) == len(cells)


def test_method_options_for_a_method_not_in_the_grid_is_an_error(tmp_path):
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="grid.method_options.lora"):
        load_grid(grid_file(tmp_path, extra="[grid.method_options.lora]\nr = [4]"))


def test_dry_run_prints_cells_and_resources(tmp_path, capsys):
    assert main(["grid", "--dry-run", str(grid_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "2 cells" in out and "cpu=1" in out and "missing" in out
    assert not (tmp_path / "results").exists()


def test_grid_on_ray_isolates_a_failing_cell_and_resumes(tmp_path, capsys):
    path = grid_file(tmp_path, extra='loggers = ["mlflow"]\n[grid.axes]\n"train.lr" = [0.003, 1e30]')
    assert main(["grid", str(path)]) == 1  # the lr = 1e30 cells fail, the grid goes on
    results = statuses(tmp_path)
    assert len(results) == 4
    failed = {k for k, r in results.items() if r["run"]["status"] == "failed"}
    assert len(failed) == 2 and all(results[k]["run"]["error"]["type"] == "NonFiniteLoss" for k in failed)
    assert all(r["run"]["config"]["train"]["lr"] == 1e30 for k, r in results.items() if k in failed)
    captured = capsys.readouterr()
    assert "2 failed" in captured.out
    # Live status blocks (from the trials' tune.report), the per-trial time breakdown, no Ray banner.
    assert re.search(r"\[grid \d+m\d\ds\] \d/4 done, \d running, \d failed, \d queued", captured.err)
    assert re.search(r"(full_sft|epi) +seed 0  stage 1/1  step \d/3  loss \d+\.\d{3}  \dm\d\ds", captured.err)
    assert re.search(r"\[grid\] \S+: wall \dm\d\ds  setup \d+s  data \d+s  model \d+s", captured.err)
    assert "Number of trials" not in captured.err + captured.out and "Tuner.restore" not in captured.err
    # Ray's TensorBoard logger has the per-step curves.
    events = list((tmp_path / "results" / "g" / ".ray").rglob("events.out.tfevents*"))
    assert events and any(b"ray/tune/loss" in e.read_bytes() for e in events)
    # and [grid] loggers = ["mlflow"] writes a local MLflow store with the same curves.
    assert list((tmp_path / "results" / "g" / "mlruns").glob("*/*/metrics/loss"))
    stamps = {k: r["run"]["started_at"] + str(r["train"]["wall_s"]) for k, r in results.items()}
    # Again: nothing to run. With --retry-failed: only the failed cells run (and fail again).
    assert main(["grid", str(path)]) == 1
    assert main(["grid", "--retry-failed", str(path)]) == 1
    again = statuses(tmp_path)
    for k, r in again.items():
        same = r["run"]["started_at"] + str(r["train"]["wall_s"]) == stamps[k]
        assert same == (k not in failed), k


def test_kill_9_of_the_driver_then_rerun_finishes_exactly_the_missing_cells(tmp_path):
    path = grid_file(tmp_path, seeds=(0, 1), concurrent=1)
    cmd = [sys.executable, "-m", "bench.cli", "grid", str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not any(r["run"]["status"] == "success" for r in statuses(tmp_path).values()):
        time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {k: r["run"]["started_at"] for k, r in statuses(tmp_path).items() if r["run"]["status"] == "success"}
    assert 1 <= len(before) < 4
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    after = statuses(tmp_path)
    assert len(after) == 4 and all(r["run"]["status"] == "success" for r in after.values())
    assert all(after[k]["run"]["started_at"] == v for k, v in before.items())  # finished cells not redone
    dirs = [p for p in (tmp_path / "results" / "g").iterdir() if p.is_dir() and p.name[0] not in "._"]
    assert len([d for d in dirs if (d / "result.json").exists()]) == 4
    from bench.launch.ray_session import ray_temp_dir, reap

    assert reap(ray_temp_dir(tmp_path / "results" / "g")) == 0  # no Ray process left behind


def test_grid_killed_with_its_trials_resumes_from_checkpoints(tmp_path):
    """Driver and trials all killed mid-run (trials hang after step 5, past the checkpoint at 4):
    the next invocation resumes both cells from step 4, not from step 0."""
    path = grid_file(tmp_path, extra="")
    text = path.read_text().replace("steps_per_stage = 3", "steps_per_stage = 4\ncheckpoint_every = 2")
    path.write_text(text.replace('regime = "multitask"', 'regime = "sequential"'))
    cmd = [sys.executable, "-m", "bench.cli", "grid", str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ISOBENCH_FAULT_AT_STEP": "hang:5"}
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = tmp_path / "results" / "g"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(study.glob("*/checkpoint/state.pt"))) < 2:
        time.sleep(0.5)
    time.sleep(3)  # both trials now hang after step 5; their checkpoints hold step 4
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    from bench.launch.ray_session import ray_temp_dir, reap

    reap(ray_temp_dir(study))
    assert not statuses(tmp_path)
    del env["ISOBENCH_FAULT_AT_STEP"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    after = statuses(tmp_path)
    assert len(after) == 2 and all(r["run"]["status"] == "success" for r in after.values())
    assert all(r["run"]["resumed_from"] == [4] for r in after.values()), [r["run"]["resumed_from"] for r in after.values()]


def test_a_method_planning_its_stages_is_crossed_with_the_multistage_regime_only(tmp_path):
    from bench.config import ConfigError

    path = grid_file(tmp_path, methods=("full_sft", "cpi_ft"), extra='regimes = ["sequential", "multistage"]')
    cells = load_grid(path, {"tasks": {"num_groups": 2}}).cells
    assert sorted((c.method_name, c.regime) for c in cells) == [
        ("cpi_ft", "multistage"), ("full_sft", "multistage"), ("full_sft", "sequential")]
    with pytest.raises(ConfigError, match="add 'multistage' to grid.regimes"):
        load_grid(grid_file(tmp_path, methods=("full_sft", "cpi_ft")))


def test_grid_of_three_regimes_with_analyses_then_report(tmp_path, capsys):
    extra = ('regimes = ["multitask", "sequential", "multistage"]\n'
             '[grid.method_options.cpi_ft]\nprobe_steps = 2\nrho = 0.05\n')
    path = grid_file(tmp_path, methods=("full_sft", "cpi_ft"), extra=extra)
    text = path.read_text().replace("[train]", "[analysis]\nimportance_drift = { every = 1, rho = 0.05 }\n"
                                    "gradient_conflict = { every = 2 }\n[train]")
    path.write_text(text.replace('test_size = 4', 'test_size = 4\nnum_groups = 2'))
    assert main(["grid", str(path)]) == 0
    results = statuses(tmp_path)
    assert sorted((r["run"]["method"], r["run"]["regime"]) for r in results.values()) == [
        ("cpi_ft", "multistage"), ("full_sft", "multistage"), ("full_sft", "multitask"), ("full_sft", "sequential")]
    assert all(r["train"]["observers"]["importance_drift"]["snapshots"] >= 3 for r in results.values())
    assert main(["report", str(tmp_path / "results" / "g")]) == 0
    tables = tmp_path / "results" / "g" / "tables"
    for name in ("main_multistage.md", "forgetting_multistage.md", "forgetting.md", "drift_multistage.md",
                 "conflict_sequential.md", "drift_multitask.md"):
        assert (tables / name).is_file(), name
    assert list(tables.glob("drift_multistage_*_cpi_ft_importance_drift.png"))


def test_wandb_logger_writes_an_offline_run_with_the_curves_and_no_secret(tmp_path, monkeypatch):
    """The curves reach W&B's offline record; a planted WANDB_API_KEY reaches no file, neither in
    the results nor in Ray's temp folder, which is gone after the grid."""
    pytest.importorskip("wandb")
    from bench.launch.ray_session import ray_temp_dir

    secret = "planted-secret-7f3a9c"
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_API_KEY", secret)
    import bench.launch.ray_session

    removed = []  # Ray's temp folder is kept until checked here, then removed
    monkeypatch.setattr(bench.launch.ray_session, "remove_session_files", lambda p: removed.append(Path(p)))
    path = grid_file(tmp_path, methods=("full_sft",), extra='loggers = ["wandb"]')
    assert main(["grid", str(path)]) == 0
    runs = list((tmp_path / "results" / "g" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    assert b"loss" in runs[0].read_bytes()  # the per-step curves, in W&B's offline record format
    temp = ray_temp_dir(tmp_path / "results" / "g")
    assert removed == [temp]
    leaks = [p for folder in (tmp_path / "results", temp) for p in folder.rglob("*")
             if p.is_file() and secret.encode() in p.read_bytes()]
    monkeypatch.undo()
    shutil.rmtree(temp, ignore_errors=True)
    assert leaks == []


def test_grid_runs_a_sharded_cell_on_two_ray_train_workers_like_one_process(tmp_path, capsys):
    """``train.workers = 2``: the trial is a Ray Tune driver that starts a 2-worker TorchTrainer
    (gloo, FSDP2); its result matches the same cell run in one process."""
    extra = "[grid.method_options.epi]\nrefresh_every = 1\nrho = 0.05"
    path = grid_file(tmp_path, methods=("epi",), extra=extra)
    sharded = ["--set", "train.workers=2", "--set", "train.grad_accum=2"]
    assert main(["grid", "--dry-run", str(path), *sharded]) == 0
    assert "cpu=1 over 2 workers" in capsys.readouterr().out
    assert main(["grid", str(path), *sharded]) == 0
    (run_id, two), = statuses(tmp_path).items()
    assert two["run"]["status"] == "success" and two["train"]["workers"] == 2
    alone = tmp_path / "alone"
    assert main(["run", str(path), "--set", "train.grad_accum=2", "--set", f"results_dir={alone}"]) == 0
    one = json.loads((alone / "g" / run_id / "result.json").read_text())  # workers: not part of the run id
    assert one["train"]["workers"] == 1
    assert [s["scores"] for s in two["evaluation"]["stages"]] == [s["scores"] for s in one["evaluation"]["stages"]]
    assert two["train"]["summary"]["loss_last"] == pytest.approx(one["train"]["summary"]["loss_last"], abs=1e-5)

    def events(root: Path) -> list[dict]:
        return [json.loads(line) for line in (root / run_id / "events" / "method.jsonl").read_text().splitlines()]

    assert events(tmp_path / "results" / "g") == events(alone / "g") != []


@pytest.mark.parametrize("sets", [
    ['grid.methods=["epi"]', "method.options.rho=0.5"],  # epi's cells take grid.method_options.epi
    ["method.options.lambda_=10"],  # full_sft's own option: the epi cells would drop it
])
def test_a_method_option_set_that_some_cell_would_lose_is_refused(capsys, sets):
    from tests.test_faults import SMOKE

    assert main(["grid", "--dry-run", str(SMOKE), *(x for s in sets for x in ("--set", s))]) == 2
    err = capsys.readouterr().err
    assert "would not reach method 'epi'" in err and "grid.method_options.epi." in err


def test_the_grid_key_the_refusal_names_gives_new_cells(capsys):
    from tests.test_faults import SMOKE

    assert main(["grid", "--dry-run", str(SMOKE), "--set", 'grid.methods=["epi"]']) == 0
    before = {line.split()[1] for line in capsys.readouterr().out.splitlines() if " epi " in line}
    assert main(["grid", "--dry-run", str(SMOKE), "--set", 'grid.methods=["epi"]',
                 "--set", "grid.method_options.epi.rho=0.5"]) == 0
    out = capsys.readouterr().out
    after = {line.split()[1] for line in out.splitlines() if " epi " in line}
    assert "rho=0.5" in out and "rho=0.05" not in out and after and not after & before


def test_isobench_methods_prints_the_whole_first_paragraph(capsys):
    import sys

    import methods

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in methods.names():
        doc = sys.modules[methods.get(name).__module__].__doc__.strip().split("\n\n")[0]
        assert f"{name}: {' '.join(doc.split())}" in out
