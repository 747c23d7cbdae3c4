"""Whole tensors held fixed by name (HFT's frozen half, freeze_bottom's bottom layers): a method
mixes ``FrozenTensors`` in, sets ``self.frozen`` (parameter names) whenever its choice changes,
and gets the rest: their gradients dropped after the backward pass (so the optimizer skips them:
no update, no weight decay, their moments untouched), their declaration in ``held_fixed``, the
frozen share in ``stats`` and the names in its state."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FrozenTensors:
    """Hooks for a method that freezes whole named tensors (``self.frozen``)."""

    params: dict[str, nn.Parameter]
    frozen: list[str]

    def track(self, model: nn.Module) -> None:
        """Hold the trainable parameters by name (call from ``prepare``); nothing frozen yet."""
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.frozen = []

    def after_backward(self, step: int, model: nn.Module) -> None:
        for name in self.frozen:
            self.params[name].grad = None

    def held_fixed(self) -> dict[str, torch.Tensor]:
        return {name: torch.ones((), dtype=torch.bool, device=self.params[name].device) for name in self.frozen}

    def stats(self) -> dict[str, float]:
        frozen = sum(self.params[n].numel() for n in self.frozen)
        return {"frozen_share": frozen / max(sum(p.numel() for p in self.params.values()), 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": list(self.frozen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = list(state["frozen"])
