"""Run a function in N CPU processes joined by a gloo process group (torch.multiprocessing), as
Ray Train's workers are, and the same function in this process without one; the test compares
what both returned. ``trace`` trains one method through the real ``Trainer`` (``Harness``) and
records what must match between a sharded and a one-process run.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, workers: int, port: int, out: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(workers))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=workers)
    try:
        value = fn(*args)
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(value))


def spawn(fn: Callable[..., Any], workers: int, *args: Any) -> list[Any]:
    """``fn(*args)`` on ``workers`` processes of one gloo group; every rank's return value."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(workers, free_port(), out, fn, args), nprocs=workers, join=True)
        return [pickle.loads(Path(out, f"rank{r}.pkl").read_bytes()) for r in range(workers)]


def whole(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor of which ``t`` is this rank's block (``like``: the sharded parameter)."""
    if not isinstance(like, DTensor):
        return t
    return DTensor.from_local(t.to(torch.uint8) if t.dtype == torch.bool else t, like.device_mesh, like.placements,
                              shape=like.shape, stride=like.stride()).full_tensor().to(t.dtype)


def trace(method: str, options: dict[str, Any], steps: int, grad_accum: int, stages: int = 2,
          **train: Any) -> dict[str, Any]:
    """Train ``method`` for ``steps`` steps over ``stages`` sequential stages; returns the losses,
    the whole mask after every change of it, the entries isolated before a step that changed
    during it on this rank, and the whole final weights."""
    from methods.parts.collectives import local
    from tests.harness import Harness

    h = Harness(method, options, regime="sequential", tasks=("arithmetic", "format", "program"),
                grad_accum=grad_accum, **train)
    masks: list[dict[str, torch.Tensor]] = []
    changed: list[str] = []
    seen = -1

    def record_mask() -> None:
        nonlocal seen
        if getattr(h.method, "refreshes", 0) != seen:  # every isolation counts one
            seen = h.method.refreshes
            masks.append({n: whole(m, h.method.params[n]) for n, m in h.method.isolation_masks().items()})

    losses: list[float] = []
    for i in range(steps):
        if i and i % (steps // stages) == 0:
            h.next_stage()
        if h.method.isolates:
            record_mask()
        frozen = {n: (m, local(p).detach()[m].clone()) for n, m in h.method.isolation_masks().items()
                  for p in [dict(h.model.named_parameters())[n]] if m.any()}
        losses.append(h.step())
        params = dict(h.model.named_parameters())
        changed += [f"step {i}: {n}" for n, (m, v) in frozen.items() if not torch.equal(local(params[n]).detach()[m], v)]
    if h.method.isolates:
        record_mask()
    weights = {n: whole(local(p).detach(), p) for n, p in h.model.named_parameters()}
    return {"losses": losses, "masks": masks, "changed": changed, "weights": weights,
            "method_losses": list(h.trainer.method_losses),
            "isolated_steps": sum(1 for m in masks if any(x.any() for x in m.values()))}
