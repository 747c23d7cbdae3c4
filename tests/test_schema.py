"""The versioned result schema: round trip, upgrade of schema 1, refusal of unknown versions and
of damaged files, each naming the file."""

from __future__ import annotations

import json

import pytest

from reports.schema import SCHEMA_VERSION, Result, ResultError, RunInfo, StageResult, read_result_file


def sample() -> Result:
    run = RunInfo(run_id="epi-0123456789", study="s", status="success", method="epi", regime="sequential",
                  backbone="tiny-llama", seed=1, tasks=["a", "b"], config={"seed": 1})
    result = Result(run=run)
    result.evaluation.stages.append(StageResult(stage=0, trained_on=["a"], steps_done=3,
                                                scores={"a": 50.0, "b": None}, nll={"a": 1.0, "b": 2.0}))
    result.provenance.git_dirty = True
    result.provenance.git_diff_sha1 = "ab" * 20
    return result


def test_round_trip_keeps_every_field(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(sample().to_json())
    back = read_result_file(path)
    assert back == sample() and json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_schema_1_files_are_upgraded(tmp_path):
    v1 = {"run_id": "full_sft-x", "method": "full_sft", "backbone": "b", "regime": "multitask", "seed": 0,
          "status": "success", "tasks": ["a"], "stages": [{"stage": 0, "trained_on": ["a"], "steps_done": 2,
                                                           "scores": {"a": 1.0}, "nll": {"a": 0.5}}],
          "train": {"steps": 2, "wall_s": 3.0}, "versions": {"torch": "2"}, "git_commit": "c", "chance": {"a": 0.0}}
    (tmp_path / "result.json").write_text(json.dumps(v1))
    r = read_result_file(tmp_path / "result.json")
    assert r.run.status == "success" and r.evaluation.stages[0].scores == {"a": 1.0}
    assert r.train.wall_s == 3.0 and r.train.summary == {"steps": 2} and r.provenance.git_commit == "c"


@pytest.mark.parametrize("text,match", [
    ('{"schema_version": 99, "run": {}}', "schema_version 99 is not readable"),
    ('{"run_id": ', "corrupt"),
    ("[]", "not a result object"),
    ('{"schema_version": 2, "run": {"run_id": "x"}}', "lacks"),
    (json.dumps({**sample().to_dict(), "run": {**sample().to_dict()["run"], "status": "done"}}), "run.status"),
    (json.dumps({**sample().to_dict(), "evaluation": {"stages": {}}}), "must be a list"),
])
def test_damaged_or_unknown_files_are_refused_naming_the_file(tmp_path, text, match):
    path = tmp_path / "result.json"
    path.write_text(text)
    with pytest.raises(ResultError, match=match) as e:
        read_result_file(path)
    assert str(path) in str(e.value)


def test_missing_file_is_none(tmp_path):
    assert read_result_file(tmp_path / "result.json") is None
