"""The result file of a run (``result.json``): one typed, versioned schema, written by ``bench``
and read back here, the only loader.

Sections (peft's method_comparison keeps the same split):
- ``run``: identity and outcome: run id, study, method, regime, backbone, seed, tasks, the
  resolved config, status and error, start and end times;
- ``evaluation``: what was measured: base scores, per-stage scores and gold-answer NLL, chance
  levels, metrics and scorers per task, rows per task;
- ``train``: loss summary, steps, tokens, throughput, wall time, peak memory, precision, and the
  method's final ``stats()``;
- ``provenance``: package versions, hardware, git commit, whether the worktree was dirty and a
  hash of the diff (a run of uncommitted code must not pass for one of the clean repo).

``schema_version`` is written; a file of version 1 (the flat layout before it) is upgraded on
read, a newer or unknown version is refused with a message naming it. Plain Python only: no
torch, no ray.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
STATUSES = ("running", "success", "failed")


class ResultError(ValueError):
    """A result file that cannot be read as this schema; the message names the file."""


@dataclasses.dataclass
class ErrorInfo:
    type: str
    message: str
    step: int | None = None
    traceback: str | None = None


@dataclasses.dataclass
class RunInfo:
    run_id: str
    study: str
    status: str
    method: str
    regime: str
    backbone: str
    seed: int
    tasks: list[str]
    config: dict[str, Any]
    error: ErrorInfo | None = None
    started_at: str | None = None
    finished_at: str | None = None
    resumed_from: list[int] = dataclasses.field(default_factory=list)  # steps of each resume from a checkpoint


@dataclasses.dataclass
class StageResult:
    stage: int
    trained_on: list[str]
    scores: dict[str, float | None]
    nll: dict[str, float | None]
    steps_done: int | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    retention: float | None = None  # mean per-token NLL on held-out general text (eval.retention)


@dataclasses.dataclass
class Evaluation:
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    stages: list[StageResult] = dataclasses.field(default_factory=list)
    chance: dict[str, float] = dataclasses.field(default_factory=dict)
    metrics: dict[str, str] = dataclasses.field(default_factory=dict)
    scorers: dict[str, str] = dataclasses.field(default_factory=dict)
    data_rows: dict[str, Any] = dataclasses.field(default_factory=dict)
    plan: dict[str, Any] = dataclasses.field(default_factory=dict)  # stage groups and how they were made
    retention_base: float | None = None  # the base model's retention NLL (eval.retention)


@dataclasses.dataclass
class TrainInfo:
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # loss, steps, tokens, throughput
    wall_s: float | None = None
    peak_memory_bytes: int | None = None
    precision: dict[str, Any] = dataclasses.field(default_factory=dict)
    method_stats: dict[str, float] = dataclasses.field(default_factory=dict)
    # updated_share: mean share of trainable entries a step updated; state_bytes_per_param: the
    # method's planned state per model parameter; trainable: trainable entries
    budget: dict[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint: dict[str, Any] = dataclasses.field(default_factory=dict)  # saves, bytes, write_s, read_s
    observers: dict[str, Any] = dataclasses.field(default_factory=dict)  # each observer's summary, by name
    timing: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds by phase (imports, data, model, ...)
    workers: int = 1  # processes the run was sharded over (train.workers)


@dataclasses.dataclass
class Provenance:
    versions: dict[str, str | None] = dataclasses.field(default_factory=dict)
    hardware: dict[str, Any] = dataclasses.field(default_factory=dict)
    git_commit: str | None = None
    git_dirty: bool | None = None  # uncommitted changes (tracked or untracked) at run time
    git_diff_sha1: str | None = None  # sha1 of those changes, None when clean


@dataclasses.dataclass
class Result:
    """One run's result file."""


    run: RunInfo
    evaluation: Evaluation = dataclasses.field(default_factory=Evaluation)
    train: TrainInfo = dataclasses.field(default_factory=TrainInfo)
    provenance: Provenance = dataclasses.field(default_factory=Provenance)
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.run.status == "success"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"


def _build(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp``; dataclasses are built recursively."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, key) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{key!r} must be an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        missing = [n for n, f in fields.items() if n not in value and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{key!r} lacks {', '.join(missing)}")
        built = {n: _build(hints[n], v, f"{key}.{n}") for n, v in value.items() if n in fields}
        return tp(**built)  # type: ignore[operator]
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{key!r} must be a list, got {type(value).__name__}")
        return [_build(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key!r} must be an object, got {type(value).__name__}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"{key!r} must be {tp.__name__}, got {value!r}")
    return value


ITEMS = Path("evaluation") / "items.jsonl"  # a run folder's per-item records


@dataclasses.dataclass
class ItemRecord:
    """One task's test items at one evaluation of a run (``evaluation``: ``"base"`` or the stage
    index): item ids, their scores on the stage score's scale, whose mean the stage score is (0 or
    100 for exact match and accuracy, ROUGE-L F1 in 0-100 for open-ended tasks, the judge's 1-10
    rating for a judged task, None for a reply the judge could not parse) and the gold answers' NLL
    (None when ``eval.nll`` is off)."""

    evaluation: str | int
    task: str
    ids: list[int]
    scores: list[float | None]
    nll: list[float | None]


def items_to_jsonl(records: list[ItemRecord]) -> str:
    """One compact JSON line per record."""
    return "".join(json.dumps(dataclasses.asdict(r), separators=(",", ":")) + "\n" for r in records)


def read_items(run_dir: Path) -> list[ItemRecord]:
    """A run's per-item records (``evaluation/items.jsonl``), empty when it has none;
    ``ResultError`` names the file and line when one is malformed."""
    path = Path(run_dir) / ITEMS
    if not path.is_file():
        return []
    return items_from_jsonl(path.read_text(), str(path))


def items_from_jsonl(text: str, where: str) -> list[ItemRecord]:
    """The records of ``items_to_jsonl`` text (``where`` names it in errors)."""
    out = []
    path = where
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            record = _build(ItemRecord, d, "item record")
        except (ValueError, TypeError) as e:
            raise ResultError(f"{path}:{number}: {e}") from None
        if not len(record.ids) == len(record.scores) == len(record.nll):
            raise ResultError(f"{path}:{number}: ids, scores and nll differ in length")
        out.append(record)
    return out


def upgrade_v1(d: dict[str, Any]) -> dict[str, Any]:
    """The flat layout of schema 1 (no ``schema_version``) -> schema 2."""
    train = dict(d.get("train") or {})
    wall, peak = train.pop("wall_s", None), train.pop("peak_memory_bytes", None)
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {k: d.get(k) for k in ("run_id", "study", "status", "method", "regime", "backbone", "seed", "tasks",
                                      "config", "error", "started_at", "finished_at")}
        | {"study": d.get("study") or "", "config": d.get("config") or {}},
        "evaluation": {"base": d.get("base") or {}, "stages": d.get("stages") or [], "chance": d.get("chance") or {},
                       "metrics": d.get("metrics") or {}, "scorers": d.get("scorers") or {},
                       "data_rows": d.get("data_rows") or {}},
        "train": {"summary": train, "wall_s": wall, "peak_memory_bytes": peak,
                  "method_stats": d.get("method_stats") or {}},
        "provenance": {"versions": d.get("versions") or {}, "hardware": d.get("hardware") or {},
                       "git_commit": d.get("git_commit")},
    }


def result_from_dict(d: Any, where: str) -> Result:
    """Validate and build a ``Result``; ``ResultError`` names ``where`` and what is wrong."""
    if not isinstance(d, dict):
        raise ResultError(f"{where}: not a result object (found {type(d).__name__})")
    version = d.get("schema_version", 1)
    if version == 1:
        d = upgrade_v1(d)
    elif version != SCHEMA_VERSION:
        raise ResultError(f"{where}: schema_version {version!r} is not readable by this isobench "
                          f"(reads 1 and {SCHEMA_VERSION}); upgrade isobench or rerun the cell")
    try:
        result = _build(Result, d, "result")
    except (ValueError, TypeError) as e:
        raise ResultError(f"{where}: {e}") from None
    if result.run.status not in STATUSES:
        raise ResultError(f"{where}: run.status {result.run.status!r} is not one of {', '.join(STATUSES)}")
    return result


def read_result_file(path: Path) -> Result | None:
    """The result at ``path``, None when there is no file; ``ResultError`` when it is truncated,
    not JSON, or not of this schema."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ResultError(f"{path}: cannot be read: {e}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ResultError(f"{path}: corrupt (not valid JSON: {e})") from None
    return result_from_dict(data, str(path))
