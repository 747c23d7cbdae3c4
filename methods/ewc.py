"""EWC, elastic weight consolidation (Kirkpatrick et al., 2017), in its online form (Schwarz et
al., 2018, "Progress & Compress"): after every stage, a diagonal Fisher estimate ``F_k`` is taken
on that stage's data at the weights the stage ended with, and accumulated as
``F <- gamma * F + F_k``; the anchor becomes those weights, and every later step adds the
penalty ``lambda_ / 2 * sum_i F_i * (theta_i - anchor_i)^2`` to the loss.

The penalty goes through the ``loss`` hook (logged as ``method_loss``, beside the task loss).
Before the first stage ends there is no penalty.

Our choices, not the papers': the Fisher is the empirical one, as the EWC paper takes it: the
mean over examples of each example's squared gradient of the loop's own loss (mean NLL per answer
token of that row), over the rows of ``fisher_batches`` batches of the stage's mix
(``fisher = "example"``). ``fisher = "batch"`` squares each batch's mean gradient instead, the
cheap form many LLM continual-learning suites use; it is about ``batch_size`` times smaller,
because the rows' independent noise averages out before the square. Every trainable tensor is
regularized, and lambda_ is in units of the task loss (mean NLL per answer token).

The default lambda_ (5e4) is set by what it does, not copied from a vision benchmark. On
SmolLM2-135M in ``configs/papers_cpu.toml``'s sequential regime, the penalty per unit lambda_
along full SFT's own trajectory (lambda_ = 1, which restrains nothing) reached 1.1e-5 by the end
of the second stage and 1.8e-5 by the end of the third; at 5e4 that is 0.55 and 0.88, about the
task loss there (0.38 and 0.72, mean of each stage's last 4 steps), so the penalty's pull is as
strong as the task's and the run no longer follows full SFT (docs/perf.md, "EWC's penalty at its
default"). The earlier default, 1000 with the batch Fisher, gave 0.0006-0.0014: EWC trained as
full SFT in all but name.
State: two fp32 values per trainable entry (F and the anchor). Under sharding each rank holds and
regularizes its own blocks; the trainer adds up the ranks' terms for the log.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from methods.base import Method, MethodConfig, StageContext
from methods.parts.collectives import local
from methods.parts.importance import mean_example_grad_squared, mean_grad_squared
from methods.registry import register
from pluggable.search import log_uniform

LAMBDA_DEFAULT = 5e4


@dataclasses.dataclass(frozen=True, kw_only=True)
class EWCConfig(MethodConfig):
    lambda_: float = dataclasses.field(default=LAMBDA_DEFAULT, metadata={
        "help": "penalty strength (units of the task loss); the default makes the penalty matter (docstring)",
        "search": log_uniform(1e2, 1e6)})
    fisher: str = dataclasses.field(default="example", metadata={
        "help": "the empirical Fisher's form: 'example' (mean of per-example g^2, as in EWC) or 'batch' (batch g^2)",
        "choices": ("example", "batch")})
    gamma: float = dataclasses.field(default=1.0, metadata={"help": "decay of the earlier stages' Fisher (online EWC)"})
    fisher_batches: int = dataclasses.field(default=4, metadata={"help": "batches per stage for the Fisher estimate",
                                                                 "minimum": 1})

    def __post_init__(self) -> None:
        self.check(self.lambda_ >= 0.0, "lambda_", "a number >= 0")
        self.check(0.0 <= self.gamma <= 1.0, "gamma", "a number in [0, 1]")
        self.check(self.fisher in ("example", "batch"), "fisher", "'example' or 'batch'")


@register("ewc")
class EWC(Method[EWCConfig]):
    """Online EWC: a quadratic penalty towards the last stage's weights, weighted by Fisher."""

    min_stages = 2
    needs_stages_because = ("its penalty anchors to the weights a finished stage ended with: in one stage it never "
                            "applies and trains as full SFT")

    def prepare(self, model: nn.Module) -> nn.Module:
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.fisher = {n: torch.zeros_like(local(p), dtype=torch.float32) for n, p in self.params.items()}
        self.anchor = {n: torch.zeros_like(local(p), dtype=torch.float32) for n, p in self.params.items()}
        self.consolidated = 0  # stages folded into the Fisher
        return model

    def on_stage_end(self, ctx: StageContext) -> None:
        c = self.config
        batches = ctx.data.batches(c.fisher_batches)
        new = (mean_example_grad_squared(ctx.model, self.params, batches, ctx.data.loss) if c.fisher == "example"
               else mean_grad_squared(ctx.model, self.params, batches, ctx.data.loss, c.fisher_batches))
        with torch.no_grad():
            for n, p in self.params.items():
                self.fisher[n].mul_(c.gamma).add_(new[n])
                self.anchor[n].copy_(local(p))
        self.consolidated += 1

    def loss(self, step: int, model: nn.Module) -> torch.Tensor | None:
        if not self.consolidated:
            return None
        terms = [(self.fisher[n] * (local(p).float() - self.anchor[n]).square()).sum() for n, p in self.params.items()]
        return torch.stack(terms).sum() * (self.config.lambda_ / 2)

    def planned_state_bytes(self) -> int:
        return sum(2 * 4 * local(p).numel() for p in self.params.values())

    def stats(self) -> dict[str, float]:
        return {"consolidated": float(self.consolidated)}

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher, "anchor": self.anchor, "consolidated": self.consolidated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n in self.params:
            self.fisher[n].copy_(state["fisher"][n])
            self.anchor[n].copy_(state["anchor"][n])
        self.consolidated = state["consolidated"]
