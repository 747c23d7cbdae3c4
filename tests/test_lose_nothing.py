"""Lose nothing, leak nothing, never hand back a stale number: one test per fault an independent
probe found (checkpoints, logs, report output, run locks, data sources, the judge client)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cli import main
from tests.test_checkpoint import ROOT, outputs, run_file


def killed_run(tmp_path: Path, name: str = "killed", step: int = 7) -> tuple[Path, Path]:
    """A full-SFT run SIGKILLed after ``step`` (checkpoint at step 6): its config and run folder."""
    config = run_file(tmp_path, name, "full_sft")
    env = {**os.environ, "ISOBENCH_FAULT_AT_STEP": f"kill:{step}", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    (state,) = (tmp_path / name / "ckpt").glob("*/checkpoint/state.pt")
    return config, state.parents[1]


class Planted:
    """An object that runs code when unpickled."""

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {os.environ['PLANTED_MARK']}",))


def test_a_checkpoint_holding_code_is_refused_and_the_code_never_runs(tmp_path, monkeypatch, capsys):
    config, run_dir = killed_run(tmp_path)
    state = run_dir / "checkpoint" / "state.pt"
    mark = tmp_path / "code-ran"
    monkeypatch.setenv("PLANTED_MARK", str(mark))
    payload = torch.load(state, weights_only=False)
    payload["trainer"]["planted"] = Planted()
    torch.save(payload, state)
    assert main(["run", str(config)]) == 1
    result = json.loads((run_dir / "result.json").read_text())
    assert not mark.exists()
    assert result["run"]["status"] == "failed" and result["train"]["summary"] == {}  # nothing trained
    message = result["run"]["error"]["message"]
    assert str(state) in message and "--restart" in message and "posix.system" in message
    assert main(["run", str(config), "--restart"]) == 0  # the hint works


@pytest.mark.parametrize("damage", [b"", b"\x00garbage" * 50, "truncated"])
def test_an_unreadable_checkpoint_names_its_file_and_restart(tmp_path, damage):
    config, run_dir = killed_run(tmp_path)
    state = run_dir / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:len(state.read_bytes()) // 2] if damage == "truncated" else damage)
    assert main(["run", str(config)]) == 1
    message = json.loads((run_dir / "result.json").read_text())["run"]["error"]["message"]
    assert message.startswith(f"{state}: cannot be read as a checkpoint") and "--restart" in message


def test_logs_emptied_after_a_crash_are_restored_on_resume(tmp_path):
    assert main(["run", str(run_file(tmp_path, "one_go", "full_sft"))]) == 0
    config, run_dir = killed_run(tmp_path)
    logs = [run_dir / "metrics.jsonl", *sorted((run_dir / "events").glob("*.jsonl"))]
    assert logs[0].read_text()  # stage 0's lines were on disk before the kill
    for path in logs:
        path.write_text("")  # what a crash without fsync can leave
    assert main(["run", str(config)]) == 0
    a, b = outputs(tmp_path / "one_go"), outputs(tmp_path / "killed")
    assert b["result"]["run"]["resumed_from"] == [6]
    assert [m["step"] for m in b["metrics"]] == list(range(12)) and b["metrics"] == a["metrics"]
    assert b["events"] == a["events"] and b"\x00" not in (run_dir / "metrics.jsonl").read_bytes()


# -- report output ----------------------------------------------------------------------------------
@pytest.fixture
def study(tmp_path: Path) -> Path:
    from tests.test_reports import fake_run

    s = tmp_path / "results" / "study"
    fake_run(s, "full_sft", 0, [[80, 30, 0], [40, 70, 0], [30, 50, 60]])
    fake_run(s, "epi", 0, [[75, 30, 0], [70, 60, 0], [65, 60, 50]])
    return s


def results_of(folder: Path) -> list[Path]:
    return sorted(folder.rglob("result.json"))


@pytest.mark.parametrize("where", ["study", "parent", "home_of_notes"])
def test_report_out_never_deletes_a_study_or_a_users_files(study, tmp_path, capsys, where):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("a user's file")
    out = {"study": study, "parent": study.parent, "home_of_notes": notes}[where]
    before = results_of(tmp_path)
    assert main(["report", str(study), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and ("contains the study" in err or "is the study" in err or "no isobench report" in err)
    assert results_of(tmp_path) == before and (notes / "mine.txt").read_text() == "a user's file"


def test_report_out_replaces_only_what_a_report_wrote_and_cleans_a_killed_one(study, tmp_path):
    out = tmp_path / "tables-elsewhere"
    assert main(["report", str(study), "--out", str(out)]) == 0
    assert (out / ".isobench-report").is_file() and (out / "main_sequential.md").is_file()
    left = tmp_path / ".tables-elsewhere.new-killed"  # what a report killed mid-write leaves
    left.mkdir()
    assert main(["report", str(study), "--out", str(out)]) == 0  # a report's own folder is replaced
    assert not left.exists() and (out / "main_sequential.md").is_file()


def test_a_typo_in_report_tasks_is_refused_with_close_names(study, capsys):
    assert main(["report", str(study), "--tasks", "a,bb"]) == 2
    assert "--tasks bb: not in" in capsys.readouterr().err


def test_a_damaged_event_line_names_its_file_and_line(study, capsys):
    (study / "epi-s0" / "events").mkdir(exist_ok=True)
    (study / "epi-s0" / "events" / "method.jsonl").write_text('{"kind": "x"}\n{"kind": \n')
    assert main(["report", str(study)]) == 0
    out = capsys.readouterr().out
    assert f"{study / 'epi-s0' / 'events' / 'method.jsonl'}: line 2 is not valid JSON" in out


def test_a_truncated_grid_manifest_is_named(study, capsys):
    (study / "grid.json").write_text('{"methods": ["full_sft"], "cel')
    assert main(["report", str(study)]) == 2
    assert f"{study / 'grid.json'}: not valid JSON" in capsys.readouterr().err


# -- one process per run ---------------------------------------------------------------------------
def test_a_second_run_of_a_running_cell_is_refused(tmp_path, capsys):
    from bench.files import hold_lock
    from bench.run.cells import load_run_config
    from bench.run.status import RUN_LOCK, RunBusy

    config = load_run_config(run_file(tmp_path, "busy", "full_sft"))
    config.run_dir.mkdir(parents=True)
    with hold_lock(config.run_dir / RUN_LOCK, RunBusy):  # as a first `isobench run` or a grid trial does
        assert main(["run", str(run_file(tmp_path, "busy", "full_sft"))]) == 2
        assert "is running" in capsys.readouterr().err
    assert not (config.run_dir / "result.json").exists() and not (config.run_dir / "metrics.jsonl").exists()


def test_a_killed_runs_lock_is_released(tmp_path):
    config, run_dir = killed_run(tmp_path)  # SIGKILLed while it held its lock
    assert main(["run", str(config)]) == 0


def test_home_is_expanded_once_for_every_path(tmp_path, monkeypatch):
    from bench.config import parse_override
    from bench.run.base_scores import base_path
    from bench.run.cells import load_run_config

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load_run_config(run_file(tmp_path, "tilde", "full_sft"), parse_override("results_dir='~/res'"))
    assert config.results_dir == str(tmp_path / "home" / "res")
    assert config.run_dir.is_relative_to(tmp_path / "home" / "res")
    assert base_path(config).is_relative_to(tmp_path / "home" / "res")


# -- data sources ----------------------------------------------------------------------------------
GSM = """
study = "data"
regime = "sequential"
results_dir = {results!r}
backbone = {{ name = "tiny-llama" }}
[tasks]
names = ["gsm8k"]
sources = {{ gsm8k = {source!r} }}
train_size = {train}
test_size = {test}
[train]
steps_per_stage = 2
batch_size = 4
max_length = 64
[eval]
limit = {test}
batch_size = 8
max_gen_toks = 4
nll = false
"""


def gsm_rows(n: int, offset: int = 0) -> str:
    return "".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n"
                   for i in range(offset, offset + n))


def gsm_config(tmp_path: Path, source: Path, train: int = 8, test: int = 4) -> Path:
    path = tmp_path / "gsm.toml"
    path.write_text(GSM.format(results=str(tmp_path / "results"), source=str(source), train=train, test=test))
    return path


def test_duplicates_never_reach_the_held_out_split(tmp_path):
    from bench.suite.tasks import TASKS
    from bench.suite.tasks.paper import paper_split

    source = tmp_path / "gsm.jsonl"
    source.write_text(gsm_rows(16) * 3)  # every row three times, no test file
    train, test, notes = paper_split(TASKS["gsm8k"], 0, 100, 8, str(source))
    assert notes["duplicates_removed"] == 32 and len(test) == 8 and len(train) == 8
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}


def test_a_changed_data_file_reruns_its_cell_and_never_reuses_old_scores(tmp_path):
    source = tmp_path / "gsm.jsonl"
    source.write_text(gsm_rows(20))
    config = gsm_config(tmp_path, source)
    assert main(["run", str(config)]) == 0
    (result_file,) = (tmp_path / "results" / "data").glob("*/result.json")
    first = json.loads(result_file.read_text())
    bases = sorted((tmp_path / "results" / "data" / "base").glob("*.json"))
    source.write_text(gsm_rows(20, offset=500))  # the same path, other rows
    assert main(["run", str(config)]) == 0
    second = json.loads(result_file.read_text())
    assert second["run"]["started_at"] != first["run"]["started_at"] or second["train"]["wall_s"] != first["train"]["wall_s"]
    assert second["evaluation"]["data_rows"]["gsm8k"]["source_sha256"] != \
        first["evaluation"]["data_rows"]["gsm8k"]["source_sha256"]
    assert len(sorted((tmp_path / "results" / "data" / "base").glob("*.json"))) == len(bases) + 1  # new base scores


@pytest.mark.parametrize("case, message", [
    ("fifo", "is neither a regular file nor a folder"),
    ("empty folder", "is a folder without train.jsonl and test.jsonl"),
])
def test_a_source_that_is_not_a_data_file_is_refused_up_front(tmp_path, capsys, case, message):
    source = tmp_path / "src"
    os.mkfifo(source) if case == "fifo" else source.mkdir()
    assert main(["run", str(gsm_config(tmp_path, source))]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "results").exists()


@pytest.mark.parametrize("text, message", [
    ("", "0 distinct rows"),
    (b"\xff\xfe not utf-8", "line 1: not UTF-8 text"),
    ('{"question": "q", "answer": 42}\n', "key 'answer' must be a string"),
])
def test_a_bad_data_file_names_the_file_and_line(tmp_path, text, message):
    source = tmp_path / "gsm.jsonl"
    source.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["run", str(gsm_config(tmp_path, source))]) == 1
    (result_file,) = (tmp_path / "results" / "data").glob("*/result.json")
    error = json.loads(result_file.read_text())["run"]["error"]
    assert error["type"] == "DataError" and message in error["message"]


def test_fewer_rows_than_the_test_split_is_refused(tmp_path):
    source = tmp_path / "gsm.jsonl"
    source.write_text(gsm_rows(4))
    assert main(["run", str(gsm_config(tmp_path, source, test=4))]) == 1
    (result_file,) = (tmp_path / "results" / "data").glob("*/result.json")
    assert "not more than tasks.test_size = 4" in json.loads(result_file.read_text())["run"]["error"]["message"]


def test_a_size_no_generator_can_give_is_refused_naming_the_maximum(capsys):
    from tests.test_faults import SMOKE

    assert main(["run", str(SMOKE), "--set", "tasks.train_size=1000000000"]) == 2
    assert "has 972 distinct prompts; allowed: at most 972" in capsys.readouterr().err


def test_the_generators_distinct_prompt_counts():
    import random

    from bench.suite.tasks import TASKS

    for name in ("program", "format", "logic"):
        rng, seen = random.Random(0), set()
        for _ in range(30 * TASKS[name].distinct):
            seen.add(TASKS[name].make(rng)["prompt"])
        assert len(seen) == TASKS[name].distinct, name


# -- evaluation ------------------------------------------------------------------------------------
def test_a_gold_answer_longer_than_the_context_is_cut_and_counted(tmp_path):
    source = tmp_path / "gsm.jsonl"
    long = " ".join(["step"] * 150)  # 750 byte tokens: more than the tiny model's 512 positions
    source.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{long}\n#### {i + 1}"}) + "\n"
                              for i in range(12)))
    text = gsm_config(tmp_path, source).read_text().replace("nll = false", "nll = true")
    (tmp_path / "gsm.toml").write_text(text)
    assert main(["run", str(tmp_path / "gsm.toml")]) == 0
    (result_file,) = (tmp_path / "results" / "data").glob("*/result.json")
    result = json.loads(result_file.read_text())
    assert result["evaluation"]["stages"][0]["details"]["gsm8k"]["truncated_items"] == 4
    assert result["evaluation"]["stages"][0]["nll"]["gsm8k"] is not None


def test_a_generation_budget_beyond_the_context_is_refused_up_front(capsys):
    from tests.test_faults import SMOKE

    assert main(["run", str(SMOKE), "--set", "eval.max_gen_toks=100000"]) == 2
    assert "tiny-llama attends over 512 tokens; allowed: below 512" in capsys.readouterr().err


# -- the judge client ------------------------------------------------------------------------------
@pytest.fixture
def judge_server():
    """A loopback judge whose behaviour each test scripts: ``server.script`` is a list of
    actions, one per request ("ok", "500", "redirect", "garbage", "trickle"); the last repeats."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            self.rfile.read(int(self.headers["Content-Length"]))
            server.seen.append({"auth": self.headers.get("Authorization"), "host": self.server.server_address[0]})
            action = server.script[min(len(server.seen) - 1, len(server.script) - 1)]
            if action in ("500", "429"):
                self.send_response(int(action))
                self.end_headers()
                return
            if action == "redirect":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.2:{self.server.server_address[1]}/v1/chat/completions")
                self.end_headers()
                return
            body = b"not json" if action == "garbage" else json.dumps(
                {"choices": [{"message": {"content": "Rating: [[7]]"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)) if action == "trickle" else [None]:
                self.wfile.write(body if i is None else body[i:i + 1])
                self.wfile.flush()
                if i is not None:
                    time.sleep(0.5)

        def log_message(self, *args):  # noqa: ANN002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.seen, server.script = [], ["ok"]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def openai_judge(server, **kw):
    from bench.suite.judge import OpenAIJudge

    judge = OpenAIJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge", **kw)
    judge.BACKOFF_S = 0.01
    return judge


def test_a_trickling_judge_is_cut_at_its_deadline(judge_server):
    import time

    from bench.suite.judge import JudgeError

    judge_server.script = ["trickle"]
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"judge openai:judge at http://127\.0\.0\.1:\d+/v1/chat/completions: .*timeout"):
        openai_judge(judge_server, timeout_s=2).ask("q")
    assert time.monotonic() - start < 6


def test_transient_judge_errors_are_retried_and_lasting_ones_named(judge_server):
    from bench.suite.judge import JudgeError

    judge_server.script = ["500", "429", "ok"]
    assert openai_judge(judge_server).ask("q") == "Rating: [[7]]" and len(judge_server.seen) == 3
    judge_server.seen.clear()
    judge_server.script = ["500"]
    with pytest.raises(JudgeError, match="HTTP 500 .* after 4 tries"):
        openai_judge(judge_server).ask("q")
    judge_server.seen.clear()
    judge_server.script = ["garbage"]
    with pytest.raises(JudgeError, match="a reply that is not a chat completion"):
        openai_judge(judge_server).ask("q")
    assert len(judge_server.seen) == 1  # a bad reply is not retried


def test_a_redirect_never_carries_the_key_to_another_host(judge_server, monkeypatch):
    from bench.suite.judge import JudgeError

    monkeypatch.setenv("JUDGE_KEY", "planted-key")
    judge_server.script = ["redirect"]
    with pytest.raises(JudgeError, match="redirect to http://127.0.0.2"):
        openai_judge(judge_server, api_key_env="JUDGE_KEY").ask("q")
    assert [s["host"] for s in judge_server.seen] == ["127.0.0.1"]


@pytest.mark.parametrize("judge, message", [
    ({"kind": "openai", "base_url": "http://x/v1", "model": "m", "timeout_s": "3s"},
     "bad value '3s' for key 'eval.judge.timeout_s'; allowed: a finite number"),
    ({"kind": "openai", "base_url": "http://x/v1", "model": "m", "api_key_env": "sk-planted-0123456789"},
     "not the key itself"),
    ({"kind": "openai", "base_url": "http://x/v1", "model": "m", "api_key_env": "ISOBENCH_UNSET_VAR"},
     "environment variable ISOBENCH_UNSET_VAR is not set"),
    ({"kind": "openai", "base_url": "x/v1", "model": "m"}, "an http:// or https:// URL"),
    ({"kind": "hf", "model": "./no-such-judge"}, "key 'eval.judge.model': the local folder does not exist"),
])
def test_judge_options_are_checked_before_any_model_loads(capsys, judge, message):
    from tests.test_faults import SMOKE

    table = "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in judge.items()) + "}"
    assert main(["run", str(SMOKE), "--set", f"eval.judge={table}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "sk-planted" not in err


def test_an_unreachable_judge_fails_before_training_naming_it(tmp_path):
    text = run_file(tmp_path, "judged", "full_sft").read_text().replace(
        "[eval]", '[eval]\njudge = { kind = "openai", base_url = "http://127.0.0.1:9/v1", model = "m", timeout_s = 2 }')
    (tmp_path / "judged.toml").write_text(text)
    assert main(["run", str(tmp_path / "judged.toml")]) == 1
    (result_file,) = (tmp_path / "judged" / "ckpt").glob("*/result.json")
    result = json.loads(result_file.read_text())
    assert "judge openai:m at http://127.0.0.1:9/v1/chat/completions" in result["run"]["error"]["message"]
    assert result["train"]["summary"] == {}  # nothing trained


def test_an_evaluation_failure_keeps_the_trained_stage(tmp_path, monkeypatch):
    """Checkpoints off (the CPU default): a stage's evaluation fails; the rerun evaluates that
    stage from what was trained, without training it again, and ends as a run done in one go."""
    import bench.run.stages as execution

    config = run_file(tmp_path, "one_go", "full_sft")
    config.write_text(config.read_text().replace("checkpoint_every = 3", "checkpoint_every = 0"))
    assert main(["run", str(config)]) == 0
    failing = run_file(tmp_path, "failing", "full_sft")
    failing.write_text(failing.read_text().replace("checkpoint_every = 3", "checkpoint_every = 0"))
    real, calls = execution.evaluate_stage, []

    def flaky(*args):  # noqa: ANN002, ANN202
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("judge down")
        return real(*args)

    monkeypatch.setattr(execution, "evaluate_stage", flaky)
    assert main(["run", str(failing)]) == 1
    (state,) = (tmp_path / "failing" / "ckpt").glob("*/checkpoint/state.pt")
    monkeypatch.undo()
    assert main(["run", str(failing)]) == 0
    a, b = outputs(tmp_path / "one_go"), outputs(tmp_path / "failing")
    assert b["result"]["run"]["resumed_from"] == [8]  # after stage 1's training: not trained twice
    assert b["metrics"] == a["metrics"] and b["stages"] == a["stages"]


def test_a_cell_without_any_parsable_judge_reply_says_so(study):
    from reports.report import report

    path = study / "epi-s0" / "result.json"
    data = json.loads(path.read_text())
    data["stages"][-1]["scores"]["c"] = None
    data["stages"][-1]["details"] = {"c": {"judge_parsed": 0, "judge_unparsed": 3}}
    path.write_text(json.dumps(data))
    assert "c: no judge reply could be parsed in epi-s0" in report(study)


# -- numbers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--device-memory=-5GiB"], "error: --device-memory: bad memory size '-5GiB'"),
    (["--set", "train.steps_per_stage=1000000000000"], "allowed: 1 to 10,000,000"),
])
def test_bad_numbers_are_refused_with_a_line_not_a_traceback(capsys, args, message):
    from tests.test_faults import SMOKE

    assert main(["run", str(SMOKE), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_long_cpu_stage_keeps_checkpoints():
    from bench.config import TrainConfig

    assert TrainConfig(steps_per_stage=30).checkpoint_interval(on_gpu=False) == 0
    assert TrainConfig(steps_per_stage=5000).checkpoint_interval(on_gpu=False) == 100


def test_a_full_disk_during_a_checkpoint_says_so_and_keeps_the_last_one(tmp_path, monkeypatch):
    import bench.engine.checkpoint as checkpoint

    config, run_dir = killed_run(tmp_path)
    before = (run_dir / "checkpoint" / "state.pt").read_bytes()

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    assert main(["run", str(config)]) == 1
    message = json.loads((run_dir / "result.json").read_text())["run"]["error"]["message"]
    assert re.search(r"the checkpoint at step \d+ could not be written", message) and "MiB free on that disk" in message
    assert (run_dir / "checkpoint" / "state.pt").read_bytes() == before
    assert not list((run_dir / "checkpoint").glob(".*.tmp"))


def test_a_grid_rewrites_a_truncated_manifest(tmp_path, capsys):
    from bench.launch.manifest import write_manifest
    from bench.run.cells import load_grid
    from tests.test_faults import SMOKE

    grid = load_grid(SMOKE, {"results_dir": str(tmp_path / "r")})
    grid.study_dir.mkdir(parents=True)
    (grid.study_dir / "grid.json").write_text('{"methods": ["full_sft"], "cel')
    write_manifest(grid)
    assert "not valid JSON" in capsys.readouterr().err
    assert len(json.loads((grid.study_dir / "grid.json").read_text())["cells"]) == len(grid.cells)
