"""The cost plan: FLOPs by hand for one cell, the grid total in the dry run, and measured cells
replacing the assumption for the cells like them."""

from __future__ import annotations

import dataclasses

import pytest

from bench.cli import main
from bench.run.cells import load_grid
from bench.run.cost_plan import Assumptions, parameters, plan_costs, work
from tests.test_faults import SMOKE


@pytest.fixture
def grid(tmp_path):
    return load_grid(SMOKE, {"results_dir": str(tmp_path / "r")})


def test_training_and_evaluation_flops_by_hand(grid):
    cell = grid.cells[0]  # full_sft, 4 sequential stages x 15 steps x 8 rows x 96 tokens
    n, trainable = parameters(cell)
    assert n == trainable
    tokens, train, evaluation = work(cell)
    assert tokens == 4 * 15 * 8 * 96 and train == tokens * 6 * n
    # 4 tasks x 30 items: a forward for the score and one for the gold NLL over 96 tokens, and
    # 8 generated tokens for the 3 generating tasks
    assert evaluation == 2 * n * 30 * (4 * 2 * 96 + 3 * 8)
    cost = plan_costs([cell], Assumptions(mfu=0.5, eval_mfu=0.1, device_flops=1e12))[0]
    assert cost.source == "assumed" and cost.train_h == pytest.approx(train / 0.5e12 / 3600)
    assert cost.eval_h == pytest.approx(4 * evaluation / 0.1e12 / 3600)


def test_measured_cells_replace_the_assumption_for_cells_like_them(grid):
    from bench.run import results as res
    from bench.run.status import new_run_info
    from reports.schema import Result, TrainInfo

    done = grid.cells[0]  # full_sft seed 0; cells[1] is full_sft seed 1, the same per step
    done.run_dir.mkdir(parents=True)
    run = dataclasses.replace(new_run_info(done), status="success")
    res.write_result(done.run_dir, Result(run=run, train=TrainInfo(timing={"train_s": 36.0, "eval_s": 18.0})))
    costs = plan_costs(grid.cells, Assumptions())
    assert [c.source for c in costs[:4]] == ["measured", "calibrated", "assumed", "assumed"]
    assert costs[0].train_h == pytest.approx(0.01) and costs[0].eval_h == pytest.approx(0.005)
    assert costs[1].train_h == pytest.approx(0.01) and costs[1].eval_h == pytest.approx(0.005)


def test_the_dry_run_prints_every_cells_cost_and_the_grids(capsys):
    assert main(["grid", "--dry-run", str(SMOKE), "--assume-mfu", "0.3"]) == 0
    out = capsys.readouterr().out
    assert out.count("      cost ") == 4 and "cost of the grid:" in out and "training at 30%" in out
    assert main(["grid", "--dry-run", str(SMOKE), "--assume-mfu", "3"]) == 2
    assert "--assume-mfu 3.0: allowed: a fraction in (0, 1]" in capsys.readouterr().err


def test_on_a_cpu_the_cost_is_a_fraction_of_this_cpus_probed_throughput(grid, monkeypatch):
    from bench.run import cost_plan

    cell = grid.cells[0]
    monkeypatch.setattr(cost_plan, "on_gpu", lambda: False)
    monkeypatch.setattr(cost_plan, "cpu_flops", lambda policy, threads=1: 2e11)
    cpu = cost_plan.Assumptions()
    assert (cpu.mfu, cpu.eval_mfu) == cost_plan.CPU_FRACTIONS and cpu.peak(cell) == 2e11
    _, train, _ = work(cell)
    assert plan_costs([cell], cpu)[0].train_h == pytest.approx(train / (cost_plan.CPU_FRACTIONS[0] * 2e11) / 3600)
    monkeypatch.setattr(cost_plan, "on_gpu", lambda: True)
    gpu = cost_plan.Assumptions()
    assert (gpu.mfu, gpu.eval_mfu) == cost_plan.GPU_FRACTIONS and gpu.peak(cell) == cost_plan.H100_BF16_FLOPS
    assert cost_plan.Assumptions(device_flops=1e12).peak(cell) == 1e12  # a stated peak is used as it is


def test_the_cpu_probe_measures_a_finite_throughput():
    from bench.run.cost_plan import cpu_flops

    assert 1e8 < cpu_flops("fp32") < 1e14


def test_the_analyses_own_passes_count_as_training_work(tmp_path):
    plain = load_grid(SMOKE, {"results_dir": str(tmp_path / "a")}).cells[0]
    measured = load_grid(SMOKE, {"results_dir": str(tmp_path / "b"),
                                 "analysis": {"gradient_conflict": {"every": 5, "batches": 2}}}).cells[0]
    n, trainable = parameters(plain)
    tokens, train, _ = work(plain)
    _, with_conflict, _ = work(measured)
    # 4 stages x 15 steps = 60 steps: a measurement at steps 0, 5, ..., 55 (12), 4 tasks x 2 batches of 8 x 96
    assert with_conflict - train == 12 * 4 * 2 * 8 * 96 * (6 * n)
