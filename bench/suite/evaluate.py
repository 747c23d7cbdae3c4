"""Evaluation with lm-eval on the in-memory exported model (greedy, offline YAML tasks).

Returns per task the score (0-100: exact match or accuracy) and the mean log-likelihood based
NLL of the gold answers (nats per answer; the most sensitive forgetting signal).

The context is the model's own (``max_position_embeddings``). lm-eval cuts a prompt from the
left to fit; a scored continuation (a gold answer, a choice) longer than the whole context is
cut to its first tokens here, and each task counts its items that were (``truncated_items``),
instead of lm-eval's bare assertion failing the run.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from bench.backbones.registry import context_length
from bench.config import EvalConfig
from bench.suite.judge import judge_answers
from bench.suite.tasks import Suite

for noisy in ("lm-eval", "lm_eval", "datasets"):
    logging.getLogger(noisy).setLevel(logging.ERROR)


def _quiet_datasets() -> None:
    import datasets
    import lm_eval.evaluator

    datasets.disable_progress_bars()
    # lm-eval collects torch's environment report (a `pip list` subprocess) after every
    # evaluation: ~0.9 s each, for information result.json's provenance already records.
    lm_eval.evaluator.add_env_info = lambda results: None


def fitting_lm(hflm: type, **kwargs: Any) -> Any:
    """An lm-eval ``HFLM`` whose log-likelihood requests are cut to fit its ``max_length``."""

    class FittingLM(hflm):  # type: ignore[misc, valid-type]
        def _loglikelihood_tokens(self, requests: list[Any], *args: Any, **kw: Any) -> list[Any]:
            fitted = [(key, context, continuation[:self.max_length])
                      for key, context, continuation in requests]
            return super()._loglikelihood_tokens(fitted, *args, **kw)

    return FittingLM(**kwargs)


def too_long(task: Any, rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, max_length: int) -> int:
    """Items of ``rows`` with a scored continuation longer than ``max_length`` tokens."""
    def length(text: str) -> int:
        return len(tokenizer(" " + text, add_special_tokens=False)["input_ids"])

    return sum(max(length(c) for c in [r["target"], *r.get("choices", [])] if c is not None) > max_length
               for r in rows)


def evaluate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, suite: Suite, config: EvalConfig,
             max_length: int | None = None, judge: Any = None) -> dict[str, dict[str, Any]]:
    """``{task: {"score", "nll", "scorer", ...}}`` for every task of ``suite``: score 0-100 (exact
    match, accuracy or ROUGE-L) or 1-10 for open-ended tasks when a ``judge`` is given."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _quiet_datasets()
    was_training = model.training
    model.eval()
    on = next(model.parameters()).device
    max_length = max_length or context_length(model)
    lm = fitting_lm(HFLM, pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size,
                    max_length=max_length, device=str(on))
    names = [f"iso_{t.name}" for t in suite.tasks]
    if config.nll:
        names += [f"iso_{t.name}_nll" for t in suite.tasks]
    judged = [t for t in suite.tasks if t.kind == "open" and judge is not None]
    manager = TaskManager(include_path=str(suite.lm_eval_dir), include_defaults=False)
    with torch.random.fork_rng(devices=[on] if on.type == "cuda" else []):
        out: dict[str, Any] = simple_evaluate(model=lm, tasks=names, task_manager=manager,
                                              limit=config.limit, bootstrap_iters=0, log_samples=bool(judged),
                                              verbosity="ERROR")
    results = out["results"]
    scores: dict[str, dict[str, Any]] = {}
    for task in suite.tasks:
        r = results[f"iso_{task.name}"]
        nll = results.get(f"iso_{task.name}_nll", {}).get("nll,none")
        scores[task.name] = {"score": 100.0 * float(r[task.metric]) if task.kind != "open" else float(r[task.metric]),
                             "nll": float(nll) if nll is not None else None, "scorer": task.scorer}
        cut = too_long(task, suite.test[task.name][:config.limit], tokenizer, max_length)
        if cut:
            scores[task.name]["truncated_items"] = cut
    for task in judged:
        samples = out["samples"][f"iso_{task.name}"]
        verdict = judge_answers(judge, [s["doc"]["prompt"] for s in samples],
                                [s["filtered_resps"][0] for s in samples])
        scores[task.name].update(rougeL=scores[task.name]["score"], score=verdict["score"],
                                 scorer=f"judge {verdict['judge']} (1-10)", judge_parsed=verdict["parsed"],
                                 judge_unparsed=verdict["unparsed"])
    model.train(was_training)
    return scores
