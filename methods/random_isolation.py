"""Random isolation (control): EPI's rho and refresh schedule with a uniformly random mask.

It answers "does the importance signal matter at all?": if EPI beats it, the gradient signal,
not the mere act of freezing a changing 1% of entries, is what helps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from methods.parts.collectives import local_part
from methods.parts.refreshing import RefreshConfig, RefreshingIsolation
from methods.registry import register


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomIsolationConfig(RefreshConfig):
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the mask generator"})


@register("random_isolation")
class RandomIsolation(RefreshingIsolation[RandomIsolationConfig]):

    def scores(self, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """Uniform noise: a new random mask of the same size at every refresh."""
        return {n: local_part(torch.rand(p.shape, generator=self.generator, device=self.generator.device), p)
                for n, p in self.params.items()}

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        device = next(iter(self.params.values())).device
        device = torch.device("cpu") if device.type == "meta" else device  # a memory plan prepares on meta
        self.generator = torch.Generator(device=device).manual_seed(self.config.seed)
        return model

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
