"""Selecting the most important entries of a model and comparing selections; shared by every
user of importance scores (isolation methods, CPI-FT's core regions, the drift analysis).

- ``select_top_fraction``: one global top-rho selection over all entries of the given tensors,
  optionally after per-tensor min-max normalization ``(I - min_l) / (max_l - min_l + eps)``. It
  never sorts every entry: a strided sample of the scores (``sample`` entries) proposes a narrow
  range that holds the k-th largest score, two exact counts verify it, and a histogram search
  (``torch.histc``, ``bins`` per pass, exact counts verifying every narrowing) narrows further
  when the sample's range was wrong or still wide; only the few candidates left in that range
  are sorted. The sample only saves passes over the scores (at 134M entries one verified range
  costs 2 passes, each histogram pass 3): the result is the same with or without it. The result is exact: exactly
  ``round(rho * N)`` entries, ties at the threshold broken by tensor order then flat index.
  Normalization is never materialized: per-tensor thresholds are mapped into raw units.
  Sharded scores (``methods.parts.collectives``) select exactly the one-process set: extremes,
  histograms and counts are all-reduced, and the few candidates left are gathered in the
  one-process order before the final sort; each rank gets its own local indices back.
- ``jaccard``: overlap of two selections (flat indices per tensor); ``hits`` its membership test.
- ``layer_of``: the layer a parameter name belongs to, for per-layer counts.
"""

from __future__ import annotations

import math
import re

import torch

from methods.parts.collectives import gather_ordered, local, rank, reduce_, total

EPS = 1e-12
_LAYER = re.compile(r"\.(\d+)\.")


def layer_of(name: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``3``; non-layer tensors keep their last parts."""
    m = _LAYER.search(name)
    return m.group(1) if m else ".".join(name.split(".")[-2:])


def sampled_range(raws: list[torch.Tensor], maps: list[tuple[float, float]], k: int, count_all: int,
                  sample: int) -> tuple[float, float] | None:
    """A normalized range [lo, hi] that very likely holds the k-th largest score, from a strided
    sample of every rank's entries (gathered, so every rank proposes the same range); None when
    the sample is too small to say. Six binomial standard deviations of slack each way."""
    local_count = sum(r.numel() for r in raws)
    stride = max(1, -(-int(total(local_count, raws[0].device)) // sample))
    parts = [(r[::stride].double() - s) / c for r, (s, c) in zip(raws, maps) if r.numel()]
    mine = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64, device=raws[0].device)
    values = gather_ordered(mine.unsqueeze(1))[0].squeeze(1)
    m = values.numel()
    if m < 64:
        return None
    ordered = torch.sort(values, descending=True).values
    q = k / count_all
    at, slack = q * m, 6.0 * math.sqrt(q * (1 - q) * m) + 2
    hi = float(ordered[max(0, int(at - slack))]) if at - slack >= 0 else float("inf")
    lo = float(ordered[min(m - 1, int(at + slack))]) if at + slack < m else -float("inf")
    return lo, hi


def block_extremes(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tensor, the (min, max) over all ranks' blocks (flat, this rank's part each), as two
    float64 tensors; an empty block counts as (inf, -inf)."""
    on = blocks[0].device
    ends = torch.tensor([[float("inf"), -float("inf")]] * len(blocks), dtype=torch.float64, device=on)
    for i, b in enumerate(blocks):
        if b.numel():  # a rank's block of a small tensor may be empty
            ends[i] = torch.stack(torch.aminmax(b)).double()
    return reduce_(ends[:, 0].contiguous(), "min"), reduce_(ends[:, 1].contiguous(), "max")


def select_top_fraction(scores: dict[str, torch.Tensor], rho: float, *, normalize: bool = True,
                        bins: int = 4096, exact_below: int | None = None,
                        sample: int = 1 << 16) -> dict[str, torch.Tensor]:
    """Sorted flat indices of the global top ``rho`` fraction of entries, per tensor name.

    ``exact_below``: the histogram search stops once at most this many candidates remain and
    sorts them (default 2^24 on GPU, where sorting is cheap and each extra pass is not, 2^20 on CPU).
    ``sample``: entries sampled to propose the first range (0: histogram search only)."""
    names = list(scores)
    raws = [local(scores[n]).detach().reshape(-1) for n in names]
    on = raws[0].device
    if exact_below is None:
        exact_below = 1 << 24 if raws[0].is_cuda else 1 << 20
    count_all = int(total(sum(r.numel() for r in raws), on))
    k = int(round(rho * count_all))
    empty = {n: torch.empty(0, dtype=torch.long, device=r.device) for n, r in zip(names, raws)}
    if k <= 0:
        return empty
    if k >= count_all:
        return {n: torch.arange(r.numel(), device=r.device) for n, r in zip(names, raws)}
    lows, highs = block_extremes(raws)
    extremes = torch.stack([lows, highs], 1).cpu().tolist()
    maps = [(lo, hi - lo + EPS) if normalize else (0.0, 1.0) for lo, hi in extremes]  # normalized = (raw - shift) / scale
    if normalize:  # a constant tensor normalizes to 0 everywhere: as zeros, no threshold of it rounds
        for i, (mn, mx) in enumerate(extremes):  # (in its own dtype) onto its one value
            if mn == mx and raws[i].numel():
                raws[i], maps[i], extremes[i] = torch.zeros_like(raws[i]), (0.0, 1.0), [0.0, 0.0]

    def raw(x: float, i: int) -> float:  # normalized threshold -> raw units of tensor i
        return x if x in (-float("inf"), float("inf")) else x * maps[i][1] + maps[i][0]

    def count(pred) -> int:  # noqa: ANN001 - pred(raw_tensor, i) -> BoolTensor; one sync per call
        return int(reduce_(torch.stack([pred(r, i).sum() for i, r in enumerate(raws)]).sum()))

    normed = [((mn - s) / c, (mx - s) / c) for (mn, mx), (s, c) in zip(extremes, maps)]
    lo, hi = min(a for a, _ in normed), max(b for _, b in normed)  # finite, for histc
    hi_max = hi
    lo_b, hi_b = -float("inf"), float("inf")  # exact bounds: the k-th largest lies in [lo_b, hi_b]
    n_gt, n_ge = 0, count_all  # exact counts above hi_b and at or above lo_b
    positions: list[torch.Tensor] | None = None  # when set, raws[i] holds only these entries of tensor i
    proposed = sampled_range(raws, maps, k, count_all, sample) if sample and count_all > exact_below else None
    if proposed is not None and proposed[0] > lo:
        # One pass keeps the entries at or above the sample's lower end; everything after works
        # on those few (about rho of the entries) and maps back through ``positions``.
        s_lo, s_hi = proposed[0], min(proposed[1], hi)
        kept = [torch.nonzero(r >= raw(s_lo, i)).squeeze(1) for i, r in enumerate(raws)]
        values = [r[idx] for r, idx in zip(raws, kept)]
        ge = int(total(sum(v.numel() for v in values), on))
        gt = int(reduce_(torch.stack([(v > raw(s_hi, i)).sum() for i, v in enumerate(values)]).sum())) \
            if s_hi < hi else 0
        if gt < k <= ge:  # verified: the k-th largest lies in [s_lo, s_hi]
            raws, positions = values, kept
            lo, hi, lo_b, n_gt, n_ge = s_lo, s_hi, s_lo, gt, ge
            hi_b = s_hi if s_hi < hi_max else float("inf")
    while n_ge - n_gt > exact_below and hi > lo:
        hist = reduce_(torch.stack([torch.histc(r.float(), bins, raw(lo, i), raw(hi, i))
                                    for i, r in enumerate(raws)]).double().sum(0)).cpu()
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
    if positions is not None:  # back to flat indices of the whole (local) tensors
        above = [pos[a] for pos, a in zip(positions, above)]
        band_index = [pos[b] for pos, b in zip(positions, band)]
    else:
        band_index = band
    need = k - int(total(sum(a.numel() for a in above), on))
    # Candidates as (normalized score, tensor, local index) rows, every rank's, in the one-process
    # order (tensor, then flat index = rank block, then local index): the stable sort then breaks
    # ties exactly as one process does.
    rows = torch.cat([torch.stack([(r[b].double() - s) / c, torch.full_like(b, i, dtype=torch.float64),
                                   f.double()], 1) for i, (r, b, f, (s, c)) in enumerate(zip(raws, band, band_index,
                                                                                            maps))])
    rows, source = gather_ordered(rows)
    by_tensor = torch.sort(rows[:, 1], stable=True).indices
    rows, source = rows[by_tensor], source[by_tensor]
    order = torch.sort(rows[:, 0], descending=True, stable=True).indices[:need]
    mine = order[source[order] == rank()]
    picked_owner, picked = rows[mine, 1].long(), rows[mine, 2].long()
    def merged(i: int) -> torch.Tensor:  # ``above`` is sorted already (nonzero's order, mapped monotonically)
        extra = picked[picked_owner == i]
        return torch.sort(torch.cat([above[i], extra])).values if extra.numel() else above[i]

    return {n: merged(i) for i, n in enumerate(names)}


def per_layer_counts(index: dict[str, torch.Tensor]) -> dict[str, int]:
    """Selected entries per layer (``layer_of``), over all ranks, in layer order."""
    counts: dict[str, int] = {}
    for name, idx in sorted(index.items()):
        counts[layer_of(name)] = counts.get(layer_of(name), 0) + idx.numel()
    layers = sorted(counts)
    on = next(iter(index.values())).device
    return dict(zip(layers, reduce_(torch.tensor([counts[k] for k in layers], dtype=torch.long, device=on)).tolist()))


def hits(index: torch.Tensor, members: torch.Tensor, numel: int) -> torch.Tensor:
    """Bool per entry of ``index``: is it in ``members``? A byte map of the tensor plus a gather:
    linear time, much faster than the sorting ``torch.isin`` on millions of indices."""
    present = torch.zeros(numel, dtype=torch.bool, device=index.device)
    present[members.long()] = True
    return present[index.long()]


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], sizes: dict[str, int] | None = None) -> float:
    """|A & B| / |A | B| of two index sets per tensor (1.0 when both are empty), over all ranks
    when the indices are local to shards; ``sizes`` gives each tensor's (local) number of entries
    (default: just enough to hold the largest index)."""
    on = next(iter({**a, **b}.values())).device if a or b else torch.device("cpu")
    inter = torch.zeros((), device=on)
    size = 0
    for name in sorted(set(a) | set(b)):
        x = a.get(name, torch.empty(0, dtype=torch.long))
        y = b.get(name, torch.empty(0, dtype=torch.long, device=x.device)).to(x.device)
        size += x.numel() + y.numel()
        if x.numel() and y.numel():
            numel = sizes[name] if sizes else int(max(x.max(), y.max())) + 1
            inter = inter.to(x.device) + hits(x, y, numel).sum()
    counts = reduce_(torch.stack([inter.double().to(on), torch.tensor(float(size), dtype=torch.float64, device=on)]))
    both, union = float(counts[0]), float(counts[1])
    return 1.0 if union == 0 else both / (union - both)
