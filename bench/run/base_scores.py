"""The scores of the untrained backbone, measured once per (backbone, tasks, eval, resolved
precision) and cached under ``<study>/base/``: every run of a study starts from them, and a grid
measures them once per backbone before its trials start, so no two trials measure the same
thing. The seed matters only for random-init backbones."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from bench.backbones.registry import device, load_backbone, resolve
from bench.config import to_dict
from bench.engine.host_memory import keep_freed_memory
from bench.engine.precision import Precision
from bench.engine.sharding import Sharding
from bench.files import atomic_write
from bench.run.cell import Cell
from bench.run.measuring import load_suite, measure
from bench.suite.judge import Judge, build_judge
from bench.suite.tasks import Suite, source_digests
from bench.suite.tasks.lm_eval_files import FORMAT_VERSION


def base_key(cell: Cell) -> str:
    """What the base scores depend on (backbone, tasks, eval, the resolved precision policy; the
    seed for random-init backbones)."""
    c = to_dict(cell.config)
    key = {k: c[k] for k in ("backbone", "tasks", "eval")}
    key["tasks"] = {k: v for k, v in key["tasks"].items() if k not in ("groups", "num_groups")}  # stages only
    if key["eval"].get("split", "test") == "test":  # scored on test, the validation rows play no part: the
        key["eval"].pop("split", None)  # key of an earlier version's cache, which had neither key
        key["tasks"].pop("val_size", None)
    key["seed"] = cell.seed if resolve(cell.backbone.name).random_init else None
    key["precision"] = cell.precision  # ``auto`` as resolved here
    key["format"] = FORMAT_VERSION
    digests = source_digests(cell.tasks.sources)
    if digests:  # a rewritten data file is another suite (absent for generated tasks: old keys stay)
        key["source_sha256"] = digests
    return json.dumps(key, sort_keys=True)


def base_path(cell: Cell) -> Path:
    digest = hashlib.sha1(base_key(cell).encode()).hexdigest()[:10]
    return Path(cell.results_dir) / cell.study / "base" / f"{digest}.json"


def cached_base_scores(cell: Cell) -> dict[str, Any] | None:
    """The cached base scores of ``cell``'s backbone, or None when not measured yet."""
    path = base_path(cell)
    if not path.is_file():
        return None
    cached = json.loads(path.read_text())
    return {"scores": cached["scores"], "retention": cached.get("retention")}


def base_scores(cell: Cell, model: torch.nn.Module, tokenizer: Any, suite: Suite, judge: Judge | None,
                sharding: Sharding | None = None) -> dict[str, Any]:
    """Scores of the untrained backbone (with each task's ``items`` and the ``retention`` NLL),
    from the cache or measured and cached. Sharded, rank 0 decides whether the cache holds them,
    every rank takes part in the (sharded) evaluation, and rank 0 writes the cache."""
    if sharding is None:
        cached = cached_base_scores(cell)
    else:
        cached = sharding.on_writer(lambda: cached_base_scores(cell))
    if cached is not None:
        return cached
    measured = measure(cell, model, tokenizer, suite, judge)
    if sharding is not None:
        measured = sharding.from_writer(lambda: measured if sharding.writes else None)
    if sharding is None or sharding.writes:
        atomic_write(base_path(cell), json.dumps({"key": json.loads(base_key(cell)), **measured}, indent=2,
                                                 sort_keys=True) + "\n")
    return measured


def ensure_base_scores(cell: Cell) -> None:
    """Measure and cache the base scores of ``cell``'s backbone, unless cached."""
    if base_path(cell).is_file():
        return
    keep_freed_memory()
    suite = load_suite(cell)
    precision = Precision.from_config(cell.precision, device())
    model, tokenizer = load_backbone(cell.backbone.name, precision.param_dtype, cell.seed, precision.device)
    judge = build_judge(cell.judge) if cell.judge is not None else None
    with precision.evaluation(model):
        base_scores(cell, model, tokenizer, suite, judge)
