"""Metrics on hand-computed matrices, golden tables from a hand-made study, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reports.metrics import (
    average_forgetting,
    average_normalized,
    backward_transfer,
    change_vs_base,
    drift_series,
    forgetting,
    mean_std,
    normalized_score,
)
from reports.report import report
from reports.schema import upgrade_v1

GOLDEN = Path(__file__).parent / "golden"
ITEMS = 20  # test items per task in the fake runs: a score s is s / 5 items right
RETENTION_RISE = {"full_sft": 0.2, "epi": 0.05}  # retention NLL rise per stage


def item_scores(score: float, shift: int) -> list[float]:
    """Item scores with mean ``score``: ``score / 5`` consecutive items right, starting at ``shift``."""
    right = {(shift + i) % ITEMS for i in range(round(score / 100 * ITEMS))}
    return [100.0 if i in right else 0.0 for i in range(ITEMS)]


BUDGETS = {"full_sft": {"updated_share": 1.0, "state_bytes_per_param": 0.0},
           "epi": {"updated_share": 0.9875, "state_bytes_per_param": 4.125}}
TASKS = ["a", "b", "c"]


def test_normalized_score_and_average():
    assert normalized_score(62.5, 25.0, 100.0) == 50.0
    assert normalized_score(10.0, 25.0, 100.0) == -20.0
    assert normalized_score(30.0, 30.0, 30.0) is None
    assert average_normalized({"a": 50.0, "b": 20.0}, {"a": 0.0, "b": 20.0}, {"a": 100.0, "b": 20.0}) == 50.0


def test_forgetting_and_bwt_by_hand():
    A = [[80, 10, 0],
         [60, 70, 5],
         [50, 75, 90]]
    assert forgetting(A) == [30, -5]  # b improves after its stage: negative forgetting
    assert average_forgetting(A) == 12.5
    assert backward_transfer(A) == pytest.approx(((50 - 80) + (75 - 70)) / 2)
    assert average_forgetting([[1.0]]) is None and backward_transfer([[1.0]]) is None
    before = [row[:] for row in A]
    forgetting(A)
    assert A == before  # inputs are never mutated


def test_mean_std_and_change_vs_base():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert mean_std([4.0]) == (4.0, None, 1) and mean_std([]) == (None, None, 0)
    assert change_vs_base({"a": 30.0}, {"a": 40.0}) == {"a": -10.0}


def test_drift_series_orders_by_index():
    events = [{"index": 2, "step": 20, "jaccard_prev": 0.5, "jaccard_first": 0.5, "fraction": 0.01},
              {"index": 1, "step": 10, "jaccard_prev": None, "jaccard_first": 1.0, "fraction": 0.01}]
    assert drift_series(events)["step"] == [10, 20] and drift_series(events)["jaccard_prev"] == [None, 0.5]


def fake_run(study: Path, method: str, seed: int, matrix: list[list[float]], status: str = "success",
             current: bool = False) -> None:
    """A run folder: the flat schema-1 result file (``current``: the current schema, with the
    budget, retention and per-item records a run writes today)."""
    run_id = f"{method}-s{seed}"
    stages = [{"stage": k, "trained_on": [TASKS[k]], "scores": dict(zip(TASKS, row)),
               "nll": {t: 1.0 + k * 0.1 for t in TASKS}} for k, row in enumerate(matrix)]
    result = {"run_id": run_id, "method": method, "backbone": "tiny", "regime": "sequential", "seed": seed,
              "status": status, "tasks": TASKS, "stages": stages if status == "success" else [],
              "chance": {"a": 0.0, "b": 25.0, "c": 0.0},
              "base": {t: {"score": 10.0, "nll": 2.0} for t in TASKS} if seed == 0 else {},
              "error": None if status == "success" else {"type": "NonFiniteLoss", "message": "nan", "step": 3}}
    if not current:
        (study / run_id).mkdir(parents=True)
        (study / run_id / "result.json").write_text(json.dumps(result))
        return
    written = upgrade_v1(result)
    written["train"]["budget"] = BUDGETS[method]
    written["evaluation"]["retention_base"] = 3.0
    for k, stage in enumerate(written["evaluation"]["stages"]):
        stage["retention"] = 3.0 + RETENTION_RISE[method] * (k + 1) + 0.01 * seed
    (study / run_id).mkdir(parents=True)
    (study / run_id / "result.json").write_text(json.dumps(written))
    if status == "success":
        (study / run_id / "evaluation").mkdir()
        (study / run_id / "evaluation" / "items.jsonl").write_text("".join(
            json.dumps({"evaluation": k, "task": t, "ids": list(range(ITEMS)), "scores": item_scores(score, k + seed),
                        "nll": [1.0] * ITEMS}) + "\n" for k, row in enumerate(matrix) for t, score in zip(TASKS, row)))
    if method == "epi" and status == "success":
        (study / run_id / "events").mkdir()
        (study / run_id / "events" / "method.jsonl").write_text("".join(json.dumps(
            {"kind": "set_drift", "set": "mask", "index": i + 1, "step": 10 * (i + 1), "stage": i,
             "jaccard_prev": None if i == 0 else 0.5 + 0.1 * i, "jaccard_first": 1.0 - 0.2 * i,
             "fraction": 0.01}) + "\n" for i in range(3)))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    s = tmp_path / "study"
    fake_run(s, "full_sft", 0, [[80, 30, 0], [40, 70, 0], [30, 50, 60]], current=True)
    fake_run(s, "full_sft", 1, [[70, 25, 0], [50, 65, 0], [40, 40, 70]], current=True)
    fake_run(s, "epi", 0, [[75, 30, 0], [70, 60, 0], [65, 60, 50]], current=True)
    fake_run(s, "epi", 1, [[0, 0, 0]], status="failed", current=True)
    cells = [{"run_id": f"{m}-s{x}", "method": m, "backbone": "tiny", "regime": "sequential", "seed": x}
             for m in ("full_sft", "epi") for x in (0, 1, 2)]
    (s / "grid.json").write_text(json.dumps({"methods": ["full_sft", "epi"], "cells": cells}))
    return s


def test_tables_match_golden_files(study):
    printed = report(study)
    assert "2/3 (1 missing)" in printed and "1/3 (1 failed, 1 missing)" in printed
    for name in ("main_sequential.md", "main_sequential.csv", "forgetting.md", "forgetting.csv",
                 "main_sequential.tex", "comparisons.md", "comparisons.csv", "flips_sequential.md",
                 "flips_sequential.csv"):
        assert (study / "tables" / name).read_text() == (GOLDEN / name).read_text(), name
    assert (study / "tables" / "drift_sequential_tiny_epi.png").stat().st_size > 1000


def test_report_is_byte_identical_when_rebuilt(study):
    report(study)
    first = {p.name: p.read_bytes() for p in (study / "tables").iterdir()}
    report(study)
    assert {p.name: p.read_bytes() for p in (study / "tables").iterdir()} == first


def test_report_imports_neither_torch_nor_ray(study):
    code = ("import sys; from bench.cli import main; main(['report', sys.argv[1]]); "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'")
    done = subprocess.run([sys.executable, "-c", code, str(study)], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr


def test_report_flags_a_run_with_lost_updates(study):
    path = study / "full_sft-s0" / "result.json"
    v2 = json.loads(path.read_text())  # the fixture writes the current schema
    from reports.schema import read_result_file

    v2["train"]["observers"] = {"lost_update": [{"stage": 1, "fraction": 0.7}]}
    v2["train"]["precision"] = {"policy": "bf16-pure"}
    path.write_text(json.dumps(v2))
    assert read_result_file(path).train.observers["lost_update"][0]["fraction"] == 0.7
    printed = report(study)
    assert "lost updates: full_sft-s0 (bf16-pure): 70.0% of the entries with a gradient never changed in stage 1" in printed


def test_report_html_is_self_contained(study):
    report(study)
    page = (study / "tables" / "report.html").read_text()
    assert "<h2>main_sequential</h2>" in page and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # no CDN, no network
    assert "epi-s1" in page and "NonFiniteLoss" in page  # failed cells with their errors
    compared = page.split("<h2>Comparisons</h2>")[1].split("<h2>")[0]
    assert "<table>" in compared and "<pre>" not in compared  # an HTML table, not raw Markdown
    assert "forest_sequential" in page.split("<h2>Plots</h2>")[1]  # the forest plot of the comparisons
    assert "<h2>flips_sequential</h2>" in page and "Ret. ΔNLL" in page and "flips_sequential" in page.split(
        "<h2>Plots</h2>")[1]  # the flips table, the retention column and the flips plot


@pytest.mark.browser
def test_report_html_renders_in_headless_chromium(study, tmp_path):
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    report(study)
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,2400",
                    f"--screenshot={shot}", (study / "tables" / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 50_000  # tables and five inline plots, not a blank page
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (study / "tables" / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rendered = dom.split("<h2>Significance</h2>")[1].split("<h2>")[0]
    assert "<table>" in rendered and "<td>full_sft" in rendered  # rendered as a table
    for name in ("main_sequential", "forgetting", "flips_sequential"):
        assert dom.split(f"<h2>{name}</h2>")[1].lstrip().startswith("<table>"), name


def test_runs_whose_auto_precision_resolved_differently_are_not_pooled(study):
    """``train.precision = "auto"`` is fp32 on one CPU and bf16-mixed on another: the two seeds of
    full_sft become two rows, labelled by the policy, instead of one mean over both."""
    path = study / "full_sft-s1" / "result.json"
    data = json.loads(path.read_text())
    data["train"]["precision"] = {"policy": "bf16-mixed"}
    path.write_text(json.dumps(data))
    p0 = study / "full_sft-s0" / "result.json"
    d0 = json.loads(p0.read_text())
    d0["train"]["precision"] = {"policy": "fp32"}
    p0.write_text(json.dumps(d0))
    printed = report(study)
    assert "full_sft (precision=bf16-mixed)" in printed and "full_sft (precision=fp32)" in printed
