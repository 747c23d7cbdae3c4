"""Mask machinery shared by every isolation method, written once.

- ``eligible_parameters``: which tensors may be isolated (default: every 2-D weight matrix).
- ``select_top_fraction``: one global top-rho selection over all eligible entries, optionally
  after per-tensor min-max normalization ``(I - min_l) / (max_l - min_l + eps)``. It never sorts
  every entry: a histogram search (``torch.histc``, ``bins`` per pass) narrows the range that
  holds the k-th largest score, exact counts by comparison verify every narrowing, and only the
  few candidates left in that range are sorted. The result is exact: exactly
  ``round(rho * N)`` entries, ties at the threshold broken by tensor order then flat index.
  Normalization is never materialized: per-tensor thresholds are mapped into raw units.
- ``IsolatedSet``: isolated entries as sorted flat int32 indices (every tensor of a 70B model has
  fewer than 2^31 entries) plus their frozen values: at rho = 1% that is 0.04 + 0.02-0.04 bytes
  per parameter, far below a 1-bit-per-entry bitmap with a full copy. Grads of
  isolated entries are zeroed before clipping, and after ``optimizer.step()`` the values are
  copied back, so an isolated entry is bit-identical even under AdamW's decoupled weight decay
  and with momentum left over from before it was isolated.
- ``clear_moments`` and ``jaccard``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

EPS = 1e-12


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


def select_top_fraction(scores: dict[str, torch.Tensor], rho: float, *, normalize: bool = True,
                        bins: int = 4096, exact_below: int | None = None) -> dict[str, torch.Tensor]:
    """Sorted flat indices of the global top ``rho`` fraction of entries, per tensor name.

    ``exact_below``: the histogram search stops once at most this many candidates remain and
    sorts them (default 2^24 on GPU, where sorting is cheap and each extra pass is not, 2^20 on CPU)."""
    names = list(scores)
    raws = [scores[n].detach().reshape(-1) for n in names]
    if exact_below is None:
        exact_below = 1 << 24 if raws[0].is_cuda else 1 << 20
    total = sum(r.numel() for r in raws)
    k = int(round(rho * total))
    empty = {n: torch.empty(0, dtype=torch.long, device=r.device) for n, r in zip(names, raws)}
    if k <= 0:
        return empty
    if k >= total:
        return {n: torch.arange(r.numel(), device=r.device) for n, r in zip(names, raws)}
    extremes = torch.stack([torch.stack(torch.aminmax(r)).double() for r in raws]).cpu().tolist()
    maps = [(lo, hi - lo + EPS) if normalize else (0.0, 1.0) for lo, hi in extremes]  # normalized = (raw - shift) / scale

    def raw(x: float, i: int) -> float:  # normalized threshold -> raw units of tensor i
        return x if x in (-float("inf"), float("inf")) else x * maps[i][1] + maps[i][0]

    def count(pred) -> int:  # noqa: ANN001 - pred(raw_tensor, i) -> BoolTensor; one sync per call
        return int(torch.stack([pred(r, i).sum() for i, r in enumerate(raws)]).sum())

    normed = [((mn - s) / c, (mx - s) / c) for (mn, mx), (s, c) in zip(extremes, maps)]
    lo, hi = min(a for a, _ in normed), max(b for _, b in normed)  # finite, for histc
    lo_b, hi_b = -float("inf"), float("inf")  # exact bounds: the k-th largest lies in [lo_b, hi_b]
    n_gt, n_ge = 0, total  # exact counts above hi_b and at or above lo_b
    while n_ge - n_gt > exact_below and hi > lo:
        hist = torch.stack([torch.histc(r.float(), bins, raw(lo, i), raw(hi, i))
                            for i, r in enumerate(raws)]).double().sum(0).cpu()
        from_top = hist.flip(0).cumsum(0)
        j = bins - 1 - int(torch.searchsorted(from_top, torch.tensor([k - n_gt], dtype=torch.double)))
        width = (hi - lo) / bins
        # One bin of slack each way absorbs histc's edge rounding; exact counts then verify.
        new_lo, new_hi = max(lo, lo + (j - 1) * width), min(hi, lo + (j + 2) * width)
        gt = count(lambda r, i: r > raw(new_hi, i))
        ge = count(lambda r, i: r >= raw(new_lo, i))
        if not (gt < k <= ge) or (new_lo, new_hi) == (lo, hi):
            break
        lo, hi, lo_b, hi_b, n_gt, n_ge = new_lo, new_hi, new_lo, new_hi, gt, ge

    above = [torch.nonzero(r > raw(hi_b, i)).squeeze(1) for i, r in enumerate(raws)]
    band = [torch.nonzero((r >= raw(lo_b, i)) & (r <= raw(hi_b, i))).squeeze(1)
            for i, r in enumerate(raws)]
    need = k - sum(a.numel() for a in above)
    values = torch.cat([(r[b].double() - s) / c for r, b, (s, c) in zip(raws, band, maps)])
    order = torch.sort(values, descending=True, stable=True).indices[:need]
    owner = torch.cat([torch.full((b.numel(),), i, device=b.device) for i, b in enumerate(band)])
    flat = torch.cat(band)
    picked_owner, picked = owner[order], flat[order]
    return {n: torch.sort(torch.cat([above[i], picked[picked_owner == i]])).values
            for i, n in enumerate(names)}


def indices_to_mask(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool tensor shaped like ``like``, True at the flat ``index``."""
    mask = torch.zeros(like.numel(), dtype=torch.bool, device=like.device)
    mask[index.long()] = True
    return mask.view_as(like)


def hits(index: torch.Tensor, members: torch.Tensor, numel: int) -> torch.Tensor:
    """Bool per entry of ``index``: is it in ``members``? A byte map of the tensor plus a gather:
    linear time, much faster than the sorting ``torch.isin`` on millions of indices."""
    present = torch.zeros(numel, dtype=torch.bool, device=index.device)
    present[members.long()] = True
    return present[index.long()]


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], sizes: dict[str, int] | None = None) -> float:
    """|A & B| / |A | B| of two index sets per tensor (1.0 when both are empty); ``sizes`` gives
    each tensor's number of entries (default: just enough to hold the largest index)."""
    inter = torch.zeros(())
    total = 0
    for name in set(a) | set(b):
        x = a.get(name, torch.empty(0, dtype=torch.long))
        y = b.get(name, torch.empty(0, dtype=torch.long, device=x.device)).to(x.device)
        total += x.numel() + y.numel()
        if x.numel() and y.numel():
            numel = sizes[name] if sizes else int(max(x.max(), y.max())) + 1
            inter = inter.to(x.device) + hits(x, y, numel).sum()
    both = int(inter)
    return 1.0 if total == 0 else both / (total - both)


def clear_moments(optimizer: torch.optim.Optimizer, param: torch.Tensor, index: torch.Tensor,
                  keys: Iterable[str] = ("exp_avg", "exp_avg_sq")) -> None:
    """Zero the optimizer's per-entry state (Adam moments) of ``param`` at ``index``."""
    state = optimizer.state.get(param, {})
    for key in keys:
        if key in state and index.numel():
            state[key].view(-1).index_fill_(0, index, 0)


class IsolatedSet:
    """The isolated entries of some parameters: sorted flat indices and frozen values."""

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        self.params = params
        self.index: dict[str, torch.Tensor] = {
            n: torch.empty(0, dtype=torch.int32, device=p.device) for n, p in params.items()}
        self.values: dict[str, torch.Tensor] = {
            n: torch.empty(0, dtype=p.dtype, device=p.device) for n, p in params.items()}

    @torch.no_grad()
    def assign(self, index: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Make ``index`` the isolated set (values frozen as they are now); returns, per
        tensor, the entries that were not isolated before (for moment clearing)."""
        added = {}
        for name, p in self.params.items():
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
                p.grad.view(-1).index_fill_(0, self.index[name].long(), 0)

    @torch.no_grad()
    def restore(self) -> None:
        """Copy frozen values back (undoes weight decay and leftover momentum), bit-exact."""
        for name, p in self.params.items():
            if self.index[name].numel():
                p.data.view(-1).index_copy_(0, self.index[name].long(), self.values[name])

    def masks(self) -> dict[str, torch.Tensor]:
        return {n: indices_to_mask(self.index[n], p) for n, p in self.params.items()}

    def count(self) -> int:
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
