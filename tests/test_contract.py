"""Contract matrix: every registered method obeys the interface's promises."""

from __future__ import annotations

import pytest
import torch

import methods
from tests.harness import Harness

# Options that make every isolation method isolate something within a few steps.
FAST = {"epi": {"refresh_every": 2, "rho": 0.05}, "random_isolation": {"refresh_every": 2, "rho": 0.05},
        "static_isolation": {"rho": 0.05, "calibration_batches": 2}}


def build(name: str, **kw) -> Harness:
    return Harness(name, FAST.get(name, {}), **kw)


@pytest.mark.parametrize("name", methods.names())
def test_trainable_entries_change(name):
    h = build(name)
    before = {n: p.detach().clone() for n, p in h.model.named_parameters() if p.requires_grad}
    h.steps(3)
    after = dict(h.model.named_parameters())
    changed = sum(int((after[n].detach() != v).sum()) for n, v in before.items())
    assert changed > 0.5 * sum(v.numel() for v in before.values())


@pytest.mark.parametrize("name", methods.names())
def test_isolated_entries_bit_identical_under_weight_decay(name):
    h = build(name, weight_decay=0.1)
    seen_masks = 0
    for _ in range(9):  # several refreshes for epi/random (every 2 steps)
        masks = h.method.isolation_masks()
        params = dict(h.model.named_parameters())
        frozen = {n: params[n].detach()[m].clone() for n, m in masks.items() if m.any()}
        seen_masks += bool(frozen)
        h.step()
        for n, values in frozen.items():
            assert torch.equal(params[n].detach()[masks[n]], values), f"{name}: isolated entries of {n} moved"
    if name in FAST:
        assert seen_masks >= 7, f"{name} isolated nothing: the check above would be vacuous"


@pytest.mark.parametrize("name", methods.names())
def test_state_dict_round_trip_continues_identically(name):
    a = build(name)
    a.steps(3)
    snap = a.snapshot()
    expected = a.steps(4)
    b = build(name, seed=1)  # different init: everything must come from the snapshot
    b.restore(snap)
    assert b.steps(4) == expected
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("name", methods.names())
def test_export_gives_same_logits(name):
    h = build(name)
    h.steps(3)
    ids = torch.tensor([[10, 20, 30, 40, 50]])
    h.model.eval()
    with torch.no_grad():
        trained = h.model(input_ids=ids).logits
        exported = h.method.export(h.model)(input_ids=ids).logits
    torch.testing.assert_close(exported, trained, atol=1e-5, rtol=1e-5)
    assert type(h.method.export(h.model)).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("name", methods.names())
def test_same_seed_same_losses(name):
    assert build(name).steps(4) == build(name).steps(4)
    assert build(name).steps(4) != build(name, seed=3).steps(4)


@pytest.mark.parametrize("name", methods.names())
def test_masks_are_bool_per_parameter(name):
    h = build(name)
    h.steps(4)
    params = dict(h.model.named_parameters())
    for n, m in h.method.isolation_masks().items():
        assert m.dtype == torch.bool and m.shape == params[n].shape
