"""In-run checkpoints: a run SIGKILLed mid-stage and resumed equals the run done in one go, for
every method; a checkpoint of another config is refused; logs are cut back, never doubled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import methods
from bench.cli import main
from tests.harness import FAST

ROOT = Path(__file__).parents[1]
RUN = """
study = "ckpt"
regime = {regime!r}
results_dir = {results!r}
[tasks]
names = ["arithmetic", "logic", "program"]
train_size = 20
test_size = 5
[train]
steps_per_stage = 4
batch_size = 4
lr = 3e-3
warmup_steps = 1
max_length = 64
checkpoint_every = 3
[eval]
limit = 5
batch_size = 8
max_gen_toks = 6
[method]
name = {method!r}
options = {options}
"""


def run_file(tmp_path: Path, name: str, method: str, **kw) -> Path:
    options = "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in FAST.get(method, {}).items()) + "}"
    path = tmp_path / f"{name}.toml"
    regime = "multistage" if methods.get(method).plans_stages else "sequential"  # such a method needs it
    path.write_text(RUN.format(results=str(tmp_path / name), method=method, options=options, regime=regime, **kw))
    return path


def outputs(results: Path) -> dict:
    (run_dir,) = [p for p in (results / "ckpt").iterdir() if (p / "result.json").exists()]
    result = json.loads((run_dir / "result.json").read_text())
    metrics = [{k: v for k, v in json.loads(line).items() if k != "train_s"}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = {p.name: p.read_text() for p in sorted((run_dir / "events").glob("*.jsonl"))}
    stages = [{k: s[k] for k in ("stage", "trained_on", "steps_done", "scores", "nll")}
              for s in result["evaluation"]["stages"]]
    return {"metrics": metrics, "events": events, "stages": stages, "result": result, "dir": run_dir}


# A process killed mid-stage, for one method of each kind of state: plain, adapters, a refreshing
# mask with its EMA, kept rows. Every method's state is checked bit for bit in-process by
# tests/test_contract.py::test_save_load_continue_is_bit_identical; the others run here under -m slow.
KILLED_IN_DEFAULT_RUN = {"full_sft", "lora", "epi", "replay"}


@pytest.mark.parametrize("method", [pytest.param(m, marks=() if m in KILLED_IN_DEFAULT_RUN else pytest.mark.slow)
                                    for m in methods.names()])
def test_sigkill_mid_stage_then_resume_equals_one_go(tmp_path, method):
    assert main(["run", str(run_file(tmp_path, "one_go", method))]) == 0
    killed_config = run_file(tmp_path, "killed", method)
    env = {**os.environ, "ISOBENCH_FAULT_AT_STEP": "kill:7", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(killed_config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]  # killed by its own SIGKILL after step 7 (mid stage 1)
    run_dirs = list((tmp_path / "killed" / "ckpt").glob("*/checkpoint/state.pt"))
    assert len(run_dirs) == 1 and not list((tmp_path / "killed" / "ckpt").glob("*/result.json"))
    assert main(["run", str(killed_config)]) == 0  # the same command resumes
    a, b = outputs(tmp_path / "one_go"), outputs(tmp_path / "killed")
    assert b["result"]["run"]["resumed_from"] == [6] and a["result"]["run"]["resumed_from"] == []
    assert [m["step"] for m in b["metrics"]] == list(range(12))  # no step line missing or doubled
    assert b["metrics"] == a["metrics"]
    assert b["events"] == a["events"]
    assert b["stages"] == a["stages"]
    assert not (b["dir"] / "checkpoint").exists()  # a successful run deletes its checkpoint
    ckpt = b["result"]["train"]["checkpoint"]
    assert ckpt["read_s"] > 0 and ckpt["saves"] >= 2 and ckpt["bytes"] > 0


def test_a_checkpoint_of_another_config_is_refused_and_restart_discards_it(tmp_path, capsys):
    import torch

    config = run_file(tmp_path, "mismatch", "full_sft")
    env = {**os.environ, "ISOBENCH_FAULT_AT_STEP": "kill:5", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "bench.cli", "run", str(config)], cwd=ROOT, env=env, capture_output=True,
                   timeout=300)
    (state,) = (tmp_path / "mismatch" / "ckpt").glob("*/checkpoint/state.pt")
    payload = torch.load(state, weights_only=False)
    payload["config_hash"] = "0" * 40
    torch.save(payload, state)
    assert main(["run", str(config)]) == 1
    out = capsys.readouterr().out
    assert "CheckpointMismatch" in out and "refusing to mix them" in out and "--restart" in out
    assert main(["run", str(config), "--restart"]) == 0
    result = json.loads(next((tmp_path / "mismatch" / "ckpt").glob("*/result.json")).read_text())
    assert result["run"]["resumed_from"] == [] and result["run"]["status"] == "success"


def test_keep_final_weights_saves_the_plain_model_and_the_adapter(tmp_path):
    config = run_file(tmp_path, "final", "lora")
    assert main(["run", str(config), "--set", "train.keep_final_weights=true", "--set", "tasks.names=['logic']"]) == 0
    (run_dir,) = [p.parent for p in (tmp_path / "final" / "ckpt").glob("*/result.json")]
    assert (run_dir / "final" / "model" / "config.json").is_file()
    assert (run_dir / "final" / "adapter" / "adapter_config.json").is_file()
    assert not (run_dir / "checkpoint").exists()


def test_run_log_is_cut_back_to_its_size_at_save_time(tmp_path):
    from bench.engine.run_log import RunLog

    log = RunLog(tmp_path)
    log.metric({"step": 0})
    log.event("method", [{"kind": "k", "step": 0}])
    log.flush()
    log.metric({"step": 1})
    state = log.state_dict()
    log.flush()  # written after the save: a resumed run writes it again
    log.event("observer", [{"kind": "k", "step": 1}])
    log.flush()
    log.load_state_dict(state)
    log.flush()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0}\n{"step": 1}\n'
    assert not (tmp_path / "events" / "observer.jsonl").exists()
    assert (tmp_path / "events" / "method.jsonl").read_text().count("\n") == 1


def test_a_checkpoint_of_another_worker_count_is_refused_naming_both(tmp_path):
    from bench.engine.checkpoint import Checkpointer, CheckpointMismatch

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "latest").write_text("6 workers 2\n")
    with pytest.raises(CheckpointMismatch, match=r"written by 2 worker\(s\), but this run has train.workers = 1: "
                                                 r"resume with the same train.workers, or rerun with --restart"):
        Checkpointer(tmp_path, "hash", 3, dict).load()
