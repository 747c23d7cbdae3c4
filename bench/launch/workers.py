"""Start the N processes of a sharded run (``train.workers = N``) with Ray Train.

A ``TorchTrainer`` starts N worker actors (one GPU each when the cluster has GPUs, else CPU
processes), joins them in one process group (NCCL on GPUs, gloo on CPU) and runs
``worker_main`` on each: the ordinary ``bench.run.execution.execute``, which finds the process group and
shards the model (``bench.engine.sharding``); rank 0 writes the result. Ray's placement group gives a
trial all its workers at once or none (gang scheduling), so trials never deadlock on a partial
set of GPUs. ``isobench run`` calls ``launch`` directly; a grid trial calls it from inside its Ray
Tune trial (Ray Train V2's pattern for Train inside Tune: the trial is a small driver that holds
no accelerator, and the trainer's workers ask for their own).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from bench.config import RunConfig, from_dict, to_dict
from bench.run import results as res
from bench.run.cell import Cell, resolve


def worker_resources(per_trial: dict[str, float], workers: int) -> dict[str, float]:
    """One worker's share of a trial's resources (Ray's upper-case keys)."""
    return {key.upper(): value / workers for key, value in per_trial.items() if value}


class RendezvousTimeout(RuntimeError):
    """The workers of a sharded run did not all join its process group in time."""


RENDEZVOUS_SIGNS = ("waiting for clients", "while trying to connect to", "DistStoreError", "DistNetworkError")


def rendezvous_failure(error: BaseException, workers: int, timeout_s: int, node_address: str) -> RendezvousTimeout | None:
    """One clear error for a process-group setup that timed out (``None`` for any other error):
    the address and port rank 0 waited on, how many workers arrived, and what to check."""
    text = str(error)
    if not any(sign in text for sign in RENDEZVOUS_SIGNS):
        return None
    where = re.search(r"connect to \(([^,]+), (\d+)\)", text) or re.search(r"host ([\w.:\[\]-]+):(\d+)", text)
    joined = re.search(r"(\d+)/(\d+) clients joined", text)
    at = f"{where.group(1)}:{where.group(2)}" if where else f"rank 0's node address ({node_address}), port not reported"
    arrived = (f"{joined.group(1)} of {joined.group(2)} workers joined, {int(joined.group(2)) - int(joined.group(1))} "
               f"did not arrive" if joined else f"a worker of {workers} could not reach rank 0")
    return RendezvousTimeout(
        f"the {workers} workers' process group was not set up within train.rendezvous_timeout_s = {timeout_s} s: "
        f"rank 0 waited at {at}; {arrived}. Check the node address Ray chose ({node_address}) is reachable from "
        f"every worker's machine, a firewall, and RAY_NODE_IP_ADDRESS or 'ray start --node-ip-address'")


def worker_main(payload: dict[str, Any]) -> None:
    """Runs on every worker: the process group is already initialized by Ray Train."""
    import torch

    torch.set_num_threads(max(1, int(payload["threads"])))
    if torch.cuda.is_available():
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
    from bench.run.execution import execute

    cell = resolve(from_dict(RunConfig, payload["cell"], "<sharded run>"), "<sharded run>")
    execute(cell, progress=payload["progress"], force=payload["force"], restart=payload["restart"],
            timing={"setup_s": time.time() - payload["started"]})


def launch(cell: Cell, per_trial: dict[str, float], *, force: bool = False, restart: bool = False,
           progress: bool = True) -> res.Result:
    """Run ``cell`` on ``cell.train.workers`` Ray Train workers (Ray must be initialized);
    returns the result rank 0 wrote, or a failed result built from Ray's error."""
    import torch
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from bench.run.status import crash_result

    workers = cell.train.workers
    share = worker_resources(per_trial, workers)
    use_gpu = share.get("GPU", 0) > 0 or (not per_trial and torch.cuda.is_available())
    payload = {"cell": to_dict(cell.config), "threads": share.get("CPU", 1), "progress": progress, "force": force,
               "restart": restart, "started": time.time()}
    trainer = TorchTrainer(
        worker_main, train_loop_config=payload,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=share or None),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=cell.train.rendezvous_timeout_s),
        run_config=RayRunConfig(name=f"{cell.run_id}-{time.strftime('%Y%m%d-%H%M%S')}",
                                storage_path=str((Path(cell.results_dir) / cell.study / ".ray").resolve())))
    try:
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - a worker died: recorded as the run's failure
        import ray

        result = res.read_result(cell.run_dir)
        if result is None or result.run.status == "running":
            clear = rendezvous_failure(e, workers, cell.train.rendezvous_timeout_s, ray.util.get_node_ip_address())
            if clear is not None:
                print(f"error: {cell.run_id}: {clear}", flush=True)
            result = crash_result(cell, clear or e)
            res.write_result(cell.run_dir, result)
        return result
    result = res.read_result(cell.run_dir)
    if result is None:
        raise RuntimeError(f"{cell.run_id}: the workers finished without writing {cell.run_dir / 'result.json'}")
    return result
