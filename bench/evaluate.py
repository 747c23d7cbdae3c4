"""Evaluation with lm-eval on the in-memory exported model (greedy, offline YAML tasks).

Returns per task the score (0-100: exact match or accuracy) and the mean log-likelihood based
NLL of the gold answers (nats per answer; the most sensitive forgetting signal).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from bench.config import EvalConfig
from bench.tasks import Suite

for noisy in ("lm-eval", "lm_eval", "datasets"):
    logging.getLogger(noisy).setLevel(logging.ERROR)


def _quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()


def evaluate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, suite: Suite, config: EvalConfig,
             max_length: int = 512) -> dict[str, dict[str, float | None]]:
    """``{task: {"score": 0-100, "nll": nats or None}}`` for every task of ``suite``."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _quiet_datasets()
    was_training = model.training
    model.eval()
    on = next(model.parameters()).device
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size,
              max_length=max_length, device=str(on))
    names = [f"iso_{t.name}" for t in suite.tasks]
    if config.nll:
        names += [f"iso_{t.name}_nll" for t in suite.tasks]
    manager = TaskManager(include_path=str(suite.lm_eval_dir), include_defaults=False)
    with torch.random.fork_rng(devices=[on] if on.type == "cuda" else []):
        out: dict[str, Any] = simple_evaluate(model=lm, tasks=names, task_manager=manager,
                                              limit=config.limit, bootstrap_iters=0, log_samples=False,
                                              verbosity="ERROR")
    model.train(was_training)
    results = out["results"]
    scores: dict[str, dict[str, float | None]] = {}
    for task in suite.tasks:
        r = results[f"iso_{task.name}"]
        nll = results.get(f"iso_{task.name}_nll", {}).get("perplexity,none")
        scores[task.name] = {"score": 100.0 * float(r[f"{task.metric},none"]),
                             "nll": math.log(float(nll)) if nll is not None else None}
    return scores
