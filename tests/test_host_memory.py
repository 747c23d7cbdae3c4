"""The memory plan on a CPU: the process itself counts, a run's peak is its own even in a process
that ran something before, and a grid refuses a cell over a trial's share of host memory."""

from __future__ import annotations

import json

import pytest
import torch

from bench.run.cells import load_grid
from bench.run.memory_plan import PROCESS_BASELINE, plan_cell
from tests.test_faults import SMOKE


def test_on_a_cpu_the_plan_counts_the_process_itself(tmp_path):
    cell = load_grid(SMOKE, {"results_dir": str(tmp_path)}).cells[0]
    plan = plan_cell(cell, None)
    assert plan.host == PROCESS_BASELINE and plan.total >= PROCESS_BASELINE + plan.parameters
    assert "host 0.6" in plan.line()


def rss() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) * 1024


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_a_runs_peak_leaves_out_what_an_earlier_run_of_its_process_freed(tmp_path, monkeypatch):
    """A process that freed 1.5 GiB (kept by the tuned allocator, as a reused Ray worker keeps an
    earlier trial's memory) then runs a tiny cell: its measured peak is the cell's own."""
    from bench.engine.host_memory import keep_freed_memory
    from bench.run.cells import load_cells
    from bench.run.execution import execute

    if not keep_freed_memory():
        pytest.skip("not glibc: freed memory goes back to the kernel on its own")
    before = rss()
    blocks = [torch.ones(96 * 2**20 // 4) for _ in range(16)]  # 1.5 GiB in 96 MiB blocks, below the mmap threshold
    del blocks
    assert rss() - before > 2**30  # kept by the process
    cell = load_cells(SMOKE, {"results_dir": str(tmp_path), "train": {"steps_per_stage": 2},
                              "tasks": {"names": ["logic"], "train_size": 12, "test_size": 4},
                              "eval": {"limit": 4}})[0]
    result = execute(cell, progress=False)
    assert result.ok
    assert result.train.peak_memory_bytes < before + 2**30, (result.train.peak_memory_bytes, before)


def test_a_grid_on_a_cpu_records_a_cell_over_a_trials_memory_share_as_failed_before_it_starts(tmp_path, monkeypatch,
                                                                                             capsys):
    from bench.cli import main
    from bench.launch import grid as grid_module

    monkeypatch.setattr(grid_module, "host_share", lambda per_trial, most: 2**28)  # 256 MiB a trial: the
    sets = [f"results_dir={json.dumps(str(tmp_path))}", "grid.methods=['full_sft']", "grid.seeds=[0]",  # process
            "grid.method_options={}"]  # alone needs more
    assert main(["grid", str(SMOKE), *[a for s in sets for a in ("--set", s)]]) == 1
    err = capsys.readouterr().err
    assert "a trial's share of this machine's memory" in err and "is 0.2 GiB" in err
    result = json.loads(next((tmp_path / "smoke").glob("full_sft-*/result.json")).read_text())
    assert result["run"]["status"] == "failed" and result["run"]["error"]["type"] == "DoesNotFit"
    assert not (tmp_path / "smoke" / ".ray").exists()  # nothing was started


def test_plan_check_prints_plan_beside_the_measured_peak_and_fails_outside_its_tolerance(tmp_path, capsys):
    from bench.run.execution import execute
    from bench.tools.plan_check import main as plan_check

    sets = [f"results_dir={json.dumps(str(tmp_path))}", "grid.methods=['full_sft']", "grid.seeds=[0]",
            "grid.method_options={}", "train.steps_per_stage=2", "tasks.names=['logic']", "tasks.train_size=12",
            "tasks.test_size=4", "eval.limit=4"]
    args = [str(SMOKE), *[a for s in sets for a in ("--set", s)]]
    from bench.config import merge, parse_override

    overrides: dict = {}
    for item in sets:
        overrides = merge(overrides, parse_override(item), keep_replace=True)
    cell = load_grid(SMOKE, overrides).cells[0]
    result = execute(cell, progress=False)
    assert plan_check([*args, "--tolerance", "100"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {cell.run_id}"))
    plan, measured, ratio = (float(x) for x in row.split("|")[4:7])
    assert measured == pytest.approx(result.train.peak_memory_bytes / 2**30, abs=0.01)
    assert ratio == pytest.approx(measured / plan, abs=0.02) and row.split("|")[3].strip() == cell.precision
    assert plan_check([*args, "--tolerance", "0.0001"]) == 1
