"""lm-eval runs offline on the tiny model and returns every task's score and NLL."""

from __future__ import annotations

import math

from bench.backbones.registry import tiny_llama
from bench.config import EvalConfig
from bench.suite.evaluate import evaluate
from bench.suite.tasks import build_suite
from bench.suite.tasks.offline import OFFLINE_TASKS

TASKS = {t.name: t for t in OFFLINE_TASKS}


def test_lm_eval_offline_on_tiny_model(tmp_path):
    model, tok = tiny_llama(0)
    suite = build_suite(list(TASKS), 0, 10, 8, tmp_path, 6)
    scores = evaluate(model, tok, suite, EvalConfig(limit=8, batch_size=8, max_gen_toks=6))
    assert set(scores) == set(TASKS)
    for s in scores.values():
        assert 0.0 <= s["score"] <= 100.0 and math.isfinite(s["nll"]) and s["nll"] > 0
    assert model.training  # evaluation puts the model back as it found it


def test_gold_nll_matches_the_training_loss_on_the_answer(tmp_path):
    """lm-eval's gold-answer NLL scores exactly the tokens training teaches (" target")."""
    import torch

    from bench.engine.data import IGNORE, collate, encode, summed_nll

    model, tok = tiny_llama(0)
    suite = build_suite(["arithmetic", "logic"], 0, 10, 6, tmp_path, 6)
    scores = evaluate(model, tok, suite, EvalConfig(limit=6, batch_size=6, max_gen_toks=4))
    model.eval()
    for task in ("arithmetic", "logic"):
        total = 0.0
        with torch.no_grad():
            for row in suite.test[task]:
                ids, labels = encode(row, tok, 256)
                labels = labels[:-1] + [IGNORE]  # lm-eval's continuation has no end-of-text token
                total += float(summed_nll(model, collate([(ids, labels)], tok.pad_token_id, torch.device("cpu"))))
        assert abs(scores[task]["nll"] - total / len(suite.test[task])) < 1e-3, task
