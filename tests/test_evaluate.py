"""lm-eval runs offline on the tiny model and returns every task's score and NLL."""

from __future__ import annotations

import math

from bench.config import EvalConfig
from bench.evaluate import evaluate
from bench.models import tiny_llama
from bench.tasks import TASKS, build_suite


def test_lm_eval_offline_on_tiny_model(tmp_path):
    model, tok = tiny_llama(0)
    suite = build_suite(list(TASKS), 0, 10, 8, tmp_path, 6)
    scores = evaluate(model, tok, suite, EvalConfig(limit=8, batch_size=8, max_gen_toks=6))
    assert set(scores) == set(TASKS)
    for s in scores.values():
        assert 0.0 <= s["score"] <= 100.0 and math.isfinite(s["nll"]) and s["nll"] > 0
    assert model.training  # evaluation puts the model back as it found it
