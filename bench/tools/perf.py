"""``python -m bench.tools.perf``: the cost of every method, side by side, in one process.

On one backbone and one synthetic data stream, the method variants run in interleaved rounds
(A B C ... A B C ...), each on a fresh copy of the same initial weights, so machine noise hits
all of them alike. Printed and written as JSON: median step time, peak memory (CUDA max
allocated on GPU; on CPU the bytes of parameters, gradients, optimizer and method state), bytes of method state per model
parameter, the time of each operation a method offers for timing on its own
(``Method.timed_operations``), tokens/s, and each as a ratio to the first variant. On GPU, the
model FLOPs utilization of the first variant (6 x params x tokens / step time / peak bf16 FLOP/s).
The variants are read from ``bench/tools/perf_variants.toml`` (``--variants-file``); a variant's
``analysis`` table adds the analyses' observers (``bench.analysis``), whose cost then shows as a
step-time ratio (with ``every = 1`` the ratio is the cost of one measurement per step).
``--fsdp`` runs every variant a second time as a 1-worker FSDP2 trial (``bench.engine.sharding`` in a
one-process group: ``fully_shard`` per layer and root, the precision's MixedPrecisionPolicy),
labelled ``<variant> fsdp``, so FSDP2's own cost shows as a ratio on the same device.
``--precision fp32,bf16-mixed`` runs every variant under each policy, interleaved in the same
rounds and labelled ``<variant> <policy>``, so the policies' costs show side by side.
``--rows-from configs/quickstart.toml`` trains on that config's own tokenized rows (its offline
tasks, train size, seed and max length: the real shapes, with their padding) instead of the
synthetic rows of ``--seq`` tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

import methods
from bench import analysis
from bench.backbones.registry import enable_activation_checkpointing, load_backbone, resolve
from bench.config import TrainConfig
from bench.engine.checkpoint import Checkpointer
from bench.engine.data import IGNORE, Feature, StageData, Stream
from bench.engine.host_memory import keep_freed_memory
from bench.engine.precision import POLICIES, Precision
from bench.engine.sharding import Sharding
from bench.engine.train import Trainer
from bench.run.checks import parse_analyses
from methods.base import tensor_bytes

VARIANTS_FILE = Path(__file__).resolve().parent / "perf_variants.toml"  # ships with the package
Variant = tuple[str, str, dict[str, Any], dict[str, Any]]
ANALYSIS_TASKS = 3  # the synthetic rows are dealt into this many "tasks" for the analyses


def read_variants(path: Path) -> list[Variant]:
    """(label, method, options, analysis tables) per ``[[variant]]`` of ``path``; the first is
    the baseline."""
    entries = tomllib.loads(path.read_text()).get("variant", [])
    if not entries:
        raise SystemExit(f"error: {path}: no [[variant]] tables")
    return [(v["label"], v["method"], dict(v.get("options", {})), parse_analyses(dict(v.get("analysis", {})), str(path)))
            for v in entries]
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def synthetic_rows(vocab: int, n: int, seq: int, seed: int) -> list[Feature]:
    """Rows of ``seq`` random tokens; the last quarter is the labelled answer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(vocab) for _ in range(seq)]
        cut = seq - max(1, seq // 4)
        rows.append((ids, [IGNORE] * cut + ids[cut:]))
    return rows


def training_state_bytes(trainer: Trainer) -> int:
    """CPU stand-in for peak memory: parameters + gradients + optimizer state + method state
    (activations excluded; process RSS cannot be split between variants run in one process)."""
    params = list(trainer.model.parameters())
    grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return (tensor_bytes(params) + grads + tensor_bytes(trainer.optimizer.state_dict()["state"])
            + tensor_bytes(trainer.method.state_dict()))


def checkpoint_cost(trainer: Trainer) -> dict[str, float]:
    """Size of one in-run checkpoint of ``trainer`` and the time to write and read it."""
    with tempfile.TemporaryDirectory() as folder:
        checkpointer = Checkpointer(Path(folder), "perf", 1, dict)
        checkpointer.save(trainer)
        checkpointer.load()
        return {"bytes": checkpointer.stats["bytes"], "write_s": checkpointer.stats["write_s"],
                "read_s": checkpointer.stats["read_s"]}


def sync(on: torch.device) -> None:
    if on.type == "cuda":
        torch.cuda.synchronize()


def config_rows(path: str, backbone: str) -> list[Feature]:
    """The training rows of the first cell of a config file, tokenized as its run tokenizes
    them, the tasks interleaved (offline tasks only)."""
    from bench.engine.data import encode
    from bench.run.cells import load_cells
    from bench.suite.tasks import TASKS

    config = load_cells(path)[0]
    _, tokenizer = load_backbone(backbone, torch.float32, 0, torch.device("cpu"))
    per_task = [[encode(r, tokenizer, config.train.max_length)
                 for r in TASKS[t].generate(config.seed, config.tasks.train_size, 1)[0]] for t in config.tasks.names]
    return [row for group in zip(*per_task) for row in group]


def measure(variant: Variant, args: argparse.Namespace, on: torch.device,
            rows: list[Feature], steps: int, fsdp: bool = False, policy: str | None = None) -> dict[str, Any]:
    """Fresh model + method, ``args.warmup`` untimed steps, then ``steps`` timed steps."""
    label, name, options, analyses = variant
    gc.collect()
    if on.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    precision = Precision.from_config(policy or args.precision, on)
    model, tokenizer = load_backbone(args.backbone, precision.param_dtype, 0, on)
    if getattr(args, "activation_checkpointing", False):
        enable_activation_checkpointing(model)
    n_params = sum(p.numel() for p in model.parameters())
    method = methods.build(name, options)
    config = TrainConfig(batch_size=args.batch, lr=1e-5, warmup_steps=0, max_length=args.seq, grad_accum=1,
                         schedule="constant_with_warmup")
    tasks = {f"synthetic-{k}": rows[k::ANALYSIS_TASKS] for k in range(ANALYSIS_TASKS)}
    everything = StageData(-1, tasks, args.batch, tokenizer.pad_token_id or 0, on, 0, False, precision)
    trainer = Trainer(model, method, config, tokenizer.pad_token_id or 0, precision, progress=False,
                      observers=analysis.build(analyses, everything), sharding=Sharding(on, enabled=fsdp))
    data = StageData(0, {"synthetic": rows}, args.batch, tokenizer.pad_token_id or 0, on, 0, False, precision)
    trainer.start_stage(0, data, Stream({"synthetic": rows}, 0, False), args.warmup + steps)
    batches = [rows[(i * args.batch) % (len(rows) - args.batch):][:args.batch] for i in range(args.warmup + steps)]
    times = []
    for i, batch in enumerate(batches):
        sync(on)
        start = time.perf_counter()
        trainer.train_step(batch)
        sync(on)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    operations = {}
    for op_name, op in method.timed_operations().items():
        sync(on)
        start = time.perf_counter()
        op()
        sync(on)
        operations[op_name] = time.perf_counter() - start
    checkpoint = checkpoint_cost(trainer) if args.checkpoint_every else None
    extra_params = sum(p.numel() for p in trainer.model.parameters()) - n_params  # LoRA adapters
    state = tensor_bytes(method.state_dict()) + extra_params * 4
    tag = (f" {precision.name}" if "," in args.precision else "") + (" fsdp" if fsdp else "")
    out = {"variant": label + tag, "method": name, "options": options, "params": n_params,
           "precision": precision.name,
           "step_times_s": times,
           "peak_memory_bytes": torch.cuda.max_memory_allocated() if on.type == "cuda" else training_state_bytes(trainer),
           "state_bytes": state, "operations_s": operations, "checkpoint": checkpoint,
           "tokens_per_step": sum(len(r[0]) for r in batches[-1])}
    del trainer, model, method
    return out


def summarize(raw: dict[str, list[dict[str, Any]]], on: torch.device) -> list[dict[str, Any]]:
    rows = []
    for label, parts in raw.items():
        times = [t for p in parts for t in p["step_times_s"]]
        ops = {op: statistics.median(p["operations_s"][op] for p in parts) for op in parts[0]["operations_s"]}
        first = parts[0]
        rows.append({"variant": label, "median_step_s": statistics.median(times), "steps_timed": len(times),
                     "peak_memory_bytes": max(p["peak_memory_bytes"] for p in parts),
                     "state_bytes_per_param": first["state_bytes"] / first["params"],
                     "operations_s": ops,
                     "checkpoint": first["checkpoint"],
                     "tokens_per_s": first["tokens_per_step"] / statistics.median(times), "params": first["params"]})
    base = rows[0]  # the baseline always runs first
    for r in rows:
        r["step_ratio"] = r["median_step_s"] / base["median_step_s"]
        r["memory_ratio"] = r["peak_memory_bytes"] / base["peak_memory_bytes"] if base["peak_memory_bytes"] > 0 else None
        r["operations_over_step"] = {op: t / base["median_step_s"] for op, t in r["operations_s"].items()}
    if on.type == "cuda":
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        for r in rows if peak else []:
            r["mfu"] = 6 * r["params"] * r["tokens_per_s"] / peak
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    fmt = (lambda x, f: "—" if x is None else format(x, f))  # noqa: E731
    body = [[r["variant"], fmt(r["median_step_s"] * 1e3, ".1f"), fmt(r["step_ratio"], ".3f"),
             fmt(r["peak_memory_bytes"] / 2**30, ".2f"), fmt(r["memory_ratio"], ".3f"),
             fmt(r["state_bytes_per_param"], ".3f"),
             ", ".join(f"{op} {t * 1e3:.1f}" for op, t in r["operations_s"].items()) or "—",
             ", ".join(f"{op} {x:.2f}" for op, x in r["operations_over_step"].items()) or "—",
             fmt(r["tokens_per_s"], ".0f")] for r in rows]
    base = rows[0]["variant"]
    return tabulate(body, headers=["variant", "step ms (median)", f"x {base}", "memory GiB", f"x {base}",
                                   "state B/param", "own ops ms", "own op / step", "tokens/s"], tablefmt="github",
                    disable_numparse=True)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # as every run does (bench.run.execution)
    p = argparse.ArgumentParser(prog="python -m bench.tools.perf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="tiny-llama",
                   help="tiny-llama | smollm2-135m | random-llama-135m | random-llama-1b | a hub id or folder")
    p.add_argument("--precision", default="auto",
                   help=f"a policy, or several comma-separated, measured side by side: auto, {', '.join(POLICIES)}")
    p.add_argument("--rows-from", default=None, help="a config file whose training rows to use (offline tasks)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64, help="tokens per row (the last quarter is the answer)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant, split over the rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant and round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all variants")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--variants-file", default=str(VARIANTS_FILE), help="TOML file of [[variant]] tables")
    p.add_argument("--variants", default="", help="comma-separated labels of a subset (the first variant always runs)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also time one in-run checkpoint per variant and print its overhead at this interval")
    p.add_argument("--fsdp", action="store_true", help="also run every variant as a 1-worker FSDP2 trial")
    p.add_argument("--json", default="perf.json", help="where to write the raw and summarized numbers")
    args = p.parse_args(argv)
    policies = args.precision.split(",")
    unknown = [x for x in policies if x not in ("auto", *POLICIES)]
    if unknown:
        p.error(f"--precision {','.join(unknown)}: allowed: auto, {', '.join(POLICIES)} (comma-separated)")
    on = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.fsdp:
        import torch.distributed as dist

        dist.init_process_group("nccl" if on.type == "cuda" else "gloo", init_method=f"file://{tempfile.mkdtemp()}/group",
                                rank=0, world_size=1)
    variants = read_variants(Path(args.variants_file))
    chosen = [v for v in variants if not args.variants or v[0] in args.variants.split(",")]
    if not chosen or chosen[0] is not variants[0]:
        chosen = [variants[0], *chosen]
    # Token ids below every backbone's vocabulary (the ids' values do not change the cost).
    vocab = (resolve(args.backbone).shape or {}).get("vocab_size", 32000)
    rows = (config_rows(args.rows_from, args.backbone) if args.rows_from
            else synthetic_rows(vocab, max(4 * args.batch, 64), args.seq, 0))
    runs = [(v, fsdp, policy) for v in chosen for policy in policies
            for fsdp in ((False, True) if args.fsdp else (False,))]
    raw: dict[str, list[dict[str, Any]]] = {}
    per_round = max(1, args.steps // args.rounds)
    for r in range(args.rounds):
        for v, fsdp, policy in runs:
            print(f"round {r + 1}/{args.rounds}: {v[0]} {policy}{' fsdp' if fsdp else ''}", flush=True)
            out = measure(v, args, on, rows, per_round, fsdp, policy)
            raw.setdefault(out["variant"], []).append(out)
    summary = summarize(raw, on)
    device = torch.cuda.get_device_name(0) if on.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    shape = f"rows of {args.rows_from}" if args.rows_from else f"seq {args.seq}"
    header = (f"backbone {args.backbone}, {summary[0]['params'] / 1e6:.1f}M params, batch {args.batch} x {shape}, "
              f"precision {', '.join(Precision.from_config(x, on).name for x in policies)}, "
              f"{args.rounds} rounds x {per_round} timed steps per variant, device {device}, "
              f"{time.strftime('%Y-%m-%d')}")
    print(header)
    print(table(summary))
    if args.checkpoint_every:
        rows = [[r["variant"], f"{r['checkpoint']['bytes'] / 2**20:.0f}", f"{r['checkpoint']['write_s']:.2f}",
                 f"{r['checkpoint']['read_s']:.2f}",
                 f"{100 * r['checkpoint']['write_s'] / (args.checkpoint_every * r['median_step_s']):.1f}%"] for r in summary]
        print(tabulate(rows, headers=["variant", "checkpoint MiB", "write s", "read s",
                                      f"overhead at every {args.checkpoint_every} steps"], tablefmt="github"))
    for r in summary:
        if "mfu" in r:
            print(f"{r['variant']} model FLOPs utilization: {100 * r['mfu']:.1f}%")
    with open(args.json, "w") as f:
        json.dump({"header": header, "args": vars(args), "summary": summary, "raw": raw}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
