"""epi_adaptive's two rules (the interval from mask drift, the ratio from importance's
concentration), its events, and the report's plot of them; EWC's per-example Fisher."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import methods
from methods.epi_adaptive import SCHEDULE, participation_share
from methods.parts.importance import mean_example_grad_squared, mean_grad_squared


def test_the_participation_share_is_the_fraction_that_carries_the_mass():
    scores = {"a": torch.zeros(100), "b": torch.zeros(300)}
    scores["a"][:10] = 5.0
    scores["b"][:30] = 5.0  # 40 of 400 entries share the mass equally
    assert participation_share(scores, normalize=False) == pytest.approx(0.1)
    assert participation_share(scores, normalize=True) == pytest.approx(0.1)
    assert participation_share({"a": torch.ones(50)}, normalize=False) == pytest.approx(1.0)
    one = torch.zeros(1000)
    one[3] = 1.0
    assert participation_share({"a": one}, normalize=False) == pytest.approx(1e-3)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(40, 50))


def adaptive(**options):  # noqa: ANN003, ANN201
    method = methods.build("epi_adaptive", {"refresh_every": 8, "rho": 0.2, "rho_min": 0.01, **options})
    model = method.prepare(Model())
    return method, model


def refresh_with(method, scores: torch.Tensor, step: int) -> dict:  # noqa: ANN001
    method.scores = lambda optimizer: {"w": scores.clone()}
    method.refresh(step, None)
    return [e for e in method.drain_events() if e["kind"] == SCHEDULE][-1]


def test_the_interval_doubles_while_the_mask_holds_and_halves_when_it_drifts():
    method, _ = adaptive()
    g = torch.Generator().manual_seed(0)
    first = torch.zeros(40, 50)
    first.view(-1)[torch.randperm(2000, generator=g)[:100]] = 1.0  # 100 of 2000 carry it: rho 0.05
    e = refresh_with(method, first, 8)
    assert e["jaccard"] is None and e["interval"] == 8 and e["ratio"] == pytest.approx(0.05)
    assert method.next_refresh == 16
    e = refresh_with(method, first, 16)  # the same set again: stable
    assert e["jaccard"] == pytest.approx(1.0) and e["interval"] == 16 and method.next_refresh == 32
    moved = torch.zeros(40, 50)
    moved.view(-1)[torch.randperm(2000, generator=g)[:100]] = 1.0  # another set: drifting
    e = refresh_with(method, moved, 32)
    assert e["jaccard"] < 0.5 and e["interval"] == 8 and method.next_refresh == 40
    for step in (40, 48, 56):
        e = refresh_with(method, moved if step % 16 else first, step)
    assert e["interval"] >= method.config.min_interval


def test_the_ratio_follows_concentration_within_its_bounds():
    method, _ = adaptive(rho=0.1, rho_min=0.02)
    diffuse = torch.ones(40, 50)
    assert refresh_with(method, diffuse, 8)["ratio"] == pytest.approx(0.1)  # capped at rho
    peaked = torch.zeros(40, 50)
    peaked.view(-1)[:4] = 1.0
    assert refresh_with(method, peaked, 16)["ratio"] == pytest.approx(0.02)  # floored at rho_min
    assert method.count == round(0.02 * 2000)
    middle = torch.zeros(40, 50)
    middle.view(-1)[:100] = 1.0
    event = refresh_with(method, middle, 24)
    assert event["ratio"] == pytest.approx(0.05) and event["isolated"] == 100


def test_bad_bounds_are_refused_naming_the_option():
    with pytest.raises(ValueError, match="rho_min"):
        methods.build("epi_adaptive", {"rho": 0.01, "rho_min": 0.05})
    with pytest.raises(ValueError, match="min_interval"):
        methods.build("epi_adaptive", {"min_interval": 20, "max_interval": 10})
    method, _ = adaptive(refresh_every=500, max_interval=64)
    assert method.interval == 64  # the first interval is brought into the bounds
    with pytest.raises(ValueError, match="drifting_below"):
        methods.build("epi_adaptive", {"drifting_below": 0.95, "stable_above": 0.9})


def test_a_run_writes_schedule_events_and_the_report_plots_them(tmp_path, harness):
    from reports.load import load_study
    from reports.plots import schedule_plots

    h = harness("epi_adaptive", {"refresh_every": 2, "rho": 0.05})
    seen, drain = [], h.method.drain_events
    h.method.drain_events = lambda: seen.extend(drain()) or seen[len(seen):]
    h.steps(6)
    events = [e for e in seen if e["kind"] == SCHEDULE]
    assert [e["step"] for e in events][:1] == [2] and len(events) >= 2
    assert all(0.001 <= e["ratio"] <= 0.05 and 2 <= e["interval"] <= 200 for e in events)
    run = tmp_path / "study" / "epi_adaptive-s0"
    (run / "events").mkdir(parents=True)
    (run / "events" / "method.jsonl").write_text("".join(json.dumps({**e, "source": "method"}) + "\n" for e in events))
    result = {"run_id": "epi_adaptive-s0", "method": "epi_adaptive", "backbone": "tiny", "regime": "sequential",
              "seed": 0, "status": "success", "tasks": ["a"], "chance": {"a": 0.0},
              "stages": [{"stage": 0, "trained_on": ["a"], "scores": {"a": 50.0}, "nll": {"a": 1.0}}]}
    (run / "result.json").write_text(json.dumps(result))
    paths = schedule_plots(load_study(tmp_path / "study"), tmp_path)
    assert [p.name for p in paths] == ["schedule_sequential_tiny_epi_adaptive.png"] and paths[0].stat().st_size > 0


def test_ewcs_fisher_is_the_mean_of_per_example_squared_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 11))

    def loss(m: nn.Module, batch: dict) -> torch.Tensor:
        logits = m(batch["input_ids"])
        mask = batch["attention_mask"].bool()
        return nn.functional.cross_entropy(logits[mask], batch["labels"][mask])

    batches = []
    for _ in range(2):
        ids = torch.randint(0, 11, (4, 5))
        mask = torch.ones(4, 5, dtype=torch.long)
        mask[1, 3:] = 0  # a right-padded row
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 11, (4, 5))})
    params = dict(model.named_parameters())
    fisher = mean_example_grad_squared(model, params, batches, loss)
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in batches:
        for i in range(4):
            width = int(batch["attention_mask"][i].sum())
            model.zero_grad()
            loss(model, {k: v[i:i + 1, :width] for k, v in batch.items()}).backward()
            for n, p in params.items():
                expected[n] += p.grad.square() / 8
    for n in params:
        torch.testing.assert_close(fisher[n], expected[n])
    batch_form = mean_grad_squared(model, params, batches, loss, 2)
    ratio = sum(f.sum() for f in fisher.values()) / sum(b.sum() for b in batch_form.values())
    assert ratio > 1.5  # the rows' noise is not averaged away before the square
    assert all(p.grad is None for p in model.parameters())
