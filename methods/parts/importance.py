"""Parameter importance, estimated once for every user (isolation methods, drift observers).

Three estimates, all kept in fp32 whatever the parameters' dtype:
- ``GradSquaredEMA``: ``I <- beta * I + (1 - beta) * g^2`` per optimizer step (EPI's signal);
- ``mean_grad_squared``: mean of g^2 over a few batches at fixed weights, no update (static
  isolation's calibration);
- ``mean_example_grad_squared``: the same over single examples (EWC's empirical Fisher);
- ``probe_displacement``: ``|theta_probe - theta_0|`` after a short fine-tune, undone afterwards
  (``fine_tuned_weights``; CPI-FT's core regions).
``second_moment`` reads an Adam-style optimizer's running g^2 through one accessor, so a method
that reuses it (EPI ``adam_v``) works with any optimizer that keeps one.
Every estimate is shaped like this rank's block of its parameter (``methods.parts.collectives.local``):
under sharding each rank estimates its own entries, with no communication.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from methods.parts.collectives import local

Batch = dict[str, torch.Tensor]
SECOND_MOMENT_KEYS = ("exp_avg_sq", "exp_avg_sq_row", "v")  # torch/torchao, optimi and others


def second_moment(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor:
    """The optimizer's running average of g^2 for ``param`` (Adam's ``v``), this rank's block."""
    state = optimizer.state.get(param, {})
    for key in SECOND_MOMENT_KEYS:
        if key in state:
            return local(state[key])
    raise KeyError(f"optimizer {type(optimizer).__name__} keeps no second moment for this parameter "
                   f"(looked for {', '.join(SECOND_MOMENT_KEYS)}; has {', '.join(state) or 'no state'})")


class GradSquaredEMA:
    """fp32 EMA of squared gradients for a fixed set of named parameters, in one pass a step.

    ``I <- beta * I + (1 - beta) * g^2`` read literally is two passes over every entry (decay,
    then add), each memory-bound: at 134.5M entries on one CPU thread about 60 ms a step, as
    much as the fused AdamW step itself. The decay is instead kept as one number: the stored
    ``raw`` values are ``I / beta^t``, t steps after the last fold, so a step is one
    ``addcmul_`` of ``(1 - beta) / beta^(t+1) * g^2``; reading ``values`` folds ``beta^t`` back
    in (one pass, at a refresh), and a fold also happens on its own once ``beta^-t`` would pass
    ``2^16``, far from fp32's range. The values differ from the literal recurrence by fp32
    rounding only; the fold points depend on the step count and the reads alone (a
    checkpoint saves ``raw`` and t as they are), so a resumed run stays bit-exact. Under
    ``beta < 0.5`` (the decay outruns any gain) the literal two passes run."""

    MAX_GAIN = float(1 << 16)

    def __init__(self, params: dict[str, nn.Parameter], beta: float) -> None:
        self.params, self.beta = params, beta
        self.raw = {n: torch.zeros_like(local(p), dtype=torch.float32) for n, p in params.items()}
        self.pending = 0  # steps of decay not yet folded into ``raw``
        self.lazy = beta >= 0.5

    @property
    def values(self) -> dict[str, torch.Tensor]:
        """The EMA itself, per parameter (folds the pending decay in, in place)."""
        self._fold()
        return self.raw

    def _fold(self) -> None:
        if self.pending and self.raw:
            torch._foreach_mul_(list(self.raw.values()), self.beta ** self.pending)
        self.pending = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current ``.grad`` of every parameter in (one fused call per list)."""
        pairs = [(self.raw[n], p.grad) for n, p in self.params.items() if p.grad is not None]
        if not pairs:
            return
        ema, grads = [e for e, _ in pairs], [local(g) for _, g in pairs]
        if not self.lazy:
            torch._foreach_mul_(ema, self.beta)
            # A bf16 gradient is promoted inside the kernel: no fp32 copy of it is made.
            torch._foreach_addcmul_(ema, grads, grads, value=1.0 - self.beta)
            return
        if self.beta ** -(self.pending + 1) > self.MAX_GAIN:
            self._fold()
        self.pending += 1
        torch._foreach_addcmul_(ema, grads, grads, value=(1.0 - self.beta) / self.beta ** self.pending)

    def state_dict(self) -> dict[str, Any]:
        return {"raw": {n: t.clone() for n, t in self.raw.items()}, "pending": self.pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raw, self.pending = (state["raw"], int(state["pending"])) if "raw" in state else (state, 0)  # older: values
        for n, t in raw.items():
            self.raw[n].copy_(t)


def mean_grad_squared(model: nn.Module, params: dict[str, nn.Parameter], batches: Iterable[Batch],
                      loss: Callable[[nn.Module, Batch], torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """Mean g^2 over ``count`` batches at the current weights; leaves no gradient behind."""
    scores = {n: torch.zeros_like(local(p), dtype=torch.float32) for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    for batch in batches:
        loss(model, batch).backward()
        for n, p in params.items():
            if p.grad is not None:
                g = local(p.grad)
                scores[n].addcmul_(g, g, value=1.0 / count)
        model.zero_grad(set_to_none=True)
    return scores


def rows_of(batch: Batch) -> Iterator[Batch]:
    """Each row of a collated batch as a batch of one, its padding trimmed (a right-padded row's
    loss and gradient do not depend on the padding after it)."""
    for i in range(batch["input_ids"].shape[0]):
        width = max(int(batch["attention_mask"][i].sum()), 1)
        yield {k: v[i:i + 1, :width] for k, v in batch.items()}


def mean_example_grad_squared(model: nn.Module, params: dict[str, nn.Parameter], batches: Iterable[Batch],
                              loss: Callable[[nn.Module, Batch], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The empirical Fisher as the EWC paper defines it: the mean over examples of each example's
    squared gradient (one backward per row of every batch), at the current weights; leaves no
    gradient behind. Unlike ``mean_grad_squared`` (the square of a batch's mean gradient), the
    per-example noise is not averaged away before squaring: for B rows of nearly independent
    gradients the per-example form is about B times larger."""
    scores = {n: torch.zeros_like(local(p), dtype=torch.float32) for n, p in params.items()}
    examples = 0
    model.zero_grad(set_to_none=True)
    for batch in batches:
        for row in rows_of(batch):
            loss(model, row).backward()
            for n, p in params.items():
                if p.grad is not None:
                    g = local(p.grad)
                    scores[n].addcmul_(g, g)
            model.zero_grad(set_to_none=True)
            examples += 1
    for t in scores.values():
        t.div_(max(examples, 1))
    return scores


@torch.no_grad()
def _copy_into(params: dict[str, nn.Parameter], values: dict[str, torch.Tensor]) -> None:
    for n, p in params.items():
        local(p).copy_(values[n])


def fine_tuned_weights(model: nn.Module, batches: Iterator[Batch], loss: Callable[[nn.Module, Batch], torch.Tensor],
                       lr: float, optimizer: Callable[[list[nn.Parameter], float], Any]) -> dict[str, torch.Tensor]:
    """This rank's blocks of every trainable parameter of ``model`` after fine-tuning it on
    ``batches`` (one step each of ``optimizer(params, lr)``, the run's own optimizer, so the
    probe's updates round as the run's do). The model is trained in place and then restored bit
    for bit, so a sharded model needs no second copy of its sharding; it is left with no gradient."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: local(p).detach().clone() for n, p in trainable.items()}
    model.zero_grad(set_to_none=True)
    opt = optimizer(list(trainable.values()), lr)
    try:
        for batch in batches:
            loss(model, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {n: local(p).detach().clone() for n, p in trainable.items()}
    finally:
        _copy_into(trainable, start)
        model.zero_grad(set_to_none=True)


def probe_displacement(model: nn.Module, params: dict[str, nn.Parameter], batches: Iterator[Batch],
                       loss: Callable[[nn.Module, Batch], torch.Tensor], lr: float,
                       optimizer: Callable[[list[nn.Parameter], float], Any]) -> dict[str, torch.Tensor]:
    """``|theta_probe - theta_0|`` per parameter of ``params`` after ``fine_tuned_weights``."""
    probed = fine_tuned_weights(model, batches, loss, lr, optimizer)
    return {n: (probed[n] - local(p).detach()).abs().float() for n, p in params.items()}
