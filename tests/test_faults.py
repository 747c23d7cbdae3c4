"""Faults and bad input beyond single config keys: each keeps what is finished and says clearly
what happened (two grids on one study, escapes from results_dir, damaged results, mixed
configs in one study, failed reports, full disks, Ctrl-C, --set against a grid)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.cli import main
from reports.report import report
from tests.test_reports import fake_run

SMOKE = Path(__file__).parents[1] / "configs" / "smoke.toml"


def fast(tmp_path: Path, *extra: str) -> list[str]:
    sets = [f"results_dir={json.dumps(str(tmp_path / 'results'))}", "train.steps_per_stage=2", "eval.limit=4",
            "tasks.train_size=12", "tasks.test_size=4", "tasks.names=['logic']", *extra]
    return [arg for s in sets for arg in ("--set", s)]


def test_a_second_grid_on_the_same_study_is_refused(tmp_path, capsys):
    from bench.launch.study_lock import study_lock
    from bench.run.cells import load_grid

    grid = load_grid(SMOKE, {"results_dir": str(tmp_path / "results")})
    with study_lock(grid.study_dir.resolve()):
        assert main(["grid", str(SMOKE), *fast(tmp_path)[:2]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: another isobench grid") and f"pid {os.getpid()}" in err
    with study_lock(grid.study_dir.resolve()):  # released: the lock can be taken again
        pass


def test_a_symbolic_link_cannot_lead_a_run_out_of_results_dir(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "smoke").symlink_to(outside)
    assert main(["run", str(SMOKE), *fast(tmp_path)]) == 2
    assert "outside results_dir" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


def test_dotdot_and_absolute_studies_write_nothing_outside(tmp_path, capsys):
    for study in ("../escape", str(tmp_path / "abs")):
        assert main(["run", str(SMOKE), *fast(tmp_path, f"study={json.dumps(study)}")]) == 2
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("text", ["[]", '{"run": ', '{"schema_version": 2, "run": {"run_id": "x"}}'])
def test_a_damaged_result_is_reported_as_corrupt_and_rerun(tmp_path, capsys, text):
    assert main(["run", str(SMOKE), *fast(tmp_path)]) == 0
    (path,) = (tmp_path / "results" / "smoke").glob("*/result.json")
    path.write_text(text)
    capsys.readouterr()
    assert main(["grid", "--dry-run", str(SMOKE), *fast(tmp_path)]) == 0
    assert "corrupt" in capsys.readouterr().out
    printed = report(tmp_path / "results" / "smoke")
    assert f"corrupt: {path.parent.name}" in printed and str(path) in printed
    assert main(["run", str(SMOKE), *fast(tmp_path)]) == 0  # the same command redoes it
    assert json.loads(path.read_text())["run"]["status"] == "success"


def test_runs_of_different_configs_get_their_own_rows(tmp_path):
    study = tmp_path / "study"
    fake_run(study, "full_sft", 0, [[80, 30, 0], [40, 70, 0], [30, 50, 60]])
    fake_run(study, "full_sft", 1, [[70, 25, 0], [50, 65, 0], [40, 40, 70]])
    for seed, lr in ((0, 0.001), (1, 0.001)):
        path = study / f"full_sft-s{seed}" / "result.json"
        data = json.loads(path.read_text())
        data["config"] = {"seed": seed, "train": {"lr": lr}}
        path.write_text(json.dumps(data))
    fake_run(study, "full_sft", 9, [[10, 10, 10], [10, 10, 10], [10, 10, 10]])
    other = study / "full_sft-s9" / "result.json"
    data = json.loads(other.read_text())
    data["config"] = {"seed": 0, "train": {"lr": 0.01}}  # seed 0 again, at another lr: not a third seed
    other.write_text(json.dumps(data))
    printed = report(study)
    assert "full_sft (train.lr=0.001) | 2/2" in printed and "full_sft (train.lr=0.01)  | 1/1" in printed


def test_a_result_whose_scores_miss_a_task_is_not_tabulated(tmp_path):
    study = tmp_path / "study"
    fake_run(study, "full_sft", 0, [[80, 30, 0], [40, 70, 0], [30, 50, 60]])
    path = study / "full_sft-s0" / "result.json"
    data = json.loads(path.read_text())
    del data["stages"][1]["scores"]["b"]
    path.write_text(json.dumps(data))
    printed = report(study)
    assert "corrupt: full_sft-s0" in printed and "stage 1 scores ['a', 'c']" in printed


def test_cells_of_an_edited_grid_file_are_old_not_missing(tmp_path):
    from bench.launch.grid import write_manifest
    from bench.run.cells import load_grid

    grid_path = tmp_path / "grid.toml"
    grid_path.write_text(SMOKE.read_text().replace('study = "smoke"', f'study = "s"\nresults_dir = "{tmp_path}"'))
    write_manifest(load_grid(grid_path))
    fake_run(tmp_path / "s", "full_sft", 0, [[1.0, 2.0, 3.0]] * 3)
    grid_path.write_text(grid_path.read_text().replace("steps_per_stage = 15", "steps_per_stage = 10"))
    write_manifest(load_grid(grid_path))
    from reports.load import load_study

    statuses = [r.status for r in load_study(tmp_path / "s")]
    assert statuses.count("stale") == 4 and statuses.count("missing") == 4


def test_a_failed_report_keeps_the_previous_tables_and_out_writes_elsewhere(tmp_path, monkeypatch):
    import reports.report

    study = tmp_path / "study"
    fake_run(study, "full_sft", 0, [[80, 30, 0], [40, 70, 0], [30, 50, 60]])
    report(study)
    before = {p.name: p.read_bytes() for p in (study / "tables").iterdir()}

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(reports.report, "heatmaps", broken)
    with pytest.raises(RuntimeError):
        report(study)
    assert {p.name: p.read_bytes() for p in (study / "tables").iterdir()} == before
    assert not [p for p in study.iterdir() if p.name.startswith(".tables")]
    monkeypatch.undo()
    report(study, out_dir=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "main_sequential.md").is_file()


def test_a_full_disk_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    from bench.files import atomic_write

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(tmp_path / "result.json", "{}")
    assert os.listdir(tmp_path) == []


def test_unwritable_results_folder_is_named(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["run", str(SMOKE), *fast(tmp_path, f"results_dir={json.dumps(str(tmp_path / 'file' / 'r'))}")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_ctrl_c_prints_isobench_own_resume_line(tmp_path, capsys, monkeypatch):
    import bench.launch.grid

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.launch.grid, "run_grid", interrupted)
    assert main(["grid", str(SMOKE), *fast(tmp_path)[:2]]) == 130
    err = capsys.readouterr().err
    assert f"Resume with: isobench grid {SMOKE}" in err and "Tuner.restore" not in err


def test_set_against_a_grid_axis_is_refused_and_tables_can_be_replaced(tmp_path, capsys):
    assert main(["run", str(SMOKE), "--set", "method.name='lora'"]) == 2
    assert "would be overridden in every cell" in capsys.readouterr().err
    assert main(["grid", "--dry-run", str(SMOKE), "--set", 'grid.methods=["lora"]']) == 2
    assert "grid.method_options={}" in capsys.readouterr().err
    assert main(["grid", "--dry-run", str(SMOKE), "--set", 'grid.methods=["lora"]',
                 "--set", "grid.method_options={}"]) == 0
    out = capsys.readouterr().out
    assert "2 cells" in out and " lora " in out and " epi " not in out


@pytest.mark.slow
def test_a_sharded_run_killed_mid_stage_resumes_from_its_checkpoint_bit_for_bit(tmp_path, monkeypatch):
    """2 Ray Train workers SIGKILL themselves after step 22 (checkpoints every 5 steps); the rerun
    resumes from step 20 and ends with the losses, mask events and scores of an uninterrupted run."""
    config = Path(__file__).parents[1] / "configs" / "smoke.toml"
    args = ["run", str(config), "--cell", "2", "--set", "train.grad_accum=2", "--set", "train.workers=2",
            "--set", "train.checkpoint_every=5"]
    assert main([*args, "--set", f"results_dir={tmp_path / 'whole'}"]) == 0
    monkeypatch.setenv("ISOBENCH_FAULT_AT_STEP", "kill:22")
    assert main([*args, "--set", f"results_dir={tmp_path / 'killed'}"]) == 1
    monkeypatch.delenv("ISOBENCH_FAULT_AT_STEP")
    (killed,) = (tmp_path / "killed" / "smoke").glob("epi-*")
    assert (killed / "checkpoint" / "latest").read_text().split()[0] == "20"
    assert main([*args, "--set", f"results_dir={tmp_path / 'killed'}"]) == 0
    whole = tmp_path / "whole" / "smoke" / killed.name
    a, b = (json.loads((d / "result.json").read_text()) for d in (whole, killed))
    assert b["run"]["resumed_from"] == [20] and not (killed / "checkpoint").exists()
    assert [s["scores"] for s in a["evaluation"]["stages"]] == [s["scores"] for s in b["evaluation"]["stages"]]
    for name in ("metrics.jsonl", "events/method.jsonl"):
        lines = [[{k: v for k, v in json.loads(x).items() if k != "train_s"} for x in (d / name).read_text().splitlines()]
                 for d in (whole, killed)]
        assert lines[0] == lines[1] != []
