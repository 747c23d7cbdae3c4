"""Evaluation with lm-eval on the in-memory exported model (greedy, offline YAML tasks).

Returns per task the score (0-100: exact match or accuracy) and the mean log-likelihood based
NLL of the gold answers (nats per answer; the most sensitive forgetting signal).

In a sharded run every rank evaluates: lm-eval's own data-parallel split (rank r takes items
r, r + N, r + 2N, ... of every task) runs each rank's share on its whole copy of the model, and
``IsobenchLM`` gathers the per-item values to rank 0 back in item order, so the aggregates are
those of one process (rank 0 returns the scores, the other ranks None).

The context is the model's own (``max_position_embeddings``). lm-eval cuts a prompt from the
left to fit; a scored continuation (a gold answer, a choice) longer than the whole context is
cut to its first tokens here, and each task counts its items that were (``truncated_items``),
instead of lm-eval's bare assertion failing the run.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
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


def interleave(parts: list[Any]) -> Any:
    """Per-rank values of a strided split (rank r holds items r, r + N, ...) merged back in item
    order: lists are interleaved, tables merged key by key."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: interleave([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [p[i] for i in range(max(len(p) for p in parts)) for p in parts if i < len(p)]
    return first


def evaluation_lm(hflm: type, **kwargs: Any) -> Any:
    """An lm-eval ``HFLM`` over torch.distributed's process group (when there is one; lm-eval's
    data-parallel hooks: rank, world size, gathers and a barrier) whose log-likelihood requests
    are cut to fit its ``max_length``."""

    class IsobenchLM(hflm):  # type: ignore[misc, valid-type]
        def _loglikelihood_tokens(self, requests: list[Any], *args: Any, **kw: Any) -> list[Any]:
            fitted = [(key, context, continuation[:self.max_length])
                      for key, context, continuation in requests]
            return super()._loglikelihood_tokens(fitted, *args, **kw)

        def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
            if self.world_size <= 1:
                return tensor
            parts = [torch.zeros_like(tensor) for _ in range(self.world_size)]
            dist.all_gather(parts, tensor.contiguous())
            return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

        def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
            if self.world_size <= 1:
                return [obj]
            parts: list[Any] | None = [None] * self.world_size if self.rank == dst else None
            dist.gather_object(obj, parts, dst=dst)
            return [interleave(parts)] if parts is not None else None

        def barrier(self) -> None:
            if self.world_size > 1:
                dist.barrier()

    lm = IsobenchLM(**kwargs)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        lm._rank, lm._world_size = dist.get_rank(), dist.get_world_size()
    return lm


def too_long(task: Any, rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, max_length: int) -> int:
    """Items of ``rows`` with a scored continuation longer than ``max_length`` tokens."""
    def length(text: str) -> int:
        return len(tokenizer(" " + text, add_special_tokens=False)["input_ids"])

    return sum(max(length(c) for c in [r["target"], *r.get("choices", [])] if c is not None) > max_length
               for r in rows)


def item_values(samples: dict[str, list[dict[str, Any]]], task: Any, nll: bool) -> list[dict[str, Any]]:
    """Per test item of ``task``, in item order: its id, its score on the task's 0-100 scale
    (the same scale as the stage score, whose mean it is) and its gold NLL."""
    nlls = {s["doc_id"]: s.get("nll") for s in samples.get(f"iso_{task.name}_nll", [])} if nll else {}
    metric = task.metric.split(",")[0]  # "exact_match,none" in the results, "exact_match" per item
    out = []
    for s in samples[f"iso_{task.name}"]:  # in item order: lm-eval's, and in a sharded run ``interleave``'s
        out.append({"id": s["doc_id"], "score": task.points(s[metric]), "nll": nlls.get(s["doc_id"])})
    return out


def evaluate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, suite: Suite, config: EvalConfig,
             max_length: int | None = None, judge: Any = None,
             per_item: bool = False) -> dict[str, dict[str, Any]] | None:
    """``{task: {"score", "nll", "scorer", ...}}`` for every task of ``suite``: score 0-100 (exact
    match, accuracy or ROUGE-L) or 1-10 for open-ended tasks when a ``judge`` is given;
    ``per_item`` adds each task's ``items`` (id, score metric, gold NLL). In a process group of
    several ranks every rank must call it; rank 0 gets the scores, the others None."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _quiet_datasets()
    was_training = model.training
    model.eval()
    on = next(model.parameters()).device
    max_length = max_length or context_length(model)
    lm = evaluation_lm(HFLM, pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size,
                       max_length=max_length, device=str(on))
    names = [f"iso_{t.name}" for t in suite.tasks]
    if config.nll:
        names += [f"iso_{t.name}_nll" for t in suite.tasks]
    judged = [t for t in suite.tasks if t.kind == "open" and judge is not None]
    manager = TaskManager(include_path=str(suite.lm_eval_dir), include_defaults=False)
    with torch.random.fork_rng(devices=[on] if on.type == "cuda" else []):
        out: dict[str, Any] = simple_evaluate(model=lm, tasks=names, task_manager=manager,
                                              limit=config.limit, bootstrap_iters=0,
                                              log_samples=bool(judged) or per_item, verbosity="ERROR")
    if out is None:  # a rank other than 0 of a sharded evaluation: rank 0 holds the gathered values
        model.train(was_training)
        return None
    results = out["results"]
    scores: dict[str, dict[str, Any]] = {}
    for task in suite.tasks:
        r = results[f"iso_{task.name}"]
        nll = results.get(f"iso_{task.name}_nll", {}).get("nll,none")
        scores[task.name] = {"score": task.points(r[task.metric]),
                             "nll": float(nll) if nll is not None else None, "scorer": task.scorer}
        cut = too_long(task, suite.test[task.name][:config.limit], tokenizer, max_length)
        if cut:
            scores[task.name]["truncated_items"] = cut
        if per_item:
            scores[task.name]["items"] = item_values(out["samples"], task, config.nll)
    for task in judged:
        samples = out["samples"][f"iso_{task.name}"]
        verdict = judge_answers(judge, [s["doc"]["prompt"] for s in samples],
                                [s["filtered_resps"][0] for s in samples])
        scores[task.name].update(rougeL=scores[task.name]["score"], score=verdict["score"],
                                 scorer=f"judge {verdict['judge']} (1-10)", judge_parsed=verdict["parsed"],
                                 judge_unparsed=verdict["unparsed"])
        if per_item:  # a judged task's items are the judge's own ratings (None: a reply it could not parse)
            ratings = dict(zip((s["doc_id"] for s in samples), verdict["ratings"]))
            for item in scores[task.name]["items"]:
                item["score"] = ratings[item["id"]]
    model.train(was_training)
    return scores
