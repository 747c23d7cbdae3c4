"""``isobench run``: a whole run on the tiny model, its result.json, skip-on-success, failures."""

from __future__ import annotations

import json
from pathlib import Path

from bench.cli import main

SMOKE = str(Path(__file__).parents[1] / "configs" / "smoke.toml")


def fast(tmp_path: Path, *extra: str) -> list[str]:
    sets = [f"results_dir={json.dumps(str(tmp_path))}", "train.steps_per_stage=3", "eval.limit=5",
            "tasks.train_size=20", "tasks.test_size=5", *extra]
    return [arg for s in sets for arg in ("--set", s)]


def only_result(tmp_path: Path) -> dict:
    (path,) = tmp_path.glob("smoke/*/result.json")
    return json.loads(path.read_text())


def test_smoke_run_writes_the_sequential_matrix(tmp_path, capsys):
    assert main(["run", SMOKE, *fast(tmp_path)]) == 0
    r = only_result(tmp_path)
    tasks = ["arithmetic", "logic", "program", "format"]
    assert r["status"] == "success" and r["error"] is None and r["tasks"] == tasks
    assert [s["trained_on"] for s in r["stages"]] == [[t] for t in tasks]
    assert all(set(s["scores"]) == set(tasks) and set(s["nll"]) == set(tasks) for s in r["stages"])
    assert set(r["base"]) == set(tasks) and r["chance"]["logic"] > 0
    assert r["train"]["steps"] == 12 and r["train"]["wall_s"] > 0
    assert r["versions"]["torch"] and r["config"]["method"]["name"] == "full_sft"
    assert len((tmp_path / "smoke" / r["run_id"] / "metrics.jsonl").read_text().splitlines()) == 12
    # A second invocation does not train again.
    assert main(["run", SMOKE, *fast(tmp_path)]) == 0
    assert only_result(tmp_path)["started_at"] == r["started_at"]


def test_isolation_method_run_records_mask_statistics(tmp_path):
    args = fast(tmp_path, "regime='multitask'", "train.steps_per_stage=6")
    assert main(["run", SMOKE, "--cell", "2", *args]) == 0  # cell 2 = epi, refresh every 5 steps
    r = only_result(tmp_path)
    assert r["method"] == "epi" and len(r["stages"]) == 1
    events = [json.loads(x) for x in (tmp_path / "smoke" / r["run_id"] / "masks.jsonl").read_text().splitlines()]
    assert events and events[0]["step"] == 5 and abs(events[0]["density"] - 0.05) < 1e-3


def test_nan_loss_is_recorded_as_failed_with_its_step(tmp_path):
    assert main(["run", SMOKE, *fast(tmp_path, "train.lr=1e30")]) == 1
    r = only_result(tmp_path)
    assert r["status"] == "failed" and r["error"]["type"] == "NonFiniteLoss"
    assert isinstance(r["error"]["step"], int) and r["error"]["step"] >= 1


def test_config_error_exits_2_naming_the_key(tmp_path, capsys):
    assert main(["run", SMOKE, "--set", "train.lr_max=1"]) == 2
    assert "train.lr_max" in capsys.readouterr().err
