"""Everything a method needs from the process group, in one place; in one process every function
here is the identity or a no-op, so a method file reads the same on 1 or 8 workers.

Under FSDP2 (``bench.engine.sharding``) every parameter, its gradient and its optimizer state are
DTensors sharded along dim 0: each rank holds a contiguous block of rows, and the ranks' blocks in
rank order are the tensor's flat order. Methods work on the local blocks (``local``) with local
flat indices, and combine what must be global (counts, extremes, histograms, dot products) with
the reductions below. ``gather_ordered`` lets every rank see the same few candidates in the
one-process order, so ties are broken exactly as in one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def world() -> int:
    """Number of ranks sharing the model (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's block of a sharded tensor (a view: writing to it writes the parameter), or
    ``t`` itself when it is not sharded."""
    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded one (every rank gathers all blocks), or ``t`` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce ``t`` in place over the ranks (``op``: sum, min or max) and return it."""
    if world() > 1:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return t


def total(value: float, on: torch.device | None = None) -> float:
    """Sum of a number over the ranks."""
    if world() == 1:
        return value
    return float(reduce_(torch.tensor([value], dtype=torch.float64, device=on)))


def gather_ordered(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's ``rows`` (a 2-D float64 tensor, any number of rows per rank), concatenated in
    rank order, and the rank each row came from."""
    if world() == 1:
        return rows, torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
    sizes = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(world())]
    dist.all_gather(sizes, torch.tensor([rows.shape[0]], device=rows.device))
    widest = int(max(s.item() for s in sizes))
    padded = torch.zeros((widest, rows.shape[1]), dtype=rows.dtype, device=rows.device)
    padded[:rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(world())]
    dist.all_gather(parts, padded)
    counts = [int(s.item()) for s in sizes]
    owner = torch.cat([torch.full((n,), r, dtype=torch.long, device=rows.device) for r, n in enumerate(counts)])
    return torch.cat([p[:n] for p, n in zip(parts, counts)]), owner


def local_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's block of ``full``, a tensor of ``like``'s global shape (``like``: a parameter,
    sharded or not)."""
    if not isinstance(like, DTensor):
        return full
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(like.shape, like.device_mesh, like.placements)
    return full[tuple(slice(o, o + s) for o, s in zip(offset, shape))]


def local_indices(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The flat indices of ``index`` (into ``like`` as a whole) that fall in this rank's block,
    as local flat indices of that block."""
    if not isinstance(like, DTensor):
        return index
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(like.shape, like.device_mesh, like.placements)
    row = like[0].numel() if like.dim() > 1 else 1  # sharded along dim 0: a block is whole rows
    start, size = offset[0] * row, shape[0] * row
    mine = (index >= start) & (index < start + size)
    return index[mine] - start


def barrier() -> None:
    if world() > 1:
        dist.barrier()
