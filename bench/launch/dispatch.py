"""One dispatch of a cell: in this process (``train.workers = 1``) or on ``train.workers`` Ray
Train workers, with one resource policy. ``isobench run`` and every grid trial go through
``run_cell``.

Resources of one trial (``resources``): ``[grid] resources`` when given; otherwise one GPU per
worker when GPUs are visible, and CPUs: one per worker when the trial shares the machine with
other trials (a grid packs them), or every core of the machine when it runs alone
(``isobench run``). torch's threads are the CPUs a process holds, so trials never oversubscribe
cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.config import ConfigError
from bench.launch.ray_session import ray_session
from bench.run import results as res
from bench.run.cell import Cell
from bench.run.execution import execute


def resources(cell: Cell, override: dict[str, Any] | None = None, *, alone: bool = False) -> dict[str, float]:
    """What one trial of ``cell`` holds (lower-case Ray resource names); ``alone``: the trial is
    the only one on this machine."""
    if override:
        return {k: float(v) for k, v in override.items()}
    import torch

    workers = float(cell.train.workers)
    cpu = float(os.cpu_count() or workers) if alone else workers
    return {"gpu": workers, "cpu": cpu} if torch.cuda.is_available() else {"cpu": cpu}


def host_share(per_trial: dict[str, float], most_at_once: int) -> int:
    """The host memory one trial may use on this machine when no GPU is visible: total memory over
    the trials that can run at once (as many as the CPUs hold at ``per_trial``, at most
    ``most_at_once`` when it is set), so that the trials together fit."""
    import psutil

    by_cpu = int((os.cpu_count() or 1) // max(per_trial.get("cpu", 1.0), 1e-9)) or 1
    at_once = min(by_cpu, most_at_once) if most_at_once else by_cpu
    return int(psutil.virtual_memory().total // max(at_once, 1))


def check_resources(per_trial: dict[str, float], address: str | None) -> None:
    """On a local Ray, a trial cannot ask for more than this machine has."""
    if address:
        return
    import torch

    have = {"cpu": float(os.cpu_count() or 1), "gpu": float(torch.cuda.device_count())}
    for key, want in per_trial.items():
        if want > have.get(key, 0.0):
            raise ConfigError(f"grid.resources.{key} = {want:g} per trial, but this machine has {have.get(key, 0):g}; "
                              f"allowed: at most {have.get(key, 0):g} here, or run on a cluster with --address")


def run_cell(cell: Cell, per_trial: dict[str, float], *, force: bool = False, restart: bool = False,
             progress: bool = True, listeners: list[Callable[[dict[str, Any]], None]] | None = None,
             timing: dict[str, float] | None = None, own_session: bool = False) -> res.Result:
    """Train and evaluate ``cell``, holding ``per_trial``: in this process with that many torch
    threads, or on ``train.workers`` Ray Train workers (in the running Ray session, or in one of
    its own with ``own_session``)."""
    if cell.train.workers == 1:
        import torch

        torch.set_num_threads(max(1, int(per_trial.get("cpu", 1))))
        return execute(cell, progress=progress, force=force, restart=restart, listeners=listeners, timing=timing)
    from bench.launch.workers import launch

    if not own_session:
        return launch(cell, per_trial, force=force, restart=restart, progress=False)
    address = os.environ.get("RAY_ADDRESS")
    with ray_session(Path(cell.results_dir) / cell.study, address):
        return launch(cell, per_trial, force=force, restart=restart, progress=False)
