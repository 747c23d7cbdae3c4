"""Reports of the papers' analyses from hand-made result files: multistage forgetting and
learning, the drift and conflict tables, the sensitivity table and plot, drift plots with stage
boundaries for any event source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.metrics import backward_transfer, forgetting, learning, own_stages
from reports.report import report

TASKS = ["a", "b", "c"]


def test_own_stages_forgetting_and_learning_over_groups():
    own = own_stages([["a", "c"], ["b"]], TASKS)
    assert own == [0, 1, 0]
    A = [[60, 10, 40], [50, 70, 45]]  # stage 0 trains a and c, stage 1 trains b
    assert forgetting(A, own) == [10, -5]  # b is trained last: not forgettable
    assert backward_transfer(A, own) == pytest.approx(((50 - 60) + (45 - 40)) / 2)
    assert learning(A, [20, 0, 30], own) == [40, 60, 10]
    assert learning(A, [None, 0, 30], own)[0] is None
    with pytest.raises(ValueError, match="trained in 0 stages"):
        own_stages([["a"], ["b"]], TASKS)


def write_run(study: Path, run_id: str, method: str, seed: int, regime: str, groups: list[list[str]],
              matrix: list[list[float]], options: dict | None = None, observers: dict | None = None,
              events: list[dict] | None = None, train: dict | None = None) -> None:
    stages = [{"stage": k, "trained_on": g, "scores": dict(zip(TASKS, row)), "nll": {t: 1.0 for t in TASKS},
               "steps_done": 10 * (k + 1)} for k, (g, row) in enumerate(zip(groups, matrix))]
    config = {"seed": seed, "method": {"name": method, "options": options or {}}, **({"train": train} if train else {})}
    result = {"schema_version": 2,
              "run": {"run_id": run_id, "study": study.name, "status": "success", "method": method, "regime": regime,
                      "backbone": "tiny", "seed": seed, "tasks": TASKS, "config": config},
              "evaluation": {"base": {t: {"score": 5.0} for t in TASKS}, "stages": stages,
                             "chance": {t: 0.0 for t in TASKS}, "plan": {"groups": groups}},
              "train": {"observers": observers or {}}}
    (study / run_id / "events").mkdir(parents=True)
    (study / run_id / "result.json").write_text(json.dumps(result))
    (study / run_id / "events" / "importance_drift.jsonl").write_text("".join(json.dumps(e) + "\n"
                                                                             for e in events or []))


DRIFT = {"snapshots": 3, "step": [5, 10, 15], "jaccard_prev": [None, 0.5, 0.7], "jaccard_first": [1.0, 0.5, 0.4],
         "spearman_prev": [None, 0.9, 0.8]}
CONFLICT = {"measurements": 2, "step": [0, 10], "mean_cosine": [0.2, -0.1], "negative_fraction": [0.0, 2 / 3],
            "cosines": [{"a|b": 0.3, "a|c": 0.1, "b|c": 0.2}, {"a|b": -0.2, "a|c": 0.1, "b|c": -0.2}]}


@pytest.fixture
def study(tmp_path: Path) -> Path:
    s = tmp_path / "analysis"
    events = [{"kind": "set_drift", "set": "importance top-0.01", "index": i + 1, "step": 5 * (i + 1), "stage": i,
               "jaccard_prev": DRIFT["jaccard_prev"][i], "jaccard_first": DRIFT["jaccard_first"][i], "fraction": 0.01}
              for i in range(3)]
    for seed, groups in ((0, [["a", "c"], ["b"]]), (1, [["b"], ["a", "c"]])):
        write_run(s, f"full_sft-ms{seed}", "full_sft", seed, "multistage", groups, [[60, 10, 40], [50, 70, 45]],
                  observers={"importance_drift": DRIFT, "gradient_conflict": CONFLICT}, events=events)
    for rho, refresh, shift in ((0.01, 5, 0), (0.01, 10, 4), (0.02, 5, 8), (0.02, 10, 12)):
        for seed in (0, 1):
            write_run(s, f"epi-{rho}-{refresh}-{seed}", "epi", seed, "sequential", [["a"], ["b"], ["c"]],
                      [[50 + shift + seed, 0, 0], [40 + shift, 60, 0], [30 + shift, 50, 70]],
                      {"rho": rho, "refresh_every": refresh})
    return s


def test_multistage_forgetting_learning_drift_and_conflict_tables(study):
    report(study)
    tables = study / "tables"
    forgetting_csv = (tables / "forgetting_multistage.csv").read_text().splitlines()
    header, row = forgetting_csv[0].split(","), forgetting_csv[1].split(",")
    values = dict(zip(header, row))
    # seed 0 trains b last (F a = 60 - 50 = 10, F c = 40 - 45 = -5); seed 1 trains b first (F b = 10 - 70)
    assert values["F a_mean"] == "10.0000" and values["F a_n"] == "1" and values["F b_mean"] == "-60.0000"
    assert values["F c_mean"] == "-5.0000" and values["BWT_n"] == "2"
    assert values["L a_n"] == "2"  # learning is defined for every task of every run
    drift = (tables / "drift_multistage.md").read_text()
    assert "| tiny       | full_sft | 2/2    |" in drift and "0.60 ± 0.00" in drift  # mean of J prev 0.5, 0.7
    conflict = (tables / "conflict_multistage.csv").read_text()
    assert "full_sft" in conflict and ",33.3333,0.0000,2" in conflict  # neg. pairs: mean of 0 and 2/3
    assert (tables / "drift_multistage_tiny_full_sft_importance_drift.png").stat().st_size > 1000


def test_a_sweep_gets_one_sensitivity_row_per_variant_and_a_plot(study):
    report(study)
    tables = study / "tables"
    lines = (tables / "sensitivity_sequential.csv").read_text().splitlines()
    assert lines[0].startswith("backbone,method,refresh_every,rho,runs,Avg. Norm._mean")
    assert len(lines) == 1 + 4 and all(",2/2," in line for line in lines[1:])
    main = (tables / "main_sequential.md").read_text()
    assert main.count("epi (") == 4  # variants are rows of their own, never pooled as seeds
    assert (tables / "sensitivity_sequential_tiny_epi_rho.png").stat().st_size > 1000
    assert (tables / "sensitivity_sequential_tiny_epi_refresh_every.png").stat().st_size > 1000


def test_an_lr_axis_gets_the_best_lr_beside_the_mean_over_lrs(tmp_path):
    s = tmp_path / "lrs"
    # final scores: lr 1e-4 keeps a (no forgetting), 1e-3 learns most, 1e-2 forgets everything
    finals = {1e-4: [[40, 0, 0], [40, 30, 0], [40, 30, 20]], 1e-3: [[80, 0, 0], [60, 80, 0], [50, 70, 90]],
              1e-2: [[90, 0, 0], [0, 90, 0], [0, 0, 90]]}
    for lr, matrix in finals.items():
        for seed in (0, 1):
            write_run(s, f"full_sft-{lr}-{seed}", "full_sft", seed, "sequential", [["a"], ["b"], ["c"]], matrix,
                      train={"lr": lr})
    report(s)
    lines = (s / "tables" / "lr_robustness_sequential.csv").read_text().splitlines()
    assert len(lines) == 2
    row = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert row["best lr"] == "0.001" and row["lrs"] == "3"
    best, mean = float(row["Avg. Norm. (best lr)_mean"]), float(row["Avg. Norm. (mean over lrs)_mean"])
    assert best == 100.0 and mean < best  # normalized by the best row: lr 1e-3's final scores are the best
    # Avg. F: 1e-3 forgets (80-50 + 80-70) / 2 = 20; over the lrs (0 + 20 + 90) / 3
    assert float(row["Avg. F (best lr)_mean"]) == 20.0
    assert float(row["Avg. F (mean over lrs)_mean"]) == pytest.approx(110 / 3, abs=1e-3)
