"""``isobench run``: a whole run on the tiny model, its result.json, skip-on-success, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    run, ev, train, prov = r["run"], r["evaluation"], r["train"], r["provenance"]
    tasks = ["arithmetic", "logic", "program", "format"]
    assert r["schema_version"] == 2
    assert run["status"] == "success" and run["error"] is None and run["tasks"] == tasks
    assert [s["trained_on"] for s in ev["stages"]] == [[t] for t in tasks]
    assert all(set(s["scores"]) == set(tasks) and set(s["nll"]) == set(tasks) for s in ev["stages"])
    assert set(ev["base"]) == set(tasks) and ev["chance"]["logic"] > 0
    assert train["summary"]["steps"] == 12 and train["wall_s"] > 0 and train["precision"]["param_dtype"] == "float32"
    assert prov["versions"]["torch"] and run["config"]["method"]["name"] == "full_sft"
    assert prov["git_commit"] and isinstance(prov["git_dirty"], bool)
    assert (prov["git_diff_sha1"] is not None) == prov["git_dirty"]
    assert len((tmp_path / "smoke" / run["run_id"] / "metrics.jsonl").read_text().splitlines()) == 12
    # A second invocation does not train again.
    assert main(["run", SMOKE, *fast(tmp_path)]) == 0
    assert only_result(tmp_path)["run"]["started_at"] == run["started_at"]


def test_isolation_method_run_records_mask_statistics(tmp_path):
    args = fast(tmp_path, "regime='multitask'", "train.steps_per_stage=6")
    assert main(["run", SMOKE, "--cell", "2", *args]) == 0  # cell 2 = epi, refresh every 5 steps
    r = only_result(tmp_path)
    assert r["run"]["method"] == "epi" and len(r["evaluation"]["stages"]) == 1
    path = tmp_path / "smoke" / r["run"]["run_id"] / "events" / "method.jsonl"
    events = [json.loads(x) for x in path.read_text().splitlines()]
    assert events and events[0]["kind"] == "set_drift" and events[0]["step"] == 5
    assert abs(events[0]["fraction"] - 0.05) < 1e-3


def test_nan_loss_is_recorded_as_failed_with_its_step(tmp_path):
    assert main(["run", SMOKE, *fast(tmp_path, "train.lr=1e30")]) == 1
    r = only_result(tmp_path)["run"]
    assert r["status"] == "failed" and r["error"]["type"] == "NonFiniteLoss"
    assert isinstance(r["error"]["step"], int) and r["error"]["step"] >= 1


def test_config_error_exits_2_naming_the_key(tmp_path, capsys):
    assert main(["run", SMOKE, "--set", "train.lr_max=1"]) == 2
    assert "train.lr_max" in capsys.readouterr().err


FAST_PAIRS = {("mofo", "multitask"), ("hft", "multistage"), ("ewc", "sequential"), ("replay", "multistage"),
              ("replay", "multitask"), ("ewc", "multitask")}  # the last two are refused before anything loads


@pytest.mark.parametrize("method,regime", [
    pytest.param(m, r, marks=() if (m, r) in FAST_PAIRS else pytest.mark.slow)
    for m in ("mofo", "hft", "ewc", "replay") for r in ("multitask", "sequential", "multistage")])
def test_the_rivals_of_other_kinds_run_in_every_regime(tmp_path, capsys, method, regime):
    """MoFO, HFT, EWC and replay through ``isobench run`` in each regime: a successful result
    with the stages the regime plans, the budget recorded, and EWC's loss term in the log; EWC
    and replay, full SFT by construction in one stage, are refused in the multitask regime."""
    args = fast(tmp_path, f"grid.methods={json.dumps([method])}", "grid.method_options={}", f"regime={json.dumps(regime)}",
                "tasks.num_groups=2")  # 3 steps a stage: the first of each is at lr 0 (warm-up)
    if method in ("ewc", "replay") and regime == "multitask":
        assert main(["run", SMOKE, *args]) == 2
        err = capsys.readouterr().err
        assert "needs at least 2 stages" in err and "trains as full SFT" in err and "makes 1" in err
        return
    assert main(["run", SMOKE, *args]) == 0
    r = only_result(tmp_path)
    assert r["run"]["status"] == "success" and r["run"]["method"] == method
    assert len(r["evaluation"]["stages"]) == {"multitask": 1, "sequential": 4, "multistage": 2}[regime]
    budget = r["train"]["budget"]
    assert 0 < budget["updated_share"] <= 1 and budget["state_bytes_per_param"] is not None
    if method == "ewc" and regime != "multitask":  # a penalty from the second stage on
        lines = [json.loads(x) for x in (tmp_path / "smoke" / r["run"]["run_id"] / "metrics.jsonl").read_text().splitlines()]
        assert any(line.get("method_loss", 0) > 0 for line in lines)
