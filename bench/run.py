"""One run, end to end: data, backbone, base scores, the regime's stages with evaluation after
each, and ``result.json`` written atomically whatever happens (``status`` says how it ended).

A run whose result says ``success`` is never redone unless ``force``; a failed run records the
error type, message and the step it reached, and is redone from scratch on the next attempt.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import traceback
from pathlib import Path
from typing import Any

import torch

import methods
from bench import results as res
from bench.config import RunConfig, to_dict
from bench.data import StageData, Stream, encode
from bench.evaluate import evaluate
from bench.judge import build_judge
from bench.models import RANDOM_INIT, device, load_backbone
from bench.regimes import stages
from bench.tasks import Suite, build_suite
from bench.tasks.lm_eval_files import FORMAT_VERSION
from bench.train import Trainer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def base_scores(config: RunConfig, model: torch.nn.Module, tokenizer: Any, suite: Suite, judge: Any) -> dict[str, Any]:
    """Scores of the untrained backbone, measured once per (backbone, tasks, eval) and cached
    under ``<study>/base/`` (the seed matters only for random-init backbones)."""
    c = to_dict(config)
    key = {k: c[k] for k in ("backbone", "tasks", "eval")}
    key["seed"] = config.seed if config.backbone.name in RANDOM_INIT else None
    key["format"] = FORMAT_VERSION
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(config.results_dir) / config.study / "base" / f"{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())["scores"]
    scores = evaluate(model, tokenizer, suite, config.eval, judge=judge)
    res.atomic_write(path, json.dumps({"key": key, "scores": scores}, indent=2, sort_keys=True) + "\n")
    return scores


def execute(config: RunConfig, *, progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Train and evaluate one run; returns (and writes) its result dict."""
    run_dir = config.run_dir
    previous = res.read_result(run_dir)
    if previous and previous.get("status") == "success" and not force:
        return previous
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.jsonl", "masks.jsonl"):
        (run_dir / stale).unlink(missing_ok=True)
    result: dict[str, Any] = {
        "run_id": config.run_id, "study": config.study, "status": "running", "error": None,
        "config": to_dict(config), "method": config.method.name, "regime": config.regime,
        "backbone": config.backbone.name, "seed": config.seed, "tasks": list(config.tasks.names),
        "stages": [], "versions": res.versions(), "git_commit": res.git_commit(),
        "hardware": res.hardware(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    start = time.perf_counter()
    trainer = method = None
    try:
        seed_everything(config.seed)
        on = device()
        suite = build_suite(config.tasks.names, config.tasks.data_seed, config.tasks.train_size,
                            config.tasks.test_size, Path(config.results_dir) / config.study / "data",
                            config.eval.max_gen_toks, config.tasks.sources)
        result["metrics"] = {t.name: t.metric for t in suite.tasks}
        result["scorers"] = {t.name: t.scorer for t in suite.tasks}
        result["data_rows"] = {t.name: {"train": len(suite.train[t.name]), "test": len(suite.test[t.name])}
                               for t in suite.tasks}
        result["chance"] = {t.name: t.chance(suite.test[t.name][:config.eval.limit]) for t in suite.tasks}
        model, tokenizer = load_backbone(config.backbone.name, config.backbone.dtype, config.seed, on)
        method = methods.build(config.method.name, config.method.options)
        judge = build_judge(config.eval.judge) if config.eval.judge else None
        result["base"] = base_scores(config, model, tokenizer, suite, judge)
        features = {t: [encode(r, tokenizer, config.train.max_length) for r in rows]
                    for t, rows in suite.train.items()}
        trainer = Trainer(model, method, config.train, tokenizer.pad_token_id, on, run_dir, progress)
        balanced = config.tasks.mix == "balanced"
        for stage in stages(config.regime, config.tasks.names):
            rows = {t: features[t] for t in stage.tasks}
            stream = iter(Stream(rows, f"{config.seed}:{stage.index}", balanced))
            data = StageData(stage.index, rows, config.train.batch_size, tokenizer.pad_token_id, on,
                             config.seed, balanced)
            trainer.run_stage(stage.index, data, stream, config.train.steps_per_stage)
            scores = evaluate(method.export(trainer.model), tokenizer, suite, config.eval, judge=judge)
            result["stages"].append({"stage": stage.index, "trained_on": stage.tasks, "steps_done": trainer.step,
                                     "scores": {t: s["score"] for t, s in scores.items()},
                                     "nll": {t: s["nll"] for t, s in scores.items()},
                                     "details": {t: {k: v for k, v in s.items() if k not in ("score", "nll")}
                                                 for t, s in scores.items()}})
            result["scorers"] = {t: s["scorer"] for t, s in scores.items()}
        result["status"] = "success"
    except Exception as e:  # noqa: BLE001 - every failure is recorded, then the grid goes on
        result["status"] = "failed"
        result["error"] = {"type": type(e).__name__, "message": str(e),
                           "step": getattr(e, "step", trainer.step if trainer else None),
                           "traceback": traceback.format_exc()[-5000:]}
    finally:
        if trainer is not None:
            trainer.flush()
            result["train"] = trainer.summary()
        if method is not None:
            result["method_stats"] = method.stats()
        result.setdefault("train", {})["wall_s"] = time.perf_counter() - start
        result["train"]["peak_memory_bytes"] = res.peak_memory_bytes()
        result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if result["status"] != "running":  # Ctrl-C leaves no result: the run is simply missing
            res.write_result(run_dir, result)
    return result
