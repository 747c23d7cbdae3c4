"""``isobench export``: long tables that pandas loads, from which the tables' numbers follow."""

from __future__ import annotations

import pytest

from bench.cli import main
from reports.metrics import forgetting
from tests.test_reports import fake_run


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_loads_in_pandas_and_recomputes_forgetting(tmp_path, fmt):
    pd = pytest.importorskip("pandas")
    study = tmp_path / "study"
    matrix = [[80, 30, 0], [40, 70, 0], [30, 50, 60]]
    fake_run(study, "full_sft", 0, matrix)
    fake_run(study, "epi", 1, [[0, 0, 0]], status="failed")
    assert main(["export", str(study), "--format", fmt]) == 0
    read = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[fmt]
    scores = read(study / "export" / f"scores.{fmt}")
    runs = read(study / "export" / f"runs.{fmt}")
    assert len(scores) == 9 and set(scores["run_id"]) == {"full_sft-s0"}
    assert sorted(runs["status"]) == ["failed", "success"]
    a = scores.pivot(index="stage", columns="task", values="score").loc[:, ["a", "b", "c"]].values.tolist()
    assert forgetting(a) == forgetting(matrix) == [50, 20]
    # by hand from the long table: task a's best earlier score minus its final score
    task_a = scores[scores.task == "a"].set_index("stage")["score"]
    assert task_a.loc[[0, 1]].max() - task_a.loc[2] == 50
