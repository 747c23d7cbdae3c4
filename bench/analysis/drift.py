"""Importance drift for any method: does the set of important parameters move during training?

An fp32 EMA of g^2 over every trainable parameter (``methods.parts.importance.GradSquaredEMA``), fed
with the step's gradients as the loss gave them (``on_gradients``: before a method zeroes any).
``source = "adam_v"`` reads the optimizer's second moment instead (an EMA of g^2 with beta2,
after clipping and after the method's hooks), which costs no memory: the choice at 7-9B scale.
Every ``every`` steps it takes a snapshot: the global top-``rho`` set (``methods.parts.selection``,
per-tensor min-max normalized by default) and the mean importance of each
tensor. Each snapshot records the set's Jaccard with the previous and with the first snapshot,
and the Spearman rank correlation of the per-tensor means with the previous snapshot. Events
have kind ``set_drift`` (like a method's re-selected sets), so the same plots read them.

Cost: one fused EMA update per step (4 bytes per trainable parameter of state; none with
``adam_v``), and a top-rho selection per snapshot.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from bench.engine.data import StageData
from bench.engine.observers import Observer, Recorder
from methods.base import StageContext
from methods.parts.collectives import local, reduce_
from methods.parts.importance import GradSquaredEMA, second_moment
from methods.parts.selection import jaccard, per_layer_counts, select_top_fraction
from pluggable.options import Options


@dataclasses.dataclass(frozen=True, kw_only=True)
class DriftOptions(Options):
    every: int = 10
    rho: float = 0.01
    beta: float = 0.99
    normalize: bool = True
    source: str = "ema"

    def __post_init__(self) -> None:
        self.check(self.source in ("ema", "adam_v"), "source", "'ema' (own fp32 EMA of g^2, 4 B/param) or 'adam_v' "
                                                               "(the optimizer's second moment, no extra memory)")
        self.check(self.every > 0, "every", "an integer > 0 (optimizer steps between snapshots)")
        self.check(0.0 < self.rho < 1.0, "rho", "a fraction in (0, 1)")
        self.check(0.0 <= self.beta < 1.0, "beta", "0 <= beta < 1")


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None with fewer than 2 values."""
    if len(a) < 2:
        return None

    def ranks(x: list[float]) -> torch.Tensor:
        t = torch.tensor(x, dtype=torch.float64)
        return (torch.searchsorted(t.sort().values, t, right=False)
                + torch.searchsorted(t.sort().values, t, right=True) - 1).double() / 2

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float(ra @ rb) / denominator if denominator else None


class ImportanceDrift(Observer):
    name = "importance_drift"
    Options = DriftOptions

    def __init__(self, options: DriftOptions, data: StageData | None = None) -> None:
        self.options = options  # ``data`` is not needed: importance comes from the training steps
        self.ema: GradSquaredEMA | None = None
        self.stage = 0
        self.first: dict[str, torch.Tensor] | None = None
        self.previous: dict[str, torch.Tensor] | None = None
        self.previous_means: list[float] | None = None
        self.recorder = Recorder()

    @staticmethod
    def planned_passes(options: DriftOptions, steps: int, tasks: int) -> float:
        """No pass of its own: it reads the step's gradients. Its EMA update and the snapshots'
        selection cost about 0.011 of a step each step and 0.59 of a step per snapshot on
        SmolLM2 on a CPU (docs/perf.md, "The analyses' cost")."""
        return 0.011 * steps + 0.59 * steps / options.every

    @staticmethod
    def planned_bytes(options: DriftOptions, trainable: int, tasks: int) -> int:
        """State for ``trainable`` parameters (for the memory plan)."""
        return 4 * trainable if options.source == "ema" else 0

    def attach(self, model: nn.Module) -> None:
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.ema = GradSquaredEMA(self.params if self.options.source == "ema" else {}, self.options.beta)
        self.sizes = {n: local(p).numel() for n, p in self.params.items()}  # this rank's entries
        self.entries = sum(p.numel() for p in self.params.values())  # all ranks' entries

    def on_stage_start(self, ctx: StageContext) -> None:
        self.stage = ctx.stage

    def on_gradients(self, step: int, model: nn.Module) -> None:
        assert self.ema is not None
        self.ema.update()

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if (step + 1) % self.options.every == 0:
            self.snapshot(step + 1, optimizer)

    @torch.no_grad()
    def snapshot(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        assert self.ema is not None
        scores = self.ema.values if self.options.source == "ema" else {
            n: second_moment(optimizer, p) for n, p in self.params.items()}
        top = {n: i.to(torch.int32) for n, i in
               select_top_fraction(scores, self.options.rho, normalize=self.options.normalize).items()}
        sums = reduce_(torch.stack([v.double().sum() for v in scores.values()]))
        means = [float(t) / self.params[n].numel() for n, t in zip(scores, sums)]
        per_layer = per_layer_counts(top)
        size = sum(per_layer.values())
        self.first = self.first if self.first is not None else top
        record = {"kind": "set_drift", "set": f"importance top-{self.options.rho:g}", "index": len(self.recorder.records) + 1,
                  "step": step, "stage": self.stage, "size": size, "fraction": size / max(self.entries, 1),
                  "jaccard_prev": jaccard(self.previous, top, self.sizes) if self.previous is not None else None,
                  "jaccard_first": jaccard(self.first, top, self.sizes),
                  "spearman_prev": spearman(self.previous_means, means) if self.previous_means else None,
                  "per_group": per_layer}
        self.previous, self.previous_means = top, means
        self.recorder.add(record, kept={k: v for k, v in record.items() if k != "per_group"})

    def drain_events(self) -> list[dict[str, Any]]:
        return self.recorder.drain()

    def summary(self) -> dict[str, Any] | None:
        if not self.recorder.records:
            return None
        series = self.recorder.series(("step", "stage", "jaccard_prev", "jaccard_first", "spearman_prev"))
        return {"options": dataclasses.asdict(self.options), "snapshots": len(self.recorder.records), **series}

    def state_dict(self) -> dict[str, Any]:
        assert self.ema is not None, "attach first"
        return {"ema": self.ema.state_dict(), "first": self.first, "previous": self.previous,
                "previous_means": self.previous_means, "stage": self.stage, **self.recorder.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.ema is not None, "attach first"
        self.ema.load_state_dict(state["ema"])
        self.first, self.previous, self.previous_means = state["first"], state["previous"], state["previous_means"]
        self.stage = state["stage"]
        self.recorder.load_state_dict(state)
