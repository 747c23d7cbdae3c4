"""The report's verdicts: comparisons.csv recomputed from the runs' items.jsonl by hand, the
baseline option, bold only where a corrected test separates a value, and marks only from the
adjusted p."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from scipy import stats

from reports import comparisons as cmp
from reports.report import ReportRefused, report
from reports.tables import Table
from tests.test_reports import fake_run

MATRICES = {"full_sft": [[80, 30, 0], [40, 70, 0], [30, 50, 60]], "epi": [[75, 30, 0], [70, 60, 0], [65, 60, 50]]}


@pytest.fixture
def one_seed(tmp_path: Path) -> Path:
    study = tmp_path / "smoke"
    for method, matrix in MATRICES.items():
        fake_run(study, method, 0, matrix, current=True)
    return study


def final_items(run_dir: Path, task: str) -> dict[int, float]:
    """The last stage's per-item scores of ``task``, read straight from items.jsonl."""
    records = [json.loads(line) for line in (run_dir / "evaluation" / "items.jsonl").read_text().splitlines()]
    last = max(r["evaluation"] for r in records if r["evaluation"] != "base")
    record = next(r for r in records if r["evaluation"] == last and r["task"] == task)
    return dict(zip(record["ids"], record["scores"]))


def test_the_mcnemar_p_of_each_row_is_scipys_on_the_discordant_items(one_seed):
    report(one_seed)
    rows = [r for r in csv.DictReader((one_seed / "tables" / "comparisons.csv").open()) if r["metric"] == "score"]
    assert [r["task"] for r in rows] == ["a", "b", "c"] and list(rows[0]) == cmp.COLUMNS
    for row in rows:
        a, b = final_items(one_seed / "epi-s0", row["task"]), final_items(one_seed / "full_sft-s0", row["task"])
        only_a = sum(a[i] == 100 and b[i] == 0 for i in a)
        only_b = sum(a[i] == 0 and b[i] == 100 for i in a)
        assert float(row["p_value"]) == pytest.approx(stats.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)
        assert float(row["diff"]) == pytest.approx(sum(a[i] - b[i] for i in a) / len(a))
        assert row["n_seeds"] == "1" and "one seed" in row["test"]
    adjusted = sorted(float(r["p_holm"]) for r in rows)
    raw = sorted(float(r["p_value"]) for r in rows)
    assert adjusted[0] == pytest.approx(min(1.0, 3 * raw[0]))  # Holm over the family of 3 task comparisons


def test_the_baseline_can_be_changed_and_an_unknown_one_is_refused(one_seed):
    report(one_seed, baseline="epi")
    rows = list(csv.DictReader((one_seed / "tables" / "comparisons.csv").open()))
    assert {(r["method"], r["baseline"]) for r in rows} == {("full_sft", "epi")}
    with pytest.raises(ReportRefused, match="--baseline"):
        report(one_seed, baseline="epl")


def test_marks_and_bold_follow_the_adjusted_test(one_seed):
    report(one_seed)
    rows = {r["task"]: r for r in csv.DictReader((one_seed / "tables" / "comparisons.csv").open())
            if r["metric"] == "score"}
    table = (one_seed / "tables" / "main_sequential.md").read_text()
    epi = next(line for line in table.splitlines() if "| epi" in line)
    cells = [c.strip() for c in epi.split("|")[4:7]]  # the tasks a, b, c
    for task, cell in zip("abc", cells):
        significant = float(rows[task]["p_holm"]) < 0.05
        assert (cmp.MARK in cell) == significant, (task, cell)
        assert cell.startswith("**") == significant  # here the best rows are exactly the significant ones
    assert "Holm's correction over the family of all 3 (method, task) score comparisons" in table
    assert "Resolution: the smallest difference in final score" in table


def test_a_best_mean_within_the_seed_spread_is_not_bold():
    """The quickstart's case: 20.0 ± 24.7 against 16.2 ± 23.0 over two seeds each."""
    close = Table("t", ["method"], ["L arithmetic"], [(["epi"], [[37.5, 2.5]]), (["full_sft"], [[32.5, 0.0]])], [True])
    assert cmp.separated_columns(close) == [False]
    assert "**" not in close.markdown()
    apart = Table("t", ["method"], ["x"], [(["a"], [[80.0, 81.0, 79.0]]), (["b"], [[20.0, 21.0, 19.5]])], [True])
    assert cmp.separated_columns(apart) == [True]
    apart.separated = cmp.separated_columns(apart)
    assert "**80.0 ± 1.0**" in apart.markdown()


def test_a_method_is_compared_on_its_seeds_only(tmp_path):
    """Seeds pair by seed number: a method's extra seed has no partner and is left out."""
    study = tmp_path / "s"
    fake_run(study, "full_sft", 0, MATRICES["full_sft"], current=True)
    fake_run(study, "epi", 0, MATRICES["epi"], current=True)
    fake_run(study, "epi", 1, MATRICES["full_sft"], current=True)
    report(study)
    rows = [r for r in csv.DictReader((study / "tables" / "comparisons.csv").open()) if r["metric"] == "score"]
    assert {r["n_seeds"] for r in rows} == {"1"}


def test_only_the_adjusted_p_decides_a_mark(tmp_path):
    """Task a: 6 items right only under epi (raw p 0.031), one of a family of three (Holm 0.094)."""
    study = tmp_path / "s"
    fake_run(study, "full_sft", 0, MATRICES["full_sft"], current=True)
    fake_run(study, "epi", 0, [[75, 30, 0], [70, 60, 0], [60, 60, 50]], current=True)
    report(study)
    row = next(r for r in csv.DictReader((study / "tables" / "comparisons.csv").open())
               if r["metric"] == "score" and r["task"] == "a")
    assert float(row["p_value"]) < 0.05 < float(row["p_holm"]) and row["verdict"] == "below resolution"
    epi = next(line for line in (study / "tables" / "main_sequential.md").read_text().splitlines() if "| epi" in line)
    assert cmp.MARK not in epi
