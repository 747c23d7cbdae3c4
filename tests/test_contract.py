"""Contract matrix: every registered method obeys the interface's promises, through three
sequential stages with the real stage hooks, and the check itself is shown to catch breakage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import methods
from methods.epi import EPI
from methods.parts.isolation import IsolationConfig, IsolationMethod
from methods.parts.masks import select_top_fraction
from methods.registry import METHODS, register
from tests.harness import FAST, Harness, contract_violations

ROOT = Path(__file__).parents[1]


def build(name: str, **kw) -> Harness:
    return Harness(name, FAST.get(name, {}), **kw)


@pytest.mark.parametrize("name", methods.names())
def test_contract_holds_through_three_stages(name):
    assert contract_violations(name) == []


@pytest.mark.parametrize("name", methods.names())
def test_save_load_continue_is_bit_identical(name):
    a = build(name, regime="sequential", tasks=("arithmetic", "format", "program"))
    a.steps(2)
    a.next_stage()
    a.steps(3)  # mid-stage, after a refresh for the refreshing methods
    blob = a.save()
    expected = a.steps(4)
    a.next_stage()
    expected += a.steps(2)
    torch.manual_seed(1234)  # a fresh trainer: other init, other global RNG; everything comes from the blob
    b = build(name, seed=7, data_seed=0, regime="sequential", tasks=("arithmetic", "format", "program"))
    b.load(blob)
    got = b.steps(4)
    b.next_stage()
    got += b.steps(2)
    assert got == expected
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), n
    assert {k: torch.equal(v, b.method.isolation_masks()[k]) for k, v in a.method.isolation_masks().items()} == \
        {k: True for k in a.method.isolation_masks()}


CONTINUE = """
import sys, torch
from tests.harness import FAST, Harness
name, blob, out = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3]
h = Harness(name, FAST.get(name, {}), seed=5, data_seed=0, regime="sequential", tasks=("arithmetic", "format", "program"))
h.load(blob)
losses = h.steps(3)
torch.save({"losses": losses, "params": dict(h.model.named_parameters())}, out)
"""


def test_save_then_continue_in_a_fresh_process(tmp_path):
    a = build("epi", regime="sequential", tasks=("arithmetic", "format", "program"))
    a.steps(3)
    (tmp_path / "state.pt").write_bytes(a.save())
    expected = a.steps(3)
    done = subprocess.run([sys.executable, "-c", CONTINUE, "epi", str(tmp_path / "state.pt"), str(tmp_path / "out.pt")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    assert out["losses"] == expected
    for n, p in a.model.named_parameters():
        assert torch.equal(p, out["params"][n]), n


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


# -- the contract check catches broken methods --------------------------------------------------------
class MagnitudeFromStage1(IsolationMethod):
    """The README's example of a new method: from the second stage on, isolate the top-rho
    weights by magnitude (a class of methods the old single-stage harness never checked)."""

    Config = IsolationConfig

    def on_stage_start(self, ctx):  # noqa: ANN001, ANN201
        super().on_stage_start(ctx)
        if ctx.stage >= 1:
            self.isolate(select_top_fraction({n: p.detach().abs() for n, p in self.params.items()}, self.config.rho),
                         ctx.step)


def no_restore(cls):  # noqa: ANN001, ANN201 - a broken copy: frozen values are never written back
    class Broken(cls):
        def prepare(self, model):  # noqa: ANN001, ANN201
            model = super().prepare(model)
            self.isolated.restore = lambda: None
            return model
    return Broken


def no_grad_zeroing(cls):  # noqa: ANN001, ANN201 - a broken copy: isolated entries keep their gradient
    class Broken(cls):
        def prepare(self, model):  # noqa: ANN001, ANN201
            model = super().prepare(model)
            self.isolated.zero_grads = lambda: None
            return model
    return Broken


def never_isolates(cls):  # noqa: ANN001, ANN201 - a broken copy that declares isolation and does none
    class Broken(cls):
        def isolate(self, index, step, optimizer=None, reset_keys=()):  # noqa: ANN001, ANN201
            self.refreshes += 1
    return Broken


@pytest.fixture
def temporary_methods():
    added: list[str] = []

    def add(name, cls):  # noqa: ANN001, ANN202
        register(name)(cls)
        added.append(name)
        return name

    yield add
    for name in added:
        METHODS.remove(name)


def test_a_method_isolating_from_stage_1_is_checked(temporary_methods):
    name = temporary_methods("magnitude_from_stage1", MagnitudeFromStage1)
    assert contract_violations(name, {"rho": 0.05}) == []


@pytest.mark.parametrize("base,options", [(EPI, FAST["epi"]), (MagnitudeFromStage1, {"rho": 0.05})])
@pytest.mark.parametrize("mutation,symptom", [(no_restore, "changed"), (no_grad_zeroing, "gradient before clipping"),
                                              (never_isolates, "isolated nothing")])
def test_contract_fails_for_a_broken_isolation_method(temporary_methods, base, options, mutation, symptom):
    name = temporary_methods(f"broken_{mutation.__name__}_{base.__name__.lower()}", mutation(base))
    violations = contract_violations(name, options)
    assert violations and any(symptom in v for v in violations), violations


# -- methods of other kinds: each one's effect removed, or its claim broken, fails the contract ----------
def mofo_without_restore(cls):  # noqa: ANN001, ANN201 - every entry moves: full SFT that declares MoFO's set
    class Broken(cls):
        def restore(self, name, param):  # noqa: ANN001, ANN201
            pass
    return Broken


def mofo_over_updating(cls):  # noqa: ANN001, ANN201 - updates the top 2 x alpha, declares that honestly
    class Broken(cls):
        def entries_to_update(self, entries):  # noqa: ANN001, ANN201
            return 2 * super().entries_to_update(entries)
    return Broken


def ewc_without_penalty(cls):  # noqa: ANN001, ANN201
    class Broken(cls):
        def loss(self, step, model):  # noqa: ANN001, ANN201
            return None
    return Broken


def replay_never_replaying(cls):  # noqa: ANN001, ANN201
    class Broken(cls):
        def rows(self, step, rows):  # noqa: ANN001, ANN201
            return rows
    return Broken


def hft_never_freezing(cls):  # noqa: ANN001, ANN201
    class Broken(cls):
        def on_stage_start(self, ctx):  # noqa: ANN001, ANN201
            self.frozen = []
    return Broken


def hft_freezing_without_holding(cls):  # noqa: ANN001, ANN201 - declares its half, trains it anyway
    class Broken(cls):
        def after_backward(self, step, model):  # noqa: ANN001, ANN201
            pass
    return Broken


def hft_freezing_undeclared(cls):  # noqa: ANN001, ANN201 - freezes its half, declares none of it
    class Broken(cls):
        def held_fixed(self):  # noqa: ANN201
            return {}
    return Broken


@pytest.mark.parametrize("method,mutation,symptom", [
    ("mofo", mofo_without_restore, "declared held fixed (held_fixed) changed"),
    ("mofo", mofo_over_updating, "more than the 10.0% its options allow"),
    ("ewc", ewc_without_penalty, "trains exactly as full_sft"),
    ("replay", replay_never_replaying, "trains exactly as full_sft"),
    ("hft", hft_never_freezing, "trains exactly as full_sft"),
    ("hft", hft_freezing_without_holding, "declared held fixed (held_fixed) changed"),
    ("hft", hft_freezing_undeclared, "held_fixed declares too little"),
])
def test_contract_fails_a_method_whose_effect_is_removed(temporary_methods, method, mutation, symptom):
    name = temporary_methods(f"broken_{mutation.__name__}", mutation(methods.get(method)))
    violations = contract_violations(name, FAST.get(method, {}))
    assert violations and any(symptom in v for v in violations), violations
