"""Stage plans: the multistage regime's groups, CPI-FT's grouping, SLERP fusion and the freezing
of earlier groups' cores, and the plan recorded in result.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.config import ConfigError, merge, parse_override
from bench.run import regimes
from bench.run.cells import load_run_config
from methods.parts.merging import connected_groups, overlap_matrix, slerp
from tests.harness import FAST, Harness

SMOKE = str(Path(__file__).parents[1] / "configs" / "smoke.toml")
TASKS = ["arithmetic", "logic", "program", "format"]


def test_multistage_groups_explicit_and_random():
    explicit = regimes.plan("multistage", TASKS, [["logic", "format"], ["arithmetic", "program"]])
    assert explicit.groups == [["logic", "format"], ["arithmetic", "program"]]
    split = regimes.plan("multistage", TASKS, (), 3, seed=5)
    assert sorted(t for g in split.groups for t in g) == sorted(TASKS) and sorted(map(len, split.groups)) == [1, 1, 2]
    assert split.groups == regimes.plan("multistage", TASKS, (), 3, seed=5).groups  # seeded
    assert {str(regimes.plan("multistage", TASKS, (), 3, seed=s).groups) for s in range(6)} != {str(split.groups)}
    assert "seed 5" in split.details["source"]


def run_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(f'study = "t"\nregime = "sequential"\n[tasks]\nnames = {json.dumps(TASKS)}\n')
    return path


@pytest.mark.parametrize("override, message", [
    ("tasks.groups=[['arithmetic'], ['logic']]", "every task of tasks.names"),
    ("tasks.groups=[['arithmetic', 'logic'], ['program', 'format', 'logic']]", "exactly once"),
    ("tasks.num_groups=5", "1 to 4"),
])
def test_bad_multistage_groups_are_refused_naming_the_key(tmp_path, override, message):
    sets = merge(parse_override("regime='multistage'"), parse_override(override))
    with pytest.raises(ConfigError, match=message) as error:
        load_run_config(run_file(tmp_path), sets)
    assert "run.toml" in str(error.value) and "tasks." in str(error.value)


def test_a_method_planning_its_stages_needs_the_multistage_regime(tmp_path):
    with pytest.raises(ConfigError, match="allowed: 'multistage'"):
        load_run_config(run_file(tmp_path), {"method": {"name": "cpi_ft"}})


def test_connected_groups_of_hand_made_cores():
    sizes = {"w": 100}
    core = {"a": {"w": torch.arange(0, 10)}, "b": {"w": torch.arange(5, 15)}, "c": {"w": torch.arange(50, 60)},
            "d": {"w": torch.arange(58, 68)}, "e": {"w": torch.arange(90, 100)}}
    overlap = overlap_matrix(list(core.values()), sizes)
    assert overlap[0][1] == pytest.approx(5 / 15) and overlap[2][3] == pytest.approx(2 / 18) and overlap[0][2] == 0
    assert connected_groups(list(core), overlap, 0.1) == [["a", "b"], ["c", "d"], ["e"]]
    assert connected_groups(list(core), overlap, 0.2) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert connected_groups(list(core), overlap, 0.0) == [list(core)]  # every pair has overlap >= 0


def test_slerp_matches_the_direct_formula():
    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    x, y = a.double().flatten(), b.double().flatten()
    angle = math.acos(float(x @ y / (x.norm() * y.norm())))
    for omega in (0.0, 0.3, 0.5, 1.0):
        expected = (math.sin((1 - omega) * angle) * x + math.sin(omega * angle) * y) / math.sin(angle)
        assert torch.allclose(slerp(a, b, omega, 5e-4).double().flatten(), expected, atol=1e-6)
    nearly = a + 1e-4 * b  # collinear within epsilon: linear interpolation
    assert torch.allclose(slerp(a, nearly, 0.25, 5e-4), 0.75 * a + 0.25 * nearly, atol=1e-7)


def test_cpi_ft_freezes_earlier_groups_cores_bit_exactly_and_fuses():
    tasks = ("arithmetic", "format", "program")
    plain = Harness("full_sft", tasks=tasks, regime="sequential")
    h = Harness("cpi_ft", FAST["cpi_ft"], tasks=tasks, regime="sequential")
    details = h.plan.details
    assert h.plan.groups == [[t] for t in tasks]  # tau = 1: no two cores are identical
    assert set(details["core_sizes"]) == set(tasks) and details["fusion"]["omega"] == 0.5
    assert len(details["core_overlap"]["jaccard"]) == 3
    # Fusion moved the starting weights away from the base model.
    base, fused = dict(plain.model.named_parameters()), dict(h.model.named_parameters())
    assert any(not torch.equal(base[n], fused[n]) for n in base)
    params = dict(h.model.named_parameters())
    first_core = h.method.cores[tasks[0]]
    h.steps(3)
    h.next_stage()  # stage 1 freezes the cores of group 0
    frozen = {n: params[n].detach().reshape(-1)[i.long()].clone() for n, i in first_core.items() if i.numel()}
    h.steps(3)
    h.next_stage()  # stage 2 freezes groups 0 and 1
    h.steps(3)
    for n, values in frozen.items():
        assert torch.equal(params[n].detach().reshape(-1)[first_core[n].long()], values), n
    assert h.method.isolated.count() >= sum(i.numel() for i in first_core.values())


def test_multistage_run_records_the_plan_and_cpi_ft_its_grouping(tmp_path):
    sets = [f"results_dir={json.dumps(str(tmp_path))}", "train.steps_per_stage=2", "eval.limit=4",
            "tasks.train_size=16", "tasks.test_size=4", "tasks.num_groups=2",
            "grid.methods=['cpi_ft']", "grid.regimes=['multistage']",
            "grid.method_options={cpi_ft = {probe_steps = 2, rho = 0.05, group_order = 'tasks'}}"]
    assert main(["run", SMOKE, *[a for s in sets for a in ("--set", s)]]) == 0
    (path,) = tmp_path.glob("smoke/*/result.json")
    result = json.loads(path.read_text())
    plan = result["evaluation"]["plan"]
    assert plan["source"].startswith("method cpi_ft") and sorted(t for g in plan["groups"] for t in g) == sorted(TASKS)
    assert [s["trained_on"] for s in result["evaluation"]["stages"]] == plan["groups"]
    assert set(plan["core_sizes"]) == set(TASKS) and plan["fusion"]["epsilon"] == 5e-4


def test_an_entry_in_several_cores_comes_from_the_task_that_moved_it_most():
    from methods.cpi_ft import strongest

    index, value = strongest([torch.tensor([1, 2]), torch.tensor([2, 3])], [torch.tensor([10.0, 20.0]),
                             torch.tensor([21.0, 30.0])], [torch.tensor([0.1, 0.5]), torch.tensor([0.9, 0.2])])
    assert index.tolist() == [1, 2, 3] and value.tolist() == [10.0, 21.0, 30.0]
    index, value = strongest([torch.tensor([2]), torch.tensor([2])], [torch.tensor([5.0]), torch.tensor([6.0])],
                             [torch.tensor([0.7]), torch.tensor([0.3])])
    assert index.tolist() == [2] and value.tolist() == [5.0]
