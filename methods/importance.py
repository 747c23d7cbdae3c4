"""Parameter importance, estimated once for every user (isolation methods, drift observers).

Three estimates, all kept in fp32 whatever the parameters' dtype:
- ``GradSquaredEMA``: ``I <- beta * I + (1 - beta) * g^2`` per optimizer step (EPI's signal);
- ``mean_grad_squared``: mean of g^2 over a few batches at fixed weights, no update (static
  isolation's calibration);
- ``probe_displacement``: ``|theta_probe - theta_0|`` after a short fine-tune of a copy
  (``fine_tuned_copy``; CPI-FT's core regions).
``second_moment`` reads an Adam-style optimizer's running g^2 through one accessor, so a method
that reuses it (EPI ``adam_v``) works with any optimizer that keeps one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
SECOND_MOMENT_KEYS = ("exp_avg_sq", "exp_avg_sq_row", "v")  # torch/torchao, optimi and others


def second_moment(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor:
    """The optimizer's running average of g^2 for ``param`` (Adam's ``v``)."""
    state = optimizer.state.get(param, {})
    for key in SECOND_MOMENT_KEYS:
        if key in state:
            return state[key]
    raise KeyError(f"optimizer {type(optimizer).__name__} keeps no second moment for this parameter "
                   f"(looked for {', '.join(SECOND_MOMENT_KEYS)}; has {', '.join(state) or 'no state'})")


class GradSquaredEMA:
    """fp32 EMA of squared gradients for a fixed set of named parameters."""

    def __init__(self, params: dict[str, nn.Parameter], beta: float) -> None:
        self.params, self.beta = params, beta
        self.values = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current ``.grad`` of every parameter in (one fused call per list)."""
        pairs = [(self.values[n], p.grad) for n, p in self.params.items() if p.grad is not None]
        if not pairs:
            return
        ema, grads = [e for e, _ in pairs], [g for _, g in pairs]
        torch._foreach_mul_(ema, self.beta)
        # A bf16 gradient is promoted inside the kernel: no fp32 copy of it is made.
        torch._foreach_addcmul_(ema, grads, grads, value=1.0 - self.beta)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in self.values.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n, t in state.items():
            self.values[n].copy_(t)


def mean_grad_squared(model: nn.Module, params: dict[str, nn.Parameter], batches: Iterable[Batch],
                      loss: Callable[[nn.Module, Batch], torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """Mean g^2 over ``count`` batches at the current weights; leaves no gradient behind."""
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    for batch in batches:
        loss(model, batch).backward()
        for n, p in params.items():
            if p.grad is not None:
                scores[n].addcmul_(p.grad, p.grad, value=1.0 / count)
        model.zero_grad(set_to_none=True)
    return scores


def fine_tuned_copy(model: nn.Module, batches: Iterator[Batch], loss: Callable[[nn.Module, Batch], torch.Tensor],
                    lr: float, optimizer: Callable[[list[nn.Parameter], float], Any]) -> nn.Module:
    """A copy of ``model`` fine-tuned on ``batches`` (one step each of ``optimizer(params, lr)``,
    the run's own optimizer, so the copy's updates round as the run's do); ``model`` itself is
    never touched."""
    probe = copy.deepcopy(model)
    probe.zero_grad(set_to_none=True)
    opt = optimizer([p for p in probe.parameters() if p.requires_grad], lr)
    for batch in batches:
        loss(probe, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return probe


def probe_displacement(model: nn.Module, params: dict[str, nn.Parameter], batches: Iterator[Batch],
                       loss: Callable[[nn.Module, Batch], torch.Tensor], lr: float,
                       optimizer: Callable[[list[nn.Parameter], float], Any]) -> dict[str, torch.Tensor]:
    """``|theta_probe - theta_0|`` per parameter of ``params`` after ``fine_tuned_copy``."""
    probed = dict(fine_tuned_copy(model, batches, loss, lr, optimizer).named_parameters())
    return {n: (probed[n].detach() - p.detach()).abs().float() for n, p in params.items()}
