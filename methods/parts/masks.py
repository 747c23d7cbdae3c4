"""Mask machinery shared by every isolation method, written once.

- ``eligible_parameters``: which tensors may be isolated (default: every 2-D weight matrix).
- ``select_top_fraction`` and ``jaccard`` (from ``methods.parts.selection``, shared with the analyses):
  the global top-rho of importance scores and the overlap of two selections.
- ``IsolatedSet``: isolated entries as sorted flat int32 indices (every tensor of a 70B model has
  fewer than 2^31 entries) plus their frozen values: at rho = 1% that is 0.04 + 0.02-0.04 bytes
  per parameter, far below a 1-bit-per-entry bitmap with a full copy. Grads of
  isolated entries are zeroed before clipping, and after ``optimizer.step()`` the values are
  copied back, so an isolated entry is bit-identical even under AdamW's decoupled weight decay
  and with momentum left over from before it was isolated.
- ``clear_moments``.

Under sharding (``methods.parts.collectives``) every index is local to this rank's block of the
tensor, and every operation here acts on local blocks only: no communication, bit-exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from methods.parts.collectives import local
from methods.parts.selection import hits, jaccard, select_top_fraction

__all__ = ["IsolatedSet", "clear_moments", "eligible_parameters", "hits", "indices_to_mask", "jaccard",
           "select_top_fraction"]


def eligible_parameters(model: nn.Module, patterns: Sequence[str] = ()) -> dict[str, nn.Parameter]:
    """Trainable parameters that may be isolated: names matching any regex in ``patterns``,
    or every 2-D weight matrix when ``patterns`` is empty."""
    compiled = [re.compile(p) for p in patterns]
    chosen = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if (any(c.search(name) for c in compiled) if compiled else p.dim() == 2):
            chosen[name] = p
    if not chosen:
        raise ValueError(f"no trainable parameter matches eligible patterns {list(patterns)!r}")
    return chosen


def indices_to_mask(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool tensor shaped like ``like``, True at the flat ``index``."""
    like = local(like)
    mask = torch.zeros(like.numel(), dtype=torch.bool, device=like.device)
    mask[index.long()] = True
    return mask.view_as(like)


def clear_moments(optimizer: torch.optim.Optimizer, param: torch.Tensor, index: torch.Tensor,
                  keys: Iterable[str] = ("exp_avg", "exp_avg_sq")) -> None:
    """Zero the optimizer's per-entry state (Adam moments) of ``param`` at ``index``."""
    state = optimizer.state.get(param, {})
    for key in keys:
        if key in state and index.numel():
            local(state[key]).view(-1).index_fill_(0, index, 0)


class IsolatedSet:
    """The isolated entries of some parameters: sorted flat indices and frozen values."""

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        self.params = params
        self.index: dict[str, torch.Tensor] = {
            n: torch.empty(0, dtype=torch.int32, device=p.device) for n, p in params.items()}
        self.values: dict[str, torch.Tensor] = {
            n: torch.empty(0, dtype=p.dtype, device=p.device) for n, p in params.items()}

    def local(self) -> dict[str, torch.Tensor]:
        """This rank's blocks of the parameters (views, taken anew: FSDP2 may re-point its shards)."""
        return {n: local(p) for n, p in self.params.items()}

    @torch.no_grad()
    def assign(self, index: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Make ``index`` the isolated set (values frozen as they are now); returns, per
        tensor, the entries that were not isolated before (for moment clearing)."""
        added = {}
        for name, p in self.local().items():
            new = index.get(name, self.index[name][:0]).to(device=p.device, dtype=torch.long)
            old = self.index[name]
            added[name] = new[~hits(new, old, p.numel())] if old.numel() else new
            self.index[name] = new.to(torch.int32)
            self.values[name] = p.detach().reshape(-1)[new].clone()
        return added

    @torch.no_grad()
    def zero_grads(self) -> None:
        """No gradient for isolated entries: they count neither in clipping nor in moments."""
        for name, p in self.params.items():
            if p.grad is not None and self.index[name].numel():
                local(p.grad).view(-1).index_fill_(0, self.index[name].long(), 0)

    @torch.no_grad()
    def restore(self) -> None:
        """Copy frozen values back (undoes weight decay and leftover momentum), bit-exact."""
        for name, p in self.local().items():
            if self.index[name].numel():
                p.data.view(-1).index_copy_(0, self.index[name].long(), self.values[name])

    def masks(self) -> dict[str, torch.Tensor]:
        return {n: indices_to_mask(self.index[n], p) for n, p in self.params.items()}

    def count(self) -> int:
        """Isolated entries held by this rank."""
        return sum(i.numel() for i in self.index.values())

    def nbytes(self) -> int:
        """Bytes of state held per isolated set (indices + frozen values)."""
        return sum(i.numel() * i.element_size() + v.numel() * v.element_size()
                   for i, v in zip(self.index.values(), self.values.values()))

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"index": dict(self.index), "values": dict(self.values)}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, p in self.params.items():
            self.index[name] = state["index"][name].to(p.device)
            self.values[name] = state["values"][name].to(p.device)
