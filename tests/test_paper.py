"""Paper suite: loaders (small upstream-format files always; ../shared/data when present),
scoring through lm-eval's own filter and metric, the judge (tiny model, loopback HTTP server)."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from bench.suite.judge import HFJudge, OpenAIJudge, judge_answers, judge_prompt, parse_rating
from bench.suite.tasks import TASKS, build_suite
from bench.suite.tasks.lm_eval_files import lm_eval_configs
from bench.suite.tasks.paper import LOGIQA_OPTION, DataError, local_rows, paper_split

SHARED = Path(os.environ.get("ISOBENCH_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))
realdata = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real datasets not found at {SHARED} "
                              "(set ISOBENCH_SHARED_DATA)")

LOGIQA_ITEM = ["", "b", "Some context.", "Which follows?", "A.first", "B.second", "C.third", "D.fourth"]


def gsm8k_score(responses: list[str], golds: list[str]) -> float:
    """Score responses exactly as the generated lm-eval task does: its filter, then its metric."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    config = lm_eval_configs(TASKS["gsm8k"], Path("unused.jsonl"), 256)["iso_gsm8k"]
    step = config["filter_list"][0]["filter"][0]
    extracted = [r[0] for r in RegexFilter(step["regex_pattern"], step["group_select"]).apply([[x] for x in responses], [])]
    metric = {k: v for k, v in config["metric_list"][0].items() if k in ("ignore_case", "regexes_to_ignore")}
    return 100.0 * exact_match_hf_evaluate(predictions=extracted, references=golds, **metric)["exact_match"]


def test_gsm8k_scorer_on_formats():
    golds = ["1234", "18", "5"]
    assert gsm8k_score(["so #### 1,234", "She makes $18.", "The answer is 5"], golds) == 100.0
    assert gsm8k_score(["#### 1235", "18 eggs and 19", "none"], golds) == 0.0


def test_local_formats_and_malformed_files(tmp_path):
    (tmp_path / "g.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}) + "\n")
    (row,) = local_rows("gsm8k", tmp_path / "g.jsonl")[0]
    assert row["eval_target"] == "2" and "<<" not in row["target"]
    (tmp_path / "l.txt").write_text("\n".join(LOGIQA_ITEM * 2) + "\n")
    rows = local_rows("logiqa", tmp_path / "l.txt")[0]
    assert len(rows) == 2 and rows[0]["choices"] == ["first", "second", "third", "fourth"] and rows[0]["gold"] == 1
    seeds = [{"instruction": "Say hi", "instances": [{"input": "", "output": "hi"}]}]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(s) + "\n" for s in seeds))
    assert local_rows("alpaca", tmp_path / "s.jsonl")[0][0]["target"] == "hi"
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "a\\n#### 1"}\n{"question": "no answer"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: expected an object with keys question, answer"):
        local_rows("gsm8k", tmp_path / "bad.jsonl")
    (tmp_path / "bad.txt").write_text("\n".join(["", "e", *LOGIQA_ITEM[2:]]))
    with pytest.raises(DataError, match=r"bad.txt: item 0 \(line 1\): expected a blank line then an answer letter"):
        local_rows("logiqa", tmp_path / "bad.txt")
    with pytest.raises(DataError, match="missing.json: does not exist"):
        local_rows("alpaca", tmp_path / "missing.json")


def test_carved_test_split_is_deterministic_and_disjoint(tmp_path):
    rows = [{"instruction": f"task {i}", "input": "", "output": f"out {i}"} for i in range(30)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    train, test, notes = paper_split(TASKS["codealpaca"], 0, 100, 5, str(tmp_path / "a.json"))
    assert (train, test, notes) == paper_split(TASKS["codealpaca"], 0, 100, 5, str(tmp_path / "a.json"))
    assert notes["duplicates_removed"] == 0 and len(notes["source_sha256"]) == 64
    assert len(test) == 5 and len(train) == 25 and not {r["prompt"] for r in train} & {r["prompt"] for r in test}


def test_prompt_only_chat_data_is_refused_with_the_reason(tmp_path):
    (tmp_path / "u.json").write_text(json.dumps([{"class": "x", "data": f"Write poem {i}"} for i in range(10)]))
    with pytest.raises(DataError, match="without a reference answer"):
        build_suite(["ultrachat"], 0, 5, 2, tmp_path / "out", 16, {"ultrachat": str(tmp_path / "u.json")})


def test_rating_parser_handles_garbage():
    assert parse_rating("Rating: [[7]]") == 7.0 and parse_rating("I'd say [[ 8.5 ]].") == 8.5
    assert parse_rating("Rating: 4") == 4.0
    assert parse_rating("[[11]]") is None and parse_rating("great answer!") is None and parse_rating("") is None
    assert "[Question]\nWhat?" in judge_prompt("What?", "That.")


def test_tiny_model_as_judge_counts_unparsed_replies():
    from bench.backbones.registry import tiny_llama

    model, tok = tiny_llama(0)
    verdict = judge_answers(HFJudge(model, tok, max_new_tokens=8), ["Say hi", "Add 1+1"], ["hi", "2"])
    assert verdict["parsed"] + verdict["unparsed"] == 2
    assert verdict["unparsed"] == 2 and verdict["score"] is None  # a random model emits no rating


def test_openai_compatible_judge_over_loopback(monkeypatch):
    seen: list[dict] = []
    replies = iter(["Rating: [[9]]", "no idea", "[[3]]"])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                         "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": next(replies)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):  # noqa: ANN002
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("JUDGE_KEY", "secret")
        judge = OpenAIJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", "JUDGE_KEY", timeout_s=10)
        verdict = judge_answers(judge, ["q1", "q2", "q3"], ["a1", "a2", "a3"])
    finally:
        server.shutdown()
    assert verdict == {"score": 6.0, "parsed": 2, "unparsed": 1, "judge": "openai:judge-model", "ratings": [9.0, None, 3.0]}
    assert seen[0]["path"] == "/v1/chat/completions" and seen[0]["auth"] == "Bearer secret"
    assert seen[0]["body"]["model"] == "judge-model" and "a1" in seen[0]["body"]["messages"][0]["content"]


@pytest.mark.realdata
@realdata
def test_real_data_row_counts_and_logiqa_round_trip():
    train, test = local_rows("gsm8k", SHARED / "gsm8k")
    assert (len(train), len(test)) == (7473, 1319)
    assert len(local_rows("logiqa", SHARED / "logiqa" / "Test.txt")[0]) == 651
    # The README says 2,000 rows; the file holds 2,017 items (json.load agrees).
    assert len(local_rows("codealpaca", SHARED / "codealpaca" / "code_alpaca_2k.json")[0]) == 2017
    assert len(local_rows("alpaca", SHARED / "alpaca" / "seed_tasks.jsonl")[0]) == 175
    lines = (SHARED / "logiqa" / "Test.txt").read_text().split("\n")
    for i, row in enumerate(local_rows("logiqa", SHARED / "logiqa" / "Test.txt")[0]):
        item = lines[8 * i:8 * i + 8]
        assert "abcd"[row["gold"]] == item[1].strip().lower()
        assert item[0] == "" and len(row["choices"]) == 4
        assert sorted(row["choices"]) == sorted(LOGIQA_OPTION.sub("", x.strip(), count=1) for x in item[4:8])
        if sorted(line.strip()[:1] for line in item[4:8]) == list("ABCD"):  # placed by their own letter
            for letter, option in zip("ABCD", row["choices"]):
                assert any(x.strip().startswith(letter) and x.strip().endswith(option) for x in item[4:8])
        assert row["prompt"].startswith(f"Passage: {item[2].strip()}\nQuestion: {item[3].strip()}")


@pytest.mark.realdata
@realdata
def test_real_gsm8k_scorer_gold_and_shifted():
    _, test = local_rows("gsm8k", SHARED / "gsm8k")
    golds = [r["eval_target"] for r in test]
    solutions = [r["target"] for r in test]
    assert gsm8k_score(solutions, golds) == 100.0
    shifted = solutions[1:] + solutions[:1]
    assert gsm8k_score(shifted, golds) < 5.0  # neighbours rarely share the final number


@pytest.mark.realdata
@realdata
def test_paper_suite_run_on_shared_data_scores_both_tasks(tmp_path):
    from bench.cli import main

    config = Path(__file__).parents[1] / "configs" / "paper_local_tiny.toml"
    sources = f'{{gsm8k = "{SHARED / "gsm8k"}", logiqa = "{SHARED / "logiqa"}"}}'
    assert main(["run", str(config), "--set", f"results_dir={json.dumps(str(tmp_path))}",
                 "--set", f"tasks.sources={sources}"]) == 0
    (path,) = tmp_path.glob("*/*/result.json")
    r = json.loads(path.read_text())
    ev = r["evaluation"]
    assert r["run"]["status"] == "success" and set(ev["stages"][-1]["scores"]) == {"gsm8k", "logiqa"}
    assert ev["scorers"]["gsm8k"] == "exact match (final number)" and ev["chance"]["logiqa"] == 25.0
    assert all(v is not None and v > 0 for v in ev["stages"][-1]["nll"].values())


@pytest.mark.slow
def test_smollm2_conversion_and_cached_reload(tmp_path, monkeypatch):
    import time

    import torch

    from bench.backbones.registry import load_backbone

    monkeypatch.setenv("ISOBENCH_CACHE", str(tmp_path))
    model, tok = load_backbone("smollm2-135m", torch.float32, 0)
    assert (tmp_path / "smollm2-135m" / "config.json").is_file()
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tok("The capital of France is", return_tensors="pt")
    text = tok.decode(model.generate(**ids, max_new_tokens=5, do_sample=False)[0])
    assert "Paris" in text
    start = time.perf_counter()
    load_backbone("smollm2-135m", torch.float32, 0)
    assert time.perf_counter() - start < 10
