"""The paper suite: GSM8K, CodeAlpaca, LogiQA, Alpaca, UltraChat.

Each task loads from the hub by id through ``datasets`` (``source = "hub"``) or from a local file
or folder in the upstream format (``source = "<path>"``):

- GSM8K: jsonl with ``question`` / ``answer`` (reasoning, then ``#### <number>``); a folder
  holds ``train.jsonl`` and ``test.jsonl``.
- LogiQA: the 8-line text format (blank, answer letter, context, question, 4 options ``A.``..);
  a folder holds ``Train.txt`` (or, when absent, ``Eval.txt`` for training) and ``Test.txt``.
- CodeAlpaca, Alpaca: json list or jsonl of ``instruction`` / ``input`` / ``output``, or the
  self-instruct seed format with ``instances: [{input, output}]``.
- UltraChat: json list or jsonl with ``messages`` (user/assistant turns) or prompts only
  (``data`` / ``prompt``): prompt-only data can be evaluated with a judge, not trained on.

When a source has no separate test split, a held-out split is carved deterministically from the
seed. A malformed file raises ``DataError`` naming the file, the line or item, and what was
expected.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.suite.tasks.base import Row, Task


class DataError(ValueError):
    """A data file that does not have the expected upstream format."""


def read_text(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 is named by its line, never a bare decode error."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_records(path: Path) -> list[tuple[str, Any]]:
    """(location, record) pairs of a json list or jsonl file; location is 'line N' / 'item N'."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as e:
            raise DataError(f"{path}: not valid JSON ({e}); expected a JSON list of objects") from None
        return [(f"item {i}", r) for i, r in enumerate(items)]
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"line {i}", json.loads(line)))
            except ValueError:
                raise DataError(f"{path}: line {i}: not valid JSON; expected one JSON object per line") from None
    return out


def need(path: Path, where: str, record: Any, *keys: str, text: tuple[str, ...] | None = None) -> None:
    """``record`` is an object with ``keys``, whose ``text`` keys (default: all) hold strings."""
    if not isinstance(record, dict) or any(k not in record for k in keys):
        raise DataError(f"{path}: {where}: expected an object with keys {', '.join(keys)}; got "
                        f"{type(record).__name__} {str(record)[:80]!r}")
    for key in keys if text is None else text:
        if not isinstance(record.get(key), str):
            raise DataError(f"{path}: {where}: key {key!r} must be a string, got {record.get(key)!r}")


def gsm8k_number(answer: str) -> str:
    """The final number of a GSM8K answer ('#### 1,234' -> '1234')."""
    return answer.split("####")[-1].strip().replace(",", "")


def gsm8k_row(question: str, answer: str) -> Row:
    solution = re.sub(r"<<[^>]*>>", "", answer).strip()  # drop calculator annotations
    return {"prompt": f"Question: {question.strip()}\nAnswer:", "target": solution,
            "eval_target": gsm8k_number(answer)}


# "A.text", "A. text", "A) text", "A text", "A?text": the upstream file is not uniform.
LOGIQA_OPTION = re.compile(r"^[A-D](?:[^\w\s]\s*|\s+)")


def logiqa_row(letter: str, context: str, question: str, options: list[str]) -> Row:
    """Options are placed by their own letter when all four carry distinct ones (one upstream
    item lists them A, C, B, D); otherwise by position (the hub copy gives bare texts, and a few
    upstream lines lost their prefix)."""
    letters = [o.strip()[:1] if LOGIQA_OPTION.match(o.strip()) else "" for o in options]
    if sorted(letters) == list("ABCD"):
        by_letter = {x: LOGIQA_OPTION.sub("", o.strip(), count=1) for x, o in zip(letters, options)}
        choices = [by_letter[x] for x in "ABCD"]
    else:
        choices = [LOGIQA_OPTION.sub("", o.strip(), count=1) for o in options]
    lines = "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(choices))
    gold = "abcd".index(letter.strip().lower())
    return {"prompt": f"Passage: {context.strip()}\nQuestion: {question.strip()}\n{lines}\nAnswer:",
            "target": choices[gold], "choices": choices, "gold": gold}


def instruction_row(instruction: str, inp: str, output: str | None) -> Row:
    body = f"Instruction: {instruction.strip()}\n" + (f"Input: {inp.strip()}\n" if inp and inp.strip() else "")
    return {"prompt": body + "Response:", "target": output.strip() if output is not None else None}


# -- local formats -------------------------------------------------------------------------------
def load_gsm8k_file(path: Path) -> list[Row]:
    rows = []
    for where, r in read_records(path):
        need(path, where, r, "question", "answer")
        if "####" not in r["answer"]:
            raise DataError(f"{path}: {where}: expected the answer to end with '#### <number>'")
        rows.append(gsm8k_row(r["question"], r["answer"]))
    return rows


def load_logiqa_file(path: Path) -> list[Row]:
    lines = read_text(path).split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 8 not in (0, 7):
        raise DataError(f"{path}: {len(lines)} lines; expected 8 lines per item (blank, letter, context, "
                        f"question, 4 options)")
    rows = []
    for start in range(0, len(lines), 8):
        item = lines[start:start + 8]
        item += [""] * (8 - len(item))
        where = f"item {start // 8} (line {start + 1})"
        if item[0].strip() or item[1].strip().lower() not in ("a", "b", "c", "d"):
            raise DataError(f"{path}: {where}: expected a blank line then an answer letter a-d, got {item[:2]!r}")
        if not all(o.strip() for o in item[2:8]):
            raise DataError(f"{path}: {where}: expected context, question and four non-empty option lines")
        rows.append(logiqa_row(item[1], item[2], item[3], item[4:8]))
    return rows


def load_instruction_file(path: Path) -> list[Row]:
    rows = []
    for where, r in read_records(path):
        if isinstance(r, dict) and "instances" in r:
            need(path, where, r, "instruction", "instances", text=("instruction",))
            for inst in r["instances"]:
                need(path, where, inst, "input", "output")
                rows.append(instruction_row(r["instruction"], inst["input"], inst["output"]))
        else:
            need(path, where, r, "instruction", "output")
            if not isinstance(r.get("input", ""), str):
                raise DataError(f"{path}: {where}: key 'input' must be a string, got {r['input']!r}")
            rows.append(instruction_row(r["instruction"], r.get("input", ""), r["output"]))
    return rows


def load_chat_file(path: Path) -> list[Row]:
    rows = []
    for where, r in read_records(path):
        if isinstance(r, dict) and "messages" in r:
            turns = r["messages"]
            user = next((m["content"] for m in turns if m.get("role") == "user"), None)
            reply = next((m["content"] for m in turns if m.get("role") == "assistant"), None)
            if user is None:
                raise DataError(f"{path}: {where}: expected a user message in 'messages'")
            rows.append(instruction_row(user, "", reply))
        elif isinstance(r, dict) and ("data" in r or "prompt" in r):
            text = r.get("data", r.get("prompt"))
            rows.append(instruction_row(text if isinstance(text, str) else text[0], "", None))
        else:
            raise DataError(f"{path}: {where}: expected an object with 'messages', 'data' or 'prompt'")
    return rows


# -- the hub -------------------------------------------------------------------------------------
def hub_rows(dataset: str, config: str | None, split: str, convert: Callable[[dict[str, Any]], Row]) -> list[Row]:
    from datasets import load_dataset

    try:
        data = load_dataset(dataset, config, split=split)
    except Exception as e:  # noqa: BLE001 - offline or unknown dataset: say which and how to fix
        raise DataError(f"could not load {dataset} ({split}) from the hub: {type(e).__name__}: {e}. "
                        f"Offline? Give a local copy with tasks.sources") from None
    return [convert(r) for r in data]


def _chat_from_hub(r: dict[str, Any]) -> Row:
    user = next(m["content"] for m in r["messages"] if m["role"] == "user")
    reply = next((m["content"] for m in r["messages"] if m["role"] == "assistant"), None)
    return instruction_row(user, "", reply)


# The hub dataset of each paper task.
HUB_IDS = {"gsm8k": "openai/gsm8k", "logiqa": "lucasmccabe/logiqa", "codealpaca": "sahil2801/CodeAlpaca-20k",
           "alpaca": "tatsu-lab/alpaca", "ultrachat": "HuggingFaceH4/ultrachat_200k"}
HUB: dict[str, Callable[[], tuple[list[Row], list[Row] | None]]] = {
    "gsm8k": lambda: tuple(hub_rows(HUB_IDS["gsm8k"], "main", s, lambda r: gsm8k_row(r["question"], r["answer"]))
                           for s in ("train", "test")),  # type: ignore[return-value]
    "logiqa": lambda: tuple(hub_rows(HUB_IDS["logiqa"], None, s, lambda r: logiqa_row(
        "abcd"[r["correct_option"]], r["context"], r["query"], r["options"])) for s in ("train", "test")),  # type: ignore[return-value]
    "codealpaca": lambda: (hub_rows(HUB_IDS["codealpaca"], None, "train",
                                    lambda r: instruction_row(r["instruction"], r["input"], r["output"])), None),
    "alpaca": lambda: (hub_rows(HUB_IDS["alpaca"], None, "train",
                                lambda r: instruction_row(r["instruction"], r["input"], r["output"])), None),
    "ultrachat": lambda: tuple(hub_rows(HUB_IDS["ultrachat"], None, s, _chat_from_hub)
                               for s in ("train_sft", "test_sft")),  # type: ignore[return-value]
}


def source_problem(task: str, path: Path) -> str | None:
    """Why ``path`` cannot be task ``task``'s source (checked before anything loads), or None:
    a regular file, or a folder with the files the task reads."""
    if not path.exists():
        return "does not exist"
    if path.is_file():
        return None
    if not path.is_dir():
        return "is neither a regular file nor a folder (a named pipe or a device?)"
    if task == "gsm8k":
        missing = [n for n in ("train.jsonl", "test.jsonl") if not (path / n).is_file()]
        return f"is a folder without {' and '.join(missing)}" if missing else None
    if task == "logiqa":
        if not (path / "Test.txt").is_file() or not any((path / n).is_file() for n in ("Train.txt", "Eval.txt")):
            return "is a folder without Test.txt and Train.txt (or Eval.txt)"
        return None
    files = [p for p in [*path.glob("*.json"), *path.glob("*.jsonl")] if p.is_file()]
    return None if len(files) == 1 else f"is a folder with {len(files)} .json/.jsonl files; allowed: exactly one"


def read_files(task: str, path: Path) -> list[Path]:
    """The files ``local_rows`` reads from a local source: the file itself, or the folder's files
    the task reads (an editor's swap file or a ``.git/`` beside them is not the source)."""
    if path.is_file():
        return [path]
    if task == "gsm8k":
        names = ["test.jsonl", "train.jsonl"]
    elif task == "logiqa":
        names = ["Test.txt", "Train.txt" if (path / "Train.txt").is_file() else "Eval.txt"]
    else:
        names = [p.name for p in [*path.glob("*.json"), *path.glob("*.jsonl")]]
    return sorted(path / n for n in names if (path / n).is_file())


def source_sha256(path: Path, task: str) -> str:
    """Content hash of a local source: a file's bytes, or the names and bytes of the folder's
    files that the task reads (``read_files``), in name order. Part of a run's identity: a
    rewritten file is another source. Each file is read once per (size, modification time): a
    grid asks for the same sources for every cell."""
    files = read_files(task, path)
    return _sha256(path, tuple((f, f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=256)
def _sha256(path: Path, files: tuple[tuple[Path, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for file, _, _ in files:
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" if file != path else b"")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def dedupe(rows: list[Row]) -> tuple[list[Row], int]:
    """The rows with exact duplicates removed (first kept), and how many were removed."""
    seen: set[str] = set()
    out = []
    for row in rows:
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out, len(rows) - len(out)


def local_rows(task: str, path: Path) -> tuple[list[Row], list[Row] | None]:
    """(train, test or None) from a local file or folder in the upstream format."""
    problem = source_problem(task, path)
    if problem:
        raise DataError(f"{path}: {problem} (source of task {task!r})")
    if task == "gsm8k":
        if path.is_dir():
            return load_gsm8k_file(path / "train.jsonl"), load_gsm8k_file(path / "test.jsonl")
        return load_gsm8k_file(path), None
    if task == "logiqa":
        if path.is_dir():
            train = path / "Train.txt" if (path / "Train.txt").is_file() else path / "Eval.txt"
            return load_logiqa_file(train), load_logiqa_file(path / "Test.txt")
        return load_logiqa_file(path), None
    if path.is_dir():
        files = sorted([*path.glob("*.json"), *path.glob("*.jsonl")])
        if len(files) != 1:
            raise DataError(f"{path}: expected exactly one .json/.jsonl file in the folder, found {len(files)}")
        path = files[0]
    return (load_chat_file(path) if task == "ultrachat" else load_instruction_file(path)), None


def paper_split(task: Task, seed: int, train_size: int, test_size: int,
                source: str) -> tuple[list[Row], list[Row], dict[str, Any]]:
    """Deterministic (train, test, notes): the source's own test split when it has one, else
    carved. Exact duplicate rows are removed first, and training rows whose prompt is also a
    test prompt are dropped, so no held-out item is trained on; ``notes`` counts both and holds
    a local source's content hash."""
    train, test = HUB[task.name]() if source == "hub" else local_rows(task.name, Path(source))
    train, duplicates = dedupe(list(train))
    rng = random.Random(f"{task.name}:{seed}")
    where = f"task {task.name!r} from {source}"
    if test is None:
        if len(train) <= test_size:
            raise DataError(f"{where}: {len(train)} distinct rows ({duplicates} duplicates removed), not more than "
                            f"tasks.test_size = {test_size}: no row would be left to train on; allowed: a "
                            f"tasks.test_size below {len(train)}")
        rows = list(train)
        rng.shuffle(rows)
        test, train = rows[:test_size], rows[test_size:]
    else:
        test, test_duplicates = dedupe(list(test))
        duplicates += test_duplicates
        rng.shuffle(train)
        random.Random(f"{task.name}:{seed}:test").shuffle(test)
    test = test[:test_size]
    held_out = {r["prompt"] for r in test}
    kept = [r for r in train if r["prompt"] not in held_out]
    notes = {"duplicates_removed": duplicates, "test_prompts_dropped_from_train": len(train) - len(kept),
             "source_sha256": None if source == "hub" else source_sha256(Path(source), task.name)}
    if not test or not kept:
        raise DataError(f"{where}: {len(test)} test and {len(kept)} training rows after removing duplicates; "
                        f"allowed: a source with at least one of each")
    return kept[:train_size], test, notes


PAPER_TASKS = [
    Task("gsm8k", "math", "gsm8k", None, "GSM8K, exact match on the final number", loader=paper_split),
    Task("codealpaca", "code", "open", None, "CodeAlpaca-20k, judge 1-10 or ROUGE-L", loader=paper_split),
    Task("logiqa", "logic", "choice", None, "LogiQA, 4-way log-likelihood accuracy", loader=paper_split),
    Task("alpaca", "instructions", "open", None, "Alpaca, judge 1-10 or ROUGE-L", loader=paper_split),
    Task("ultrachat", "chat", "open", None, "UltraChat, judge 1-10 or ROUGE-L", loader=paper_split),
]
