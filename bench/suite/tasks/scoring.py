"""Per-item scoring functions that lm-eval calls from the generated task YAML
(``process_results: !function isobench_metrics.rouge_l``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _rouge():  # noqa: ANN202 - rouge_score has no type hints
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 in 0-100 (Google's rouge-score, stemmed)."""
    return 100.0 * _rouge().score(reference, prediction)["rougeL"].fmeasure


def rouge_l(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval ``process_results``: ROUGE-L of the generation against ``doc['target']``."""
    return {"rougeL": rouge_l_f1(results[0].strip(), doc["target"] or "")}


def gold_nll(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, float]:
    """lm-eval ``process_results`` of a loglikelihood request: the gold answer's NLL in nats
    (lm-eval's own ``perplexity`` aggregate, exp(-mean), overflows on long answers)."""
    return {"nll": -float(results[0][0])}
