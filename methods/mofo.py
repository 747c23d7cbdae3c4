"""MoFO, the momentum-filtered optimizer (Chen et al., 2024, "MoFO: Momentum-Filtered Optimizer
for Mitigating Forgetting in LLM Fine-Tuning"): at every step, within each parameter tensor,
only the ``alpha`` share of entries with the largest |Adam first moment| is updated; every
other entry keeps its value. The moments themselves are updated for every entry, as in the paper.

How it runs in the one loop: ``before_step`` copies the trainable values, the optimizer steps
every entry, and ``after_step`` picks the top-alpha by |exp_avg| (the moment just updated) in
each tensor and writes the copy back everywhere else, bit for bit (this also undoes weight decay
on the held entries). The held entries are declared in ``held_fixed``; their gradients are kept
on purpose (the moments need them), so the lost-update sentinel is told not to count them.

Our choices, not the paper's: every trainable tensor is filtered (norms and embeddings too),
``k = round(alpha * entries)`` per tensor (at least one), and ties are broken as ``torch.topk``
breaks them on the whole tensor. Under sharding each rank gathers the tensor's |exp_avg| to
select exactly the one-process entries (a whole-tensor gather per step: the price of an exact
per-tensor top-k). State: one copy of the trainable values and one bool per entry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from methods.base import Method, MethodConfig
from methods.parts.collectives import full, local, local_part
from methods.registry import register
from pluggable.search import log_uniform


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoFOConfig(MethodConfig):
    alpha: float = dataclasses.field(default=0.1, metadata={"help": "share of each tensor's entries updated per step",
                                                            "search": log_uniform(0.01, 0.5)})

    def __post_init__(self) -> None:
        self.check(0.0 < self.alpha <= 1.0, "alpha", "a fraction in (0, 1]")


def first_moment(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor:
    """The optimizer's first moment of ``param`` (Adam's ``exp_avg``), the whole tensor."""
    state = optimizer.state.get(param, {})
    if "exp_avg" not in state:
        raise KeyError(f"MoFO needs an optimizer with a first moment ('exp_avg'); {type(optimizer).__name__} "
                       f"keeps {', '.join(state) or 'no state'}")
    return full(state["exp_avg"])


@register("mofo")
class MoFO(Method[MoFOConfig]):
    """Updates the top-alpha entries by momentum in each tensor, holds the rest."""

    def prepare(self, model: nn.Module) -> nn.Module:
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.before = {n: torch.empty_like(local(p)) for n, p in self.params.items()}
        self.held = {n: torch.zeros_like(local(p), dtype=torch.bool) for n, p in self.params.items()}
        self.updated = 0.0
        return model

    @torch.no_grad()
    def before_step(self, step: int, model: nn.Module) -> None:
        for n, p in self.params.items():
            self.before[n].copy_(local(p))

    @torch.no_grad()
    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        updated = 0
        for n, p in self.params.items():
            score = first_moment(optimizer, p).abs().reshape(-1)
            k = self.entries_to_update(score.numel())
            held = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
            held[torch.topk(score, k, sorted=False).indices] = False
            self.held[n].copy_(local_part(held.view(p.shape), p))
            self.restore(n, p)
            updated += k
        self.updated = updated / sum(p.numel() for p in self.params.values())

    def entries_to_update(self, entries: int) -> int:
        """How many entries of a tensor of ``entries`` one step updates."""
        return max(1, round(self.config.alpha * entries))

    @torch.no_grad()
    def restore(self, name: str, param: torch.Tensor) -> None:
        """The held entries of ``param`` back to their values before the step, bit for bit."""
        block = local(param)
        torch.where(self.held[name], self.before[name], block, out=block)

    def held_fixed(self) -> dict[str, torch.Tensor]:
        return self.held

    def update_budget(self) -> float | None:
        return self.config.alpha

    def planned_state_bytes(self) -> int:
        """The copy of the trainable values and one bool per trainable entry."""
        return sum(local(p).numel() * (local(p).element_size() + 1) for p in self.params.values())

    def stats(self) -> dict[str, float]:
        return {"updated": self.updated}

    def state_dict(self) -> dict[str, Any]:
        return {}  # the copy and the held entries are rebuilt at every step
