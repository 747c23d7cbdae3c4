"""EWC, elastic weight consolidation (Kirkpatrick et al., 2017), in its online form (Schwarz et
al., 2018, "Progress & Compress"): after every stage, a diagonal Fisher estimate ``F_k`` is taken
on that stage's data at the weights the stage ended with, and accumulated as
``F <- gamma * F + F_k``; the anchor becomes those weights, and every later step adds the
penalty ``lambda_ / 2 * sum_i F_i * (theta_i - anchor_i)^2`` to the loss.

The penalty goes through the ``loss`` hook (logged as ``method_loss``, beside the task loss).
Before the first stage ends there is no penalty.

Our choices, not the papers': the Fisher is the empirical one, the mean of squared gradients of
the loop's own loss over ``fisher_batches`` batches of the stage's mix (batch gradients, not
per-example ones: the cheap form most LLM continual-learning suites use), every trainable
tensor is regularized, and lambda_ is in units of the task loss (mean NLL per answer token).
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
from methods.parts.importance import mean_grad_squared
from methods.registry import register


@dataclasses.dataclass(frozen=True, kw_only=True)
class EWCConfig(MethodConfig):
    lambda_: float = dataclasses.field(default=1000.0, metadata={"help": "penalty strength (units of the task loss)"})
    gamma: float = dataclasses.field(default=1.0, metadata={"help": "decay of the earlier stages' Fisher (online EWC)"})
    fisher_batches: int = dataclasses.field(default=4, metadata={"help": "batches per stage for the Fisher estimate",
                                                                 "minimum": 1})

    def __post_init__(self) -> None:
        self.check(self.lambda_ >= 0.0, "lambda_", "a number >= 0")
        self.check(0.0 <= self.gamma <= 1.0, "gamma", "a number in [0, 1]")


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
        new = mean_grad_squared(ctx.model, self.params, ctx.data.batches(c.fisher_batches), ctx.data.loss,
                                c.fisher_batches)
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
