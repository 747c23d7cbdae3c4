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
of the trainable gradients per task while measuring. ``sample = S > 0`` keeps only a fixed
random sample of S entries (shared out over the tensors by size, drawn once with seed 0, the same
for every run), so the cosines are those of the sampled coordinates: an estimate of the full
cosines at S x tasks x 4 bytes, the choice at 7-9B scale.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

import torch
from torch import nn

from bench.engine.data import StageData
from bench.engine.observers import Observer, Recorder
from methods.base import StageContext
from methods.parts.collectives import local, local_indices, reduce_
from pluggable.options import Options

GROUPS = (("attention", re.compile(r"attn|attention", re.I)), ("mlp", re.compile(r"mlp|feed_forward|ffn", re.I)),
          ("embedding", re.compile(r"embed|lm_head|wte|wpe", re.I)), ("norm", re.compile(r"norm|\bln", re.I)))


def group_of(name: str) -> str:
    return next((g for g, pattern in GROUPS if pattern.search(name)), "other")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConflictOptions(Options):
    every: int = 25
    batches: int = 1
    sample: int = 0

    def __post_init__(self) -> None:
        self.check(self.sample >= 0, "sample", "0 (every entry) or a number of entries > 0")
        self.check(self.every > 0, "every", "an integer > 0 (optimizer steps between measurements)")
        self.check(self.batches > 0, "batches", "an integer > 0 (batches per task and measurement)")


CHUNK = 1 << 20  # entries summed in float64 at a time: the temporaries stay a few MiB, not 3 x a whole tensor


def cosines(grads: dict[str, dict[str, torch.Tensor]], names: list[str]) -> dict[str, float | None]:
    """Cosine of every task pair (``"a|b"``) over the parameters ``names``; None for a zero gradient.
    Sums are taken in float64, ``CHUNK`` entries at a time (a whole embedding's float64 products
    were 0.7 GiB of transient memory on SmolLM2)."""
    out: dict[str, float | None] = {}
    for a, b in itertools.combinations(grads, 2):
        sums = torch.zeros(3, dtype=torch.float64, device=grads[a][names[0]].device)
        for n in names:  # this rank's entries; then summed over the ranks
            for start in range(0, grads[a][n].numel(), CHUNK):
                x = grads[a][n][start:start + CHUNK].double()
                y = grads[b][n][start:start + CHUNK].double()
                sums += torch.stack([(x * y).sum(), x.pow(2).sum(), y.pow(2).sum()])
        dot, na, nb = reduce_(sums).tolist()
        na, nb = na ** 0.5, nb ** 0.5
        out[f"{a}|{b}"] = dot / (na * nb) if na and nb else None
    return out


class GradientConflict(Observer):
    name = "gradient_conflict"
    Options = ConflictOptions

    def __init__(self, options: ConflictOptions, data: StageData) -> None:
        self.options, self.data = options, data
        self.fixed: dict[str, list[dict[str, torch.Tensor]]] = {}
        self.stage = 0
        self.recorder = Recorder()

    @staticmethod
    def planned_bytes(options: ConflictOptions, trainable: int, tasks: int) -> int:
        """The task gradients held while measuring (for the memory plan)."""
        return 4 * tasks * (min(options.sample, trainable) if options.sample else trainable)

    @staticmethod
    def planned_passes(options: ConflictOptions, steps: int, tasks: int) -> float:
        """One backward pass per task and batch at every ``every``-th step (from step 0)."""
        return 0.0 if tasks < 2 else float(-(-steps // options.every) * tasks * options.batches)

    def attach(self, model: nn.Module) -> None:
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.index: dict[str, torch.Tensor] | None = None
        if self.options.sample:
            total = sum(p.numel() for p in self.params.values())
            generator = torch.Generator().manual_seed(0)
            self.index = {n: torch.randint(p.numel(), (min(p.numel(), max(1, round(
                self.options.sample * p.numel() / total))),), generator=generator).to(local(p).device)
                for n, p in self.params.items()}
            self.index = {n: local_indices(i, self.params[n]) for n, i in self.index.items()}  # this rank's

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
                grads[task] = {n: self.kept(n, p) for n, p in self.params.items()}
        finally:
            model.zero_grad(set_to_none=True)
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
        return grads

    def kept(self, name: str, p: nn.Parameter) -> torch.Tensor:
        """The fp32 gradient of ``p`` (zeros if none), or its sampled entries."""
        block = local(p)
        grad = (local(p.grad).detach().reshape(-1) if p.grad is not None
                else torch.zeros(block.numel(), device=block.device))
        return (grad[self.index[name]] if self.index is not None else grad).float().clone()

    def measure(self, step: int, model: nn.Module) -> None:
        grads = self.task_gradients(model)
        overall = cosines(grads, list(self.params))
        per_group = {g: cosines(grads, names) for g in sorted({group_of(n) for n in self.params})
                     if (names := [n for n in self.params if group_of(n) == g])}
        values = [c for c in overall.values() if c is not None]
        record = {"kind": "gradient_conflict", "step": step, "stage": self.stage, "cosines": overall,
                  "per_group": per_group, "mean_cosine": sum(values) / len(values) if values else None,
                  "negative_fraction": sum(c < 0 for c in values) / len(values) if values else None}
        self.recorder.add(record)

    def drain_events(self) -> list[dict[str, Any]]:
        return self.recorder.drain()

    def summary(self) -> dict[str, Any] | None:
        if not self.recorder.records:
            return None
        return {"options": dataclasses.asdict(self.options), "definition": "PCGrad: a pair conflicts when the cosine "
                "of the two task gradients is negative (our choice of definition)",
                "measurements": len(self.recorder.records),
                **self.recorder.series(("step", "stage", "mean_cosine", "negative_fraction", "cosines"))}

    def state_dict(self) -> dict[str, Any]:
        return {**self.recorder.state_dict(), "stage": self.stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recorder.load_state_dict(state)
        self.stage = state["stage"]
