"""``python -m bench.tools.numerics``: does each precision policy apply the updates that fp32 applies?

From real pretrained weights (SmolLM2-135M by default, so weight magnitudes are real), the same
N full-SFT steps on the same batches of the offline tasks run under each precision, at each
learning rate (constant, no weight decay). Per precision it reports, over the 2-D weights other
than the embeddings:
- displacement: sum |w_N - w_0| as a fraction of the fp32 run's (1 = every update applied);
- never moved: the fraction of entries whose value is bit-identical after N steps;
- the final loss.
A lost update looks exactly like a deliberately frozen entry, the thing this suite measures: ``bf16-pure`` is
expected well below 1, the others within a few percent of it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from tabulate import tabulate

import methods
from bench.backbones.registry import device, load_backbone
from bench.config import TrainConfig
from bench.engine.data import encode
from bench.engine.precision import POLICIES, Precision
from bench.engine.train import Trainer
from bench.suite.tasks import TASKS


def batches(tokenizer: Any, tasks: list[str], n: int, batch: int, max_length: int) -> list[list[Any]]:
    """``n`` fixed batches, rows of ``tasks`` in turn (the same for every precision)."""
    rows = [encode(r, tokenizer, max_length) for t in tasks for r in TASKS[t].generate(0, n * batch, 1)[0]]
    order = [rows[(i * 7919) % len(rows)] for i in range(n * batch)]
    return [order[i * batch:(i + 1) * batch] for i in range(n)]


def tracked(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """2-D weights other than the embeddings (the entries most methods may freeze)."""
    return {n: p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n and "lm_head" not in n}


def measure(args: argparse.Namespace, precision_name: str, lr: float, data: list[list[Any]]) -> dict[str, Any]:
    on = torch.device(args.device) if args.device else device()
    precision = Precision.from_config(precision_name, on)
    model, tokenizer = load_backbone(args.backbone, torch.float32, 0, on)
    model.to(precision.param_dtype)  # every precision starts from the same fp32 weights, rounded once
    start = {n: p.detach().float().clone() for n, p in tracked(model).items()}
    config = TrainConfig(batch_size=args.batch, lr=lr, weight_decay=0.0, warmup_steps=0, max_grad_norm=1.0,
                         schedule="constant_with_warmup", max_length=args.max_length)
    trainer = Trainer(model, methods.build("full_sft"), config, tokenizer.pad_token_id, precision, progress=False)
    from bench.engine.data import StageData, Stream

    rows = {"fixed": [r for b in data for r in b]}
    trainer.start_stage(0, StageData(0, rows, args.batch, tokenizer.pad_token_id, on, 0, False, precision),
                        Stream(rows, 0, False), len(data))
    began = time.perf_counter()
    losses = [trainer.train_step(b) for b in data]
    seconds = time.perf_counter() - began
    moved = total = 0
    displacement = 0.0
    for n, p in tracked(trainer.model).items():
        delta = p.detach().float() - start[n]
        displacement += float(delta.abs().sum(dtype=torch.float64))
        moved += int((delta != 0).sum())
        total += delta.numel()
    return {"precision": precision_name, "lr": lr, "displacement": displacement, "never_moved": 1 - moved / total,
            "loss_first": losses[0], "loss_last": losses[-1], "step_s": seconds / len(data)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tools.numerics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lrs", default="2e-5,1e-5")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--precisions", default=",".join(POLICIES))
    p.add_argument("--tasks", default="arithmetic,format,logic")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default="numerics.json")
    args = p.parse_args(argv)
    precisions = [x for x in args.precisions.split(",") if x]
    if precisions[0] != "fp32":
        precisions = ["fp32", *[x for x in precisions if x != "fp32"]]
    _, tokenizer = load_backbone(args.backbone, torch.float32, 0, torch.device("cpu"))
    data = batches(tokenizer, args.tasks.split(","), args.steps, args.batch, args.max_length)
    rows = []
    for lr in [float(x) for x in args.lrs.split(",")]:
        for name in precisions:
            print(f"lr {lr:g}: {name}", flush=True)
            rows.append(measure(args, name, lr, data))
            reference = next(r for r in rows if r["lr"] == lr and r["precision"] == "fp32")
            rows[-1]["displacement_vs_fp32"] = rows[-1]["displacement"] / reference["displacement"]
            print(json.dumps(rows[-1]), flush=True)  # every row as soon as it is measured
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "rows": rows, "complete": False}, f, indent=2)
    header = (f"backbone {args.backbone}, {args.steps} full-SFT steps of {args.batch} rows (max {args.max_length} "
              f"tokens), constant lr, no weight decay, clipping 1.0, tasks {args.tasks}, {time.strftime('%Y-%m-%d')}")
    print(header)
    print(tabulate([[r["lr"], r["precision"], f"{r['displacement_vs_fp32']:.3f}", f"{100 * r['never_moved']:.2f}%",
                     f"{r['loss_last']:.4f}", f"{r['step_s']:.2f}"] for r in rows],
                   headers=["lr", "precision", "displacement vs fp32", "never moved", "final loss", "step s"],
                   tablefmt="github", disable_numparse=True))
    with open(args.json, "w") as f:
        json.dump({"header": header, "args": vars(args), "rows": rows, "complete": True}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
