"""Equivalences between methods and between batch layouts."""

from __future__ import annotations

import torch

from methods.base import StageContext
from methods.parts.masks import select_top_fraction
from methods.static_isolation import StaticIsolation
from tests.harness import Harness


def context(h: Harness) -> StageContext:
    return StageContext(0, h.trainer.step, h.data, h.model, h.trainer.optimizer)


def max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def test_static_isolation_with_rho_zero_equals_full_sft():
    assert Harness("static_isolation", {"rho": 0.0}).steps(6) == Harness("full_sft").steps(6)


def test_epi_that_never_refreshes_equals_full_sft():
    assert Harness("epi", {"warmup_steps": 100}).steps(6) == Harness("full_sft").steps(6)


def test_epi_differs_from_full_sft_once_it_isolates():
    assert Harness("epi", {"refresh_every": 2, "rho": 0.2}).steps(6) != Harness("full_sft").steps(6)


def test_epi_with_frozen_first_mask_equals_static_fed_the_same_importance():
    epi = Harness("epi", {"warmup_steps": 3, "max_refreshes": 1, "rho": 0.05})
    epi.steps(2)
    before_mask = epi.save()  # the whole trainer just before the step that ends warm-up
    epi.step()
    importance = {n: t.clone() for n, t in epi.method.ema.values.items()}
    mask = {n: i.clone() for n, i in epi.method.isolated.index.items()}
    expected = epi.steps(6)

    class Fed(StaticIsolation):
        def importance(self, model, data):  # noqa: ANN001, ANN202 - the test feeds EPI's importance
            return importance

    static = Harness("full_sft")
    static.load(before_mask)  # full_sft ignores EPI's method state
    static.step()  # the same warm-up step, no isolation yet
    fed = Fed(Fed.Config(rho=0.05))
    fed.prepare(static.model)
    fed.on_stage_start(StageContext(0, static.trainer.step, static.data, static.model, static.trainer.optimizer))
    static.trainer.method = static.method = fed
    assert all(torch.equal(mask[n], fed.isolated.index[n]) for n in mask)
    assert static.steps(6) == expected


def test_adam_v_and_ema_select_the_same_first_mask():
    options = {"warmup_steps": 4, "max_refreshes": 1, "rho": 0.05, "beta": 0.999}
    ema = Harness("epi", {**options, "importance": "ema"}, max_grad_norm=0.0)
    adam_v = Harness("epi", {**options, "importance": "adam_v"}, max_grad_norm=0.0)
    ema.steps(4)
    adam_v.steps(4)
    a, b = ema.method.isolated.index, adam_v.method.isolated.index
    assert sum(i.numel() for i in a.values()) > 0
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_adam_v_keeps_no_per_parameter_state():
    assert Harness("epi", {"importance": "adam_v"}).method.ema is None


def test_static_importance_does_not_update_the_model():
    h = Harness("full_sft")
    before = {n: p.detach().clone() for n, p in h.model.named_parameters()}
    s = StaticIsolation(StaticIsolation.Config(source="probe", probe_steps=3, rho=0.05))
    s.prepare(h.model)
    s.on_stage_start(context(h))
    assert s.isolated.count() > 0
    for n, p in h.model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None


def test_probe_union_covers_every_task():
    h = Harness("full_sft", tasks=("arithmetic", "format", "program"))
    s = StaticIsolation(StaticIsolation.Config(source="probe", probe_steps=2, rho=0.02))
    s.prepare(h.model)
    per_task = [select_top_fraction(s.probe(h.model, h.data, t), 0.02) for t in h.data.tasks]
    s.on_stage_start(context(h))
    for core in per_task:
        for n, idx in core.items():
            assert torch.isin(idx, s.isolated.index[n]).all()


def test_batch_4_x_accum_1_equals_batch_1_x_accum_4():
    a = Harness("full_sft", batch_size=4, grad_accum=1)
    b = Harness("full_sft", batch_size=4, grad_accum=4)
    assert max_diff(a.steps(8), b.steps(8)) < 1e-5


def test_answer_only_output_layer_equals_the_full_forward():
    import torch.nn.functional as F

    from bench.engine.data import IGNORE, collate, summed_nll

    h = Harness("lora")
    batch = collate(h.rows["arithmetic"][:4], h.tokenizer.pad_token_id, torch.device("cpu"))
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    full = h.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][keep]
    expected = F.cross_entropy(full.float(), labels[keep], reduction="sum")
    torch.testing.assert_close(summed_nll(h.model, batch), expected, rtol=1e-5, atol=1e-5)


def literal_ema(grads: list[torch.Tensor], beta: float) -> torch.Tensor:
    values = torch.zeros_like(grads[0])
    for g in grads:
        values = beta * values + (1 - beta) * g * g
    return values


def test_one_pass_ema_equals_the_recurrence_across_folds_reads_and_a_resume():
    from torch import nn

    from methods.parts.importance import GradSquaredEMA

    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(257, generator=generator) * (1 + i % 3) for i in range(40)]
    for beta in (0.6, 0.9, 0.999, 0.3):  # 0.6 folds on its own every 21 steps; 0.3 takes the literal path
        param = nn.Parameter(torch.zeros(257))
        ema = GradSquaredEMA({"w": param}, beta)
        for i, g in enumerate(grads):
            param.grad = g
            ema.update()
            if i == 17:  # a read mid-way (a refresh) folds the decay in; the sequence goes on
                assert torch.allclose(ema.values["w"], literal_ema(grads[:18], beta), rtol=1e-5, atol=0)
            if i == 25:  # a checkpoint taken here and resumed continues identically
                saved = ema.state_dict()
                resumed = GradSquaredEMA({"w": param}, beta)
                resumed.load_state_dict(saved)
        for g in grads[26:]:
            param.grad = g
            resumed.update()
        assert torch.allclose(ema.values["w"], literal_ema(grads, beta), rtol=1e-5, atol=0), beta
        assert torch.equal(resumed.values["w"], ema.values["w"]), beta
