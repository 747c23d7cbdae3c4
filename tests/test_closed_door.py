"""Nobody else gets in, nothing hangs in silence, nothing is deleted that isobench did not write:
Ray's token authentication and loopback, a bounded rendezvous with a clear message, locks and
folders that are links, a judge that trickles, reports that keep a user's files and never pool
two data versions, item scores on the stage score's scale, and permissions that follow the umask."""

from __future__ import annotations

import datetime
import http.server
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_reports import study  # noqa: F401 - the fixture of a small fake study

ROOT = Path(__file__).resolve().parents[1]


def test_a_local_ray_session_refuses_a_client_without_its_token(tmp_path):
    """A second process that joins the session's GCS with a wrong token is refused; with the
    session's token it joins (so the refusal is the token's doing). The token is owner-only,
    the cluster is on loopback, and both are gone with the session."""
    import ray

    from bench.launch.ray_session import TOKEN_FILE, ray_session, ray_temp_dir

    study_dir = tmp_path / "study"
    study_dir.mkdir()
    token = ray_temp_dir(study_dir) / TOKEN_FILE
    code = ("import ray, sys\nray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
            "print('JOINED', ray.cluster_resources().get('CPU'))\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    base["HOME"] = str(tmp_path / "home")  # no ~/.ray/auth_token to fall back on
    base["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # a client on loopback, as the session's own processes
    with ray_session(study_dir, None):
        gcs = ray.get_runtime_context().gcs_address
        assert gcs.startswith("127.0.0.1:"), gcs
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
        wrong = subprocess.run([sys.executable, "-c", code, gcs], capture_output=True, text=True, timeout=120,
                               env={**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64})
        right = subprocess.run([sys.executable, "-c", code, gcs], capture_output=True, text=True, timeout=120,
                               env={**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    assert wrong.returncode != 0 and "JOINED" not in wrong.stdout, wrong.stdout + wrong.stderr
    assert right.returncode == 0 and "JOINED" in right.stdout, right.stdout + right.stderr
    assert not token.exists() and not token.parent.exists()
    from bench.launch.ray_session import NO_AUTH

    assert os.environ.get("RAY_AUTH_MODE") != NO_AUTH


def test_no_code_or_ci_switches_ray_authentication_off():
    from bench.launch.ray_session import NO_AUTH

    pattern = "RAY_AUTH_MODE" + ".*" + NO_AUTH  # built here, so this file holds no line that matches it
    hits = subprocess.run(["grep", "-rn", pattern, "bench", "tests", ".ci/run"], cwd=ROOT,
                          capture_output=True, text=True).stdout
    assert [line for line in hits.splitlines() if "test_closed_door.py" not in line] == []


def _rendezvous_error(rank: int, port: int) -> BaseException:
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=2))
    except Exception as e:  # noqa: BLE001 - the error under test
        return e
    dist.destroy_process_group()
    raise AssertionError("a 2-process group formed with one process")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once closed


def test_a_rendezvous_that_cannot_form_fails_within_its_timeout_naming_the_address():
    """A real gloo rendezvous at a closed loopback port, as a worker (rank 1) and as rank 0 whose
    peer never comes: torch gives up within the timeout, and the run's error names the address,
    the workers that did not arrive, the timeout key and what to check."""
    from bench.launch.workers import rendezvous_failure

    port = closed_port()
    start = time.monotonic()
    worker = _rendezvous_error(1, port)
    assert time.monotonic() - start < 30
    message = str(rendezvous_failure(worker, 2, 2, "10.1.2.3"))
    assert f"127.0.0.1:{port}" in message and "train.rendezvous_timeout_s = 2" in message
    assert "RAY_NODE_IP_ADDRESS" in message and "10.1.2.3" in message
    alone = _rendezvous_error(0, closed_port())
    message = str(rendezvous_failure(alone, 2, 2, "10.1.2.3"))
    assert "1 of 2 workers joined, 1 did not arrive" in message
    assert rendezvous_failure(ValueError("a shape mismatch"), 2, 2, "x") is None


def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    from bench.files import LockPathError, hold_lock

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    (tmp_path / ".run.lock").symlink_to(notes)
    with pytest.raises(LockPathError, match="not a plain file"):
        with hold_lock(tmp_path / ".run.lock", RuntimeError):
            pass
    (tmp_path / "hard.lock").hardlink_to(notes)
    with pytest.raises(LockPathError, match="hard link"):
        with hold_lock(tmp_path / "hard.lock", RuntimeError):
            pass
    assert notes.read_text() == "my notes"
    with hold_lock(tmp_path / "own.lock", RuntimeError):  # a plain lock still works
        assert (tmp_path / "own.lock").read_text() == str(os.getpid())


def test_a_run_refuses_a_checkpoint_folder_that_is_a_link_and_deletes_nothing_through_one(tmp_path):
    from bench.config import RunConfig, from_dict
    from bench.engine.checkpoint import Checkpointer
    from bench.files import ForeignPath, remove_tree
    from bench.run.cell import resolve
    from bench.run.execution import execute

    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "sub" / "thesis.tex").write_text("x")
    config = resolve(from_dict(RunConfig, {"results_dir": str(tmp_path / "results"), "study": "s"}, "<test>"), "<test>")
    config.run_dir.mkdir(parents=True)
    (config.run_dir / "checkpoint").symlink_to(precious)
    with pytest.raises(ForeignPath, match="symbolic link"):
        execute(config, progress=False)
    Checkpointer(config.run_dir, "h", 1, dict).discard()  # removes the link, never what it points to
    assert not (config.run_dir / "checkpoint").exists() and (precious / "sub" / "thesis.tex").is_file()
    (tmp_path / "link").symlink_to(precious)
    remove_tree(tmp_path / "link")
    assert (precious / "sub" / "thesis.tex").is_file()


class Trickle(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)

    def log_message(self, *args: object) -> None:
        pass


def test_a_judge_that_trickles_its_headers_is_cut_off_at_the_deadline():
    from bench.suite.judge import JudgeError, OpenAIJudge

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    judge = OpenAIJudge(f"http://127.0.0.1:{server.server_address[1]}/v1", "m", timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(JudgeError, match="longer than timeout_s = 1"):
        judge.ask("rate this")
    assert time.monotonic() - start < 5
    server.shutdown()


def test_the_report_never_pools_runs_measured_on_different_data(study):  # noqa: F811
    from reports.report import report

    for seed, digest in ((0, "a" * 64), (1, "b" * 64)):
        path = study / f"full_sft-s{seed}" / "result.json"
        data = json.loads(path.read_text())
        data["evaluation"]["data_rows"] = {"a": {"train": 8, "test": 4, "source_sha256": digest}}
        path.write_text(json.dumps(data))
    printed = report(study)
    main = printed.split("\n\n## ")[0]  # the first table of the summary
    rows = [line for line in printed.splitlines() if "| full_sft (data=" in line]
    assert len({r.split("|")[2] for r in rows}) == 2, printed
    assert not any("| full_sft " in line and "2/2" in line for line in main.splitlines()), main


def test_the_report_keeps_files_it_did_not_write(study, tmp_path):  # noqa: F811
    from reports.report import MARK, report

    report(study)
    tables = study / "tables"
    (tables / "NOTES.md").write_text("mine")
    (tables / "tex").mkdir()
    (tables / "tex" / "paper.tex").write_text("mine too")
    printed = report(study)
    assert (tables / "NOTES.md").read_text() == "mine" and (tables / "tex" / "paper.tex").read_text() == "mine too"
    assert "NOTES.md" in printed and "NOTES.md" not in (tables / MARK).read_text()
    out = tmp_path / "out"
    report(study, out_dir=out)
    (out / "NOTES.md").write_text("kept")
    report(study, out_dir=out)
    assert (out / "NOTES.md").read_text() == "kept"


def test_concurrent_reports_of_one_study_all_succeed(study):  # noqa: F811
    code = "import sys; from reports.report import report; report(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(study)], cwd=ROOT, stderr=subprocess.PIPE)
             for _ in range(4)]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), errors


def test_results_and_tables_follow_the_umask(study, tmp_path):  # noqa: F811
    from bench.files import atomic_write
    from reports.report import report

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "result.json", "{}")
        report(study)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((study / "tables").stat().st_mode) == 0o755


def test_replay_at_a_ratio_that_rounds_to_zero_still_replays_a_row():
    import methods

    replay = methods.build("replay", {"ratio": 0.1})
    replay.buffer = [([9], [9])]
    rows = [([1], [1]), ([2], [2])]
    out = replay.rows(3, rows)
    assert sum(r == ([9], [9]) for r in out) == 1 and len(out) == 2


@pytest.mark.parametrize("kind, metric, values", [("generate", "exact_match", [1.0, 0.0, 1.0]),
                                                  ("gsm8k", "exact_match", [0.0, 0.0, 1.0]),
                                                  ("choice", "acc", [0.0, 1.0, 1.0]),
                                                  ("open", "rougeL", [100.0, 66.66666, 12.5])])
def test_item_scores_are_on_the_stage_scores_scale_for_every_scorer(kind, metric, values):
    """Per-item scores average to the stage score (0-100) for exact match, accuracy and ROUGE-L."""
    from bench.run.results import item_records
    from bench.suite.evaluate import item_values
    from bench.suite.tasks import TASKS

    task = next(TASKS.get(n) for n in TASKS.names() if TASKS.get(n).kind == kind)
    samples = {f"iso_{task.name}": [{"doc_id": i, metric: v, "metrics": [metric]} for i, v in enumerate(values)]}
    stage_score = task.points(sum(values) / len(values))  # lm-eval's mean, on the task's scale
    scores = {task.name: {"score": stage_score, "items": item_values(samples, task, nll=False)}}
    [record] = item_records(0, scores)
    assert max(record.scores) <= 100.0
    assert sum(record.scores) / len(record.scores) == pytest.approx(stage_score)


def test_weak_inputs_get_an_error_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    from bench.cli import main

    grid = str(ROOT / "configs" / "smoke.toml")
    for flops in ("nan", "inf"):
        assert main(["grid", grid, "--dry-run", "--device-flops", flops]) == 2
        assert f"--device-flops {flops}: allowed: a finite number > 0" in capsys.readouterr().err
    monkeypatch.setenv("ISOBENCH_CPU_BF16", "yes")
    assert main(["grid", grid, "--dry-run"]) == 2
    assert "ISOBENCH_CPU_BF16='yes': allowed: 1" in capsys.readouterr().err


def test_a_success_result_without_stages_is_not_done(tmp_path):
    from bench.config import RunConfig, from_dict
    from bench.run import results as res
    from bench.run.cell import resolve
    from bench.run.status import cell_status, crash_result, done_result

    config = resolve(from_dict(RunConfig, {"results_dir": str(tmp_path), "study": "s"}, "<test>"), "<test>")
    config.run_dir.mkdir(parents=True)
    result = crash_result(config, RuntimeError("x"))
    result.run.status, result.run.error = "success", None
    res.write_result(config.run_dir, result)
    assert done_result(config) is None and cell_status(config) == "corrupt"


def test_gpu_check_dry_run_never_writes_into_the_checkout(monkeypatch, capsys):
    from bench.tools import gpu_check

    before = set((ROOT / "docs" / "perf_data").glob("*")) if (ROOT / "docs" / "perf_data").is_dir() else set()
    monkeypatch.setattr(gpu_check, "throughput", lambda *a: [])
    monkeypatch.setattr(gpu_check, "ratios", lambda *a: [])
    monkeypatch.setattr(gpu_check, "fsdp_step", lambda *a: [])
    monkeypatch.setattr(gpu_check, "generation", lambda *a: [])
    monkeypatch.setattr(gpu_check, "memory", lambda *a: [])
    assert gpu_check.main(["--cpu-dry-run"]) == 0
    wrote = capsys.readouterr().out.split("wrote ")[-1].strip()
    assert not Path(wrote).resolve().is_relative_to(ROOT)
    after = set((ROOT / "docs" / "perf_data").glob("*")) if (ROOT / "docs" / "perf_data").is_dir() else set()
    assert after == before


def test_a_trial_whose_process_dies_is_a_failed_cell_named_by_ray_s_error(tmp_path):
    from bench.launch.grid import OutOfMemory, WorkerDied, worker_death

    oom = worker_death(RuntimeError("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low "
                                    "on memory. Memory on the node (IP: 127.0.0.1) where the task was running was "
                                    "11.60GB / 12.00GB (0.97), which exceeds the memory usage threshold of 0.95."))
    assert isinstance(oom, OutOfMemory) and "11.60GB / 12.00GB" in str(oom)
    died = worker_death(RuntimeError("ray.exceptions.ActorDiedError: The actor died unexpectedly"))
    assert isinstance(died, WorkerDied)
    other = ValueError("shape")
    assert worker_death(other) is other


@pytest.mark.slow
def test_a_grid_whose_trials_die_before_reporting_records_them_failed(tmp_path):
    """Every trial SIGKILLs itself after its first step: ``run_grid`` raises nothing, each cell is
    recorded as failed (``WorkerDied``) and the command exits 1 with its summary."""
    from tests.test_grid import grid_file

    path = grid_file(tmp_path, extra="max_failures = 0")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ISOBENCH_FAULT_AT_STEP": "kill:1"}
    done = subprocess.run([sys.executable, "-m", "bench.cli", "grid", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "0/2 succeeded, 2 failed" in done.stdout + done.stderr, done.stdout + done.stderr[-3000:]
    assert "TypeError" not in done.stderr  # nothing escapes run_grid (Ray itself logs each trial's traceback)
    results = [json.loads(p.read_text()) for p in (tmp_path / "results" / "g").glob("*/result.json")]
    assert results and all(r["run"]["status"] == "failed" for r in results)
    assert all(r["run"]["error"]["type"] == "WorkerDied" for r in results), [r["run"]["error"] for r in results]


@pytest.mark.slow
def test_a_trial_killed_by_rays_memory_monitor_is_a_failed_cell_and_the_other_cell_finishes(tmp_path):
    """A real kill: Ray's memory monitor, its threshold set a few GB above this machine's use
    now, stops the EPI trial while it allocates host memory (the ``grow`` fault); the full SFT
    cell, run before it, succeeds, and the grid records EPI as ``OutOfMemory`` and exits 1."""
    import psutil

    from tests.test_grid import grid_file

    memory = psutil.virtual_memory()
    threshold = min(0.9, (memory.total - memory.available + 4 * 2**30) / memory.total)
    path = grid_file(tmp_path, concurrent=1, extra="max_failures = 0")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ISOBENCH_FAULT_AT_STEP": "grow:1:epi",
           "RAY_memory_usage_threshold": f"{threshold:.3f}", "RAY_memory_monitor_refresh_ms": "100"}
    done = subprocess.run([sys.executable, "-m", "bench.cli", "grid", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "1/2 succeeded, 1 failed" in out, out[-3000:]
    results = {p.parent.name.split("-")[0]: json.loads(p.read_text())
               for p in (tmp_path / "results" / "g").glob("*/result.json")}
    assert results["full_sft"]["run"]["status"] == "success"
    error = results["epi"]["run"]["error"]
    assert results["epi"]["run"]["status"] == "failed" and error["type"] == "OutOfMemory", error
    (tmp_path / "oom_result.json").write_text(json.dumps(results["epi"]["run"], indent=1))


# -- weak cases of the probe ------------------------------------------------------------------

@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "holds no text"),
    ("binary.txt", b"\xff\xfe\x00\x01" * 64, "not UTF-8 text"),
    ("notext.jsonl", b'{"body": "a"}\n', "line 1: not a JSON object with a \"text\" string"),
    ("short.txt", b"a few words", "fewer than the rows x tokens"),
])
def test_a_retention_text_that_cannot_give_its_windows_is_refused_before_any_model_loads(tmp_path, name, content,
                                                                                          message):
    from bench.config import ConfigError
    from tests.harness import cell_of

    (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        cell_of({"eval": {"retention": {"source": str(tmp_path / name), "rows": 2, "tokens": 16}}})
    assert "eval.retention.source" in str(error.value)


def test_retention_windows_longer_than_the_backbone_attends_over_are_refused():
    from bench.config import ConfigError
    from tests.harness import cell_of

    with pytest.raises(ConfigError, match="'eval.retention.tokens'.*512"):
        cell_of({"backbone": {"name": "tiny-llama"}, "eval": {"retention": {"rows": 2, "tokens": 600}}})


def test_a_checkpoint_of_another_format_says_so_instead_of_printing_two_equal_hashes(tmp_path):
    import torch

    from bench.engine.checkpoint import Checkpointer, CheckpointMismatch

    checkpointer = Checkpointer(tmp_path, "h" * 40, 1, dict)
    checkpointer.path.parent.mkdir(parents=True)
    torch.save({"format": -1, "config_hash": "h" * 40, "step": 3}, checkpointer.path)
    with pytest.raises(CheckpointMismatch, match="checkpoint format -1") as error:
        checkpointer.load()
    assert "hashes to" not in str(error.value)


def test_a_resume_puts_back_item_records_deleted_since_the_checkpoint(tmp_path, capsys):
    from bench.cli import main
    from reports.schema import read_items
    from tests.test_checkpoint import run_file

    config = run_file(tmp_path, "items", "full_sft")
    env = {**os.environ, "ISOBENCH_FAULT_AT_STEP": "kill:7", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "bench.cli", "run", str(config)], cwd=ROOT, env=env, capture_output=True,
                   timeout=300)
    (run_dir,) = [p.parent.parent for p in (tmp_path / "items" / "ckpt").glob("*/checkpoint/state.pt")]
    before = {(r.evaluation, r.task) for r in read_items(run_dir)}
    assert ("base", "arithmetic") in before and (0, "arithmetic") in before
    (run_dir / "evaluation" / "items.jsonl").unlink()
    assert main(["run", str(config)]) == 0
    assert "items.jsonl had lost" in capsys.readouterr().err
    after = {(r.evaluation, r.task) for r in read_items(run_dir)}
    assert before <= after and {(2, t) for t in ("arithmetic", "logic", "program")} <= after


def test_a_folder_source_is_hashed_by_the_files_its_task_reads(tmp_path):
    from bench.suite.tasks import source_digests

    folder = tmp_path / "gsm8k"
    folder.mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        (folder / name).write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    first = source_digests({"gsm8k": str(folder)})
    (folder / ".test.jsonl.swp").write_text("editor state")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert source_digests({"gsm8k": str(folder)}) == first
    (folder / "test.jsonl").write_text('{"question": "2+2?", "answer": "#### 4"}\n')
    assert source_digests({"gsm8k": str(folder)}) != first


def test_a_run_whose_regime_is_not_a_plain_name_is_listed_as_corrupt(tmp_path):
    from reports.report import report
    from tests.test_reports import fake_run

    folder = tmp_path / "study"
    fake_run(folder, "full_sft", 0, [[80, 30, 0], [40, 70, 0], [30, 50, 60]], current=True)
    fake_run(folder, "epi", 0, [[75, 30, 0], [70, 60, 0], [65, 60, 50]], current=True)
    path = folder / "epi-s0" / "result.json"
    data = json.loads(path.read_text())
    data["run"]["regime"] = "../../escape"
    path.write_text(json.dumps(data))
    printed = report(folder)
    assert "corrupt: epi-s0" in printed and "is not a plain name" in printed
    assert not (tmp_path / "escape.md").exists() and (folder / "tables" / "main_sequential.md").is_file()


def test_an_export_into_a_file_is_an_error_line(tmp_path, capsys):
    from bench.cli import main
    from tests.test_reports import fake_run

    folder = tmp_path / "study"
    fake_run(folder, "full_sft", 0, [[80, 30, 0], [40, 70, 0], [30, 50, 60]], current=True)
    (tmp_path / "a_file").write_text("x")
    assert main(["export", str(folder), "--out", str(tmp_path / "a_file")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the export to") and "Traceback" not in err
