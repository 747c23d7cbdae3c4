"""Gradient conflict between tasks, for any method (our definition, after PCGrad): two task
gradients conflict when their cosine is negative.

Every ``every`` optimizer steps (from step 0, before the step's own forward), one gradient per
task of the run: the mean loss gradient over ``batches`` fixed batches of that task's training
rows (drawn once from a seeded stream of their own, so every measurement uses the same batches
and a change in cosine is a change of the weights, not of the data). Nothing is updated: the
gradients are cleared afterwards and the RNG state is put back, so training is identical with
and without this analysis. Recorded per measurement: the cosine of every task pair over all
trainable parameters and per layer group (attention, mlp, embedding, norm, other), their mean,
and the fraction of negative pairs.

Cost: ``tasks x batches`` extra forward and backward passes per measurement, and one fp32 copy
of the trainable gradients per task while measuring.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

import torch
from torch import nn

from bench.analysis.options import Options
from bench.data import StageData
from bench.observers import Observer
from methods.base import StageContext

GROUPS = (("attention", re.compile(r"attn|attention", re.I)), ("mlp", re.compile(r"mlp|feed_forward|ffn", re.I)),
          ("embedding", re.compile(r"embed|lm_head|wte|wpe", re.I)), ("norm", re.compile(r"norm|\bln", re.I)))


def group_of(name: str) -> str:
    return next((g for g, pattern in GROUPS if pattern.search(name)), "other")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConflictOptions(Options):
    every: int = 25
    batches: int = 1

    def __post_init__(self) -> None:
        self.check(self.every > 0, "every", "an integer > 0 (optimizer steps between measurements)")
        self.check(self.batches > 0, "batches", "an integer > 0 (batches per task and measurement)")


def cosines(grads: dict[str, dict[str, torch.Tensor]], names: list[str]) -> dict[str, float | None]:
    """Cosine of every task pair (``"a|b"``) over the parameters ``names``; None for a zero gradient."""
    out: dict[str, float | None] = {}
    for a, b in itertools.combinations(grads, 2):
        dot = sum(float((grads[a][n] * grads[b][n]).sum(dtype=torch.float64)) for n in names)
        na = sum(float(grads[a][n].double().pow(2).sum()) for n in names) ** 0.5
        nb = sum(float(grads[b][n].double().pow(2).sum()) for n in names) ** 0.5
        out[f"{a}|{b}"] = dot / (na * nb) if na and nb else None
    return out


class GradientConflict(Observer):
    name = "gradient_conflict"
    Options = ConflictOptions

    def __init__(self, options: ConflictOptions, data: StageData) -> None:
        self.options, self.data = options, data
        self.fixed: dict[str, list[dict[str, torch.Tensor]]] = {}
        self.stage = 0
        self.records: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []

    def attach(self, model: nn.Module) -> None:
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def on_stage_start(self, ctx: StageContext) -> None:
        self.stage = ctx.stage

    def before_step(self, step: int, model: nn.Module) -> None:
        if len(self.data.tasks) > 1 and step % self.options.every == 0:
            self.measure(step, model)

    def task_gradients(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        if not self.fixed:
            self.fixed = {t: list(self.data.batches(self.options.batches, t)) for t in self.data.tasks}
        cpu, cuda = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        grads = {}
        try:
            for task, batches in self.fixed.items():
                model.zero_grad(set_to_none=True)
                for batch in batches:
                    (self.data.loss(model, batch) / len(batches)).backward()
                grads[task] = {n: p.grad.detach().float().clone() if p.grad is not None else torch.zeros_like(
                    p, dtype=torch.float32) for n, p in self.params.items()}
        finally:
            model.zero_grad(set_to_none=True)
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
        return grads

    def measure(self, step: int, model: nn.Module) -> None:
        grads = self.task_gradients(model)
        overall = cosines(grads, list(self.params))
        per_group = {g: cosines(grads, names) for g in sorted({group_of(n) for n in self.params})
                     if (names := [n for n in self.params if group_of(n) == g])}
        values = [c for c in overall.values() if c is not None]
        record = {"kind": "gradient_conflict", "step": step, "stage": self.stage, "cosines": overall,
                  "per_group": per_group, "mean_cosine": sum(values) / len(values) if values else None,
                  "negative_fraction": sum(c < 0 for c in values) / len(values) if values else None}
        self.records.append(record)
        self.pending.append(record)

    def drain_events(self) -> list[dict[str, Any]]:
        out, self.pending = self.pending, []
        return out

    def summary(self) -> dict[str, Any] | None:
        if not self.records:
            return None
        return {"options": dataclasses.asdict(self.options), "definition": "PCGrad: a pair conflicts when the cosine "
                "of the two task gradients is negative (our choice of definition)", "measurements": len(self.records),
                **{k: [r[k] for r in self.records] for k in ("step", "stage", "mean_cosine", "negative_fraction")},
                "cosines": [r["cosines"] for r in self.records]}

    def state_dict(self) -> dict[str, Any]:
        return {"records": list(self.records), "pending": list(self.pending), "stage": self.stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records, self.pending, self.stage = list(state["records"]), list(state["pending"]), state["stage"]
