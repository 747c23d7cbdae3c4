"""Evaluation wall time on 1 and on N workers, side by side in one run.

``python -m bench.tools.eval_scaling CONFIG`` evaluates the untrained backbone of a run config
(its first cell) on its tasks: in this process, then split over N CPU processes of one gloo
group (lm-eval's data-parallel split, as a sharded trial evaluates; every process holds the
whole model and ``--threads`` threads), and prints the wall times, their ratio and whether the
scores agree. The suite is built once, before anything is timed; model loading is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.backbones.registry import load_backbone
from bench.config import EvalConfig, RunConfig, from_dict, read_toml
from bench.suite.evaluate import evaluate
from bench.suite.tasks import Suite, build_suite


def timed_evaluation(backbone: str, suite: Suite, config: EvalConfig, threads: int) -> tuple[float, Any]:
    torch.set_num_threads(threads)
    model, tokenizer = load_backbone(backbone, torch.float32, 0, torch.device("cpu"))
    start = time.perf_counter()
    scores = evaluate(model, tokenizer, suite, config)
    return time.perf_counter() - start, scores


def _rank(rank: int, workers: int, port: int, out: str, args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=workers)
    try:
        seconds, scores = timed_evaluation(*args)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out, "rank0.json").write_text(json.dumps({"seconds": seconds, "scores": scores}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tools.eval_scaling", description=__doc__)
    p.add_argument("config", help="a run or grid file (its top-level settings are used)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (1 process gets workers x this)")
    args = p.parse_args(argv)
    data = {k: v for k, v in read_toml(args.config).items() if k != "grid"}
    config = from_dict(RunConfig, data, args.config)
    with tempfile.TemporaryDirectory() as folder:
        suite = build_suite(config.tasks.names, config.tasks.data_seed, config.tasks.train_size,
                            config.tasks.test_size, Path(folder), config.eval.max_gen_toks, config.tasks.sources)
        one, scores = timed_evaluation(config.backbone.name, suite, config.eval, args.workers * args.threads)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_rank, args=(args.workers, port, folder, (config.backbone.name, suite, config.eval, args.threads)),
                 nprocs=args.workers, join=True)
        split = json.loads(Path(folder, "rank0.json").read_text())
    same = {t: s["score"] for t, s in scores.items()} == {t: s["score"] for t, s in split["scores"].items()}
    print(f"| backbone | items | 1 process ({args.workers * args.threads} threads) | {args.workers} workers "
          f"({args.threads} thread each) | ratio | same scores |")
    print("|---|---|---|---|---|---|")
    print(f"| {config.backbone.name} | {config.eval.limit} x {len(suite.tasks)} tasks | {one:.1f} s | "
          f"{split['seconds']:.1f} s | {split['seconds'] / one:.2f} | {'yes' if same else 'no'} |")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
