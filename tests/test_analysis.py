"""The training analyses (``[analysis]``): importance drift and gradient conflict, for any method.
They must not change training, and they must measure what they say."""

from __future__ import annotations

import json

import pytest
import torch

from bench.analysis.conflict import cosines
from bench.analysis.drift import spearman
from tests.harness import FAST, Harness

BOTH = {"importance_drift": {"every": 2, "rho": 0.05}, "gradient_conflict": {"every": 2, "batches": 1}}


@pytest.mark.parametrize("name", ["full_sft", "lora", "epi"])
def test_losses_and_weights_are_identical_with_and_without_the_analyses(name):
    plain = Harness(name, FAST.get(name, {}))
    observed = Harness(name, FAST.get(name, {}), analyses=BOTH)
    assert plain.steps(6) == observed.steps(6)
    for (n, a), (_, b) in zip(plain.model.named_parameters(), observed.model.named_parameters()):
        assert torch.equal(a, b), n
    kinds = {o.name: o.summary() for o in observed.trainer.observers if o.summary() is not None}
    assert kinds["importance_drift"]["snapshots"] == 3 and kinds["gradient_conflict"]["measurements"] == 3


def test_drift_snapshots_record_jaccard_and_spearman():
    h = Harness("full_sft", analyses={"importance_drift": {"every": 2, "rho": 0.05}}, tasks=("arithmetic",),
                regime="sequential")
    h.steps(6)
    (drift,) = h.trainer.observers
    summary = drift.summary()
    assert summary["step"] == [2, 4, 6] and summary["jaccard_prev"][0] is None
    assert all(0.0 <= j <= 1.0 for j in summary["jaccard_prev"][1:] + summary["jaccard_first"])
    assert summary["jaccard_first"][0] == 1.0
    assert all(-1.0 <= r <= 1.0 for r in summary["spearman_prev"][1:])
    events = [json.loads(line) for line in h.trainer.log.events["importance_drift"]]  # not yet flushed
    assert [e["kind"] for e in events] == ["set_drift"] * 3 and abs(events[0]["fraction"] - 0.05) < 1e-3


def test_spearman_matches_scipy():
    from scipy import stats

    a, b = [0.3, 0.1, 0.9, 0.5, 0.5], [1.0, 3.0, 2.0, 5.0, 4.0]
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert spearman([1.0], [2.0]) is None


def test_cosines_of_hand_made_gradients():
    grads = {"a": {"w": torch.tensor([1.0, 0.0]), "v": torch.tensor([1.0])},
             "b": {"w": torch.tensor([-1.0, 0.0]), "v": torch.tensor([1.0])},
             "c": {"w": torch.tensor([0.0, 0.0]), "v": torch.tensor([0.0])}}
    out = cosines(grads, ["w", "v"])
    assert out["a|b"] == pytest.approx(0.0) and out["a|c"] is None
    assert cosines(grads, ["w"])["a|b"] == pytest.approx(-1.0)


def test_conflict_measurement_leaves_no_gradient_and_records_every_pair():
    h = Harness("full_sft", tasks=("arithmetic", "format", "program"),
                analyses={"gradient_conflict": {"every": 5, "batches": 2}})
    h.steps(1)
    (line,) = h.trainer.log.events["gradient_conflict"]
    record = json.loads(line)
    assert record["step"] == 0 and set(record["cosines"]) == {"arithmetic|format", "arithmetic|program",
                                                              "format|program"}
    assert {"attention", "mlp", "embedding", "norm"} <= set(record["per_group"])
    assert 0.0 <= record["negative_fraction"] <= 1.0 and -1.0 <= record["mean_cosine"] <= 1.0
    assert all(p.grad is None for p in h.model.parameters())


@pytest.mark.parametrize("table, message", [
    ({"importance_drift": {"every": 0}}, "'analysis.importance_drift'.*'every'"),
    ({"gradient_conflict": {"batches": 1.5}}, "'analysis.gradient_conflict.batches'"),
    ({"importance_drift": {"rho": 2.0}}, "'rho'"),
    ({"gradient_conflict": {"evry": 3}}, "evry"),
])
def test_bad_analysis_options_name_the_key(table, message):
    from bench.run.checks import parse_analyses

    with pytest.raises(ValueError, match=message) as error:
        parse_analyses(table, "<test>")
    assert "analysis." in str(error.value)
