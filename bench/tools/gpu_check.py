"""The GPU acceptance check: one command that measures, on the GPU it finds, every figure the
suite's speed and memory targets name, each printed next to its target (memory next to the
memory plan), and writes them to ``docs/perf_data/gpu_check_<device>.json``.

    python -m bench.tools.gpu_check                  # one CUDA GPU; torch, transformers, peft, tabulate
    python -m bench.tools.gpu_check --cpu-dry-run    # the same code on tiny shapes, in seconds

Figures (random-init Llamas of real shapes, synthetic rows, as ``bench.tools.perf`` measures):

1. full SFT at the 1B shape (8 x 2048) under bf16-mixed and bf16-pure: step time, tokens/s and
   MFU (6N x tokens/s over the device's dense bf16 peak); target: bf16-mixed >= 45% MFU;
2. every variant of ``bench/tools/perf_variants.toml`` marked ``gpu_check = ["ratio"]`` as a
   ratio to the baseline's step time under bf16-mixed, against its ``max_ratio`` where given;
3. peak memory at the 8B shape (8 x 2048, activation checkpointing) against the memory plan for
   the variants marked ``"memory"``, under bf16-sr (needs torchao) and bf16-mixed, each where
   its plan fits the device; target: the plan within 10% of the measured peak; the baseline's
   8B bf16-sr tokens/s against its 9,000 target;
4. one FSDP2 step of the project's ``Sharding`` in a one-process NCCL group against the plain step;
5. generation throughput of evaluation (greedy, batch 16, 256 new tokens, KV cache) at 1B.

A figure that cannot be measured here (a package missing, a plan that does not fit) is printed
as skipped, with the reason. With ``--cpu-dry-run`` nothing is held to a target.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import re
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from bench.backbones.registry import load_backbone, resolve
from bench.config import RunConfig, from_dict
from bench.engine.precision import missing_package
from bench.run.cell import resolve as resolve_cell
from bench.run.memory_plan import plan_cell
from bench.tools.perf import PEAK_BF16_FLOPS, VARIANTS_FILE, measure, read_variants, summarize, synthetic_rows

OUT = Path(__file__).resolve().parents[2] / "docs" / "perf_data"


def checked(kind: str) -> list[dict[str, Any]]:
    """The ``[[variant]]`` tables of the variants file that ``gpu_check`` lists ``kind`` for (baseline first)."""
    entries = tomllib.loads(VARIANTS_FILE.read_text())["variant"]
    return [entries[0], *(v for v in entries[1:] if kind in v.get("gpu_check", []))]


@dataclasses.dataclass(frozen=True)
class Shapes:
    small: str  # the 1B shape
    large: str  # the 8B shape
    batch: int
    seq: int
    steps: int
    warmup: int
    gen_batch: int
    gen_prompt: int
    gen_tokens: int


GPU = Shapes("random-llama-1b", "random-llama-8b", 8, 2048, 6, 2, 16, 128, 256)
DRY = Shapes("tiny-llama", "tiny-llama", 2, 32, 2, 1, 2, 8, 4)


@dataclasses.dataclass
class Figure:
    name: str
    value: str
    target: str = ""
    status: str = ""  # met | not met | skipped: why | measured (no target)
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


def namespace(shapes: Shapes, backbone: str, precision: str, checkpointing: bool = False) -> argparse.Namespace:
    return argparse.Namespace(backbone=backbone, precision=precision, batch=shapes.batch, seq=shapes.seq,
                              warmup=shapes.warmup, checkpoint_every=0, activation_checkpointing=checkpointing)


def run_variants(shapes: Shapes, backbone: str, precision: str, labels: tuple[str, ...], on: torch.device,
                 checkpointing: bool = False, fsdp: bool = False) -> list[dict[str, Any]]:
    """``bench.tools.perf``'s summary rows of the variants ``labels`` (the first is the baseline)."""
    variants = {v[0]: v for v in read_variants(VARIANTS_FILE)}
    args = namespace(shapes, backbone, precision, checkpointing)
    vocab = (resolve(backbone).shape or {}).get("vocab_size", 32000)
    rows = synthetic_rows(vocab, max(4 * shapes.batch, 16), shapes.seq, 0)
    raw: dict[str, list[dict[str, Any]]] = {}
    for label in labels:
        for sharded in (False, True) if fsdp else (False,):
            out = measure(variants[label], args, on, rows, shapes.steps, sharded)
            raw.setdefault(out["variant"], []).append(out)
            gc.collect()
    return summarize(raw, on)


def mfu(row: dict[str, Any], on: torch.device) -> float | None:
    if on.type != "cuda":
        return None
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in torch.cuda.get_device_name(0)), None)
    return 6 * row["params"] * row["tokens_per_s"] / peak if peak else None


def status(ok: bool | None, dry: bool) -> str:
    return "measured (dry run)" if dry or ok is None else ("met" if ok else "not met")


def throughput(shapes: Shapes, on: torch.device, dry: bool) -> list[Figure]:
    out = []
    baseline = checked("ratio")[0]["label"]
    for precision in ("bf16-mixed", "bf16-pure"):
        (row,) = run_variants(shapes, shapes.small, precision, (baseline,), on)
        share = mfu(row, on)
        target = precision == "bf16-mixed"
        out.append(Figure(f"{baseline} {shapes.small} {shapes.batch}x{shapes.seq} {precision}",
                          f"{row['median_step_s'] * 1e3:.1f} ms/step, {row['tokens_per_s']:,.0f} tokens/s"
                          + (f", MFU {100 * share:.1f}%" if share is not None else ""),
                          ">= 45% MFU" if target else "", status(share >= 0.45 if target and share else None, dry),
                          row))
    return out


def ratios(shapes: Shapes, on: torch.device, dry: bool) -> list[Figure]:
    variants = checked("ratio")
    rows = run_variants(shapes, shapes.small, "bf16-mixed", tuple(v["label"] for v in variants), on)
    targets = {v["label"]: v.get("max_ratio") for v in variants}
    out = []
    for row in rows[1:]:
        target = targets[row["variant"]]
        out.append(Figure(f"{row['variant']} / {rows[0]['variant']}, {shapes.small} bf16-mixed",
                          f"{row['step_ratio']:.3f}x",
                          f"<= {target:.2f}x" if target else "",
                          status(row["step_ratio"] <= target if target else None, dry), row))
    return out


def memory(shapes: Shapes, on: torch.device, dry: bool, device_bytes: int | None) -> list[Figure]:
    out = []
    for precision in ("bf16-sr", "bf16-mixed"):
        for variant in checked("memory"):
            label, method, options = variant["label"], variant["method"], variant.get("options", {})
            name = f"peak memory {shapes.large} {shapes.batch}x{shapes.seq} {precision} + checkpointing, {label}"
            if missing_package(precision):
                out.append(Figure(name, "—", "plan within 10%", f"skipped: {missing_package(precision)}"))
                continue
            cell = resolve_cell(from_dict(RunConfig, {"backbone": {"name": shapes.large},
                                         "method": {"name": method, "options": options},
                                         "train": {"precision": precision, "activation_checkpointing": True,
                                                   "batch_size": shapes.batch, "max_length": shapes.seq}}, "<gpu_check>"),
                           "<gpu_check>")
            plan = plan_cell(cell, device_bytes)
            if plan is None or plan.fits is False:
                out.append(Figure(name, "—", f"plan {plan.total / 2**30:.1f} GiB" if plan else "",
                                  f"skipped: the plan does not fit this device ({(device_bytes or 0) / 2**30:.0f} GiB)"))
                continue
            (row,) = run_variants(shapes, shapes.large, precision, (label,), on, checkpointing=True)
            peak = row["peak_memory_bytes"]
            off = abs(plan.total - peak) / peak if peak else None
            text = f"{size(peak)} measured, plan {size(plan.total)}" + (
                "" if on.type == "cuda" else " (CPU: state bytes only, no activations)")
            first = label == checked("memory")[0]["label"]
            tokens = f", {row['tokens_per_s']:,.0f} tokens/s" if precision == "bf16-sr" and first else ""
            ok = None if on.type != "cuda" or off is None else off <= 0.10
            out.append(Figure(name, text + tokens, "plan within 10%" + (", >= 9,000 tokens/s" if tokens else ""),
                              status(ok and (not tokens or row["tokens_per_s"] >= 9000) if ok is not None else None,
                                     dry), {**row, "plan_bytes": plan.total}))
    return out


def fsdp_step(shapes: Shapes, on: torch.device, dry: bool) -> list[Figure]:
    import torch.distributed as dist

    backend = "nccl" if on.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{tempfile.mkdtemp()}/group", rank=0, world_size=1)
    try:
        plain, sharded = run_variants(shapes, shapes.small, "bf16-mixed", (checked("ratio")[0]["label"],), on,
                                      fsdp=True)
    finally:
        dist.destroy_process_group()
    return [Figure(f"FSDP2 step ({backend}, 1 process) / plain step, {shapes.small} bf16-mixed",
                   f"{sharded['median_step_s'] / plain['median_step_s']:.3f}x "
                   f"({sharded['median_step_s'] * 1e3:.1f} vs {plain['median_step_s'] * 1e3:.1f} ms)",
                   "", status(None, dry), {"plain": plain, "fsdp": sharded})]


def generation(shapes: Shapes, on: torch.device, dry: bool) -> list[Figure]:
    """Greedy generation as evaluation runs it: fp32 master weights under bf16 autocast."""
    from bench.engine.precision import Precision

    precision = Precision.from_config("bf16-mixed", on)
    model, _ = load_backbone(shapes.small, precision.param_dtype, 0, on)
    model.eval()
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (shapes.gen_batch, shapes.gen_prompt), generator=torch.Generator().manual_seed(0))
    ids = ids.to(on)
    kwargs = {"max_new_tokens": shapes.gen_tokens, "min_new_tokens": shapes.gen_tokens, "do_sample": False,
              "pad_token_id": 0}
    with precision.evaluation(model):
        model.generate(ids[:, :8], max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
        if on.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(ids, **kwargs)
        if on.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    rate = shapes.gen_batch * shapes.gen_tokens / seconds
    del model
    return [Figure(f"evaluation generation, {shapes.small} bf16-mixed, batch {shapes.gen_batch}, "
                   f"{shapes.gen_tokens} new tokens", f"{rate:,.0f} tokens/s ({seconds:.1f} s)", "",
                   status(None, dry), {"tokens_per_s": rate, "seconds": seconds})]


def size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def device_name(on: torch.device) -> str:
    return torch.cuda.get_device_name(0) if on.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tools.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-dry-run", action="store_true", help="the same code on tiny shapes, on the CPU, in seconds")
    p.add_argument("--out", default=None, help="folder of the JSON file (default: docs/perf_data on a GPU; a "
                                               "temporary folder for a CPU dry run, which never writes into the checkout)")
    args = p.parse_args(argv)
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run with --cpu-dry-run to check the code on the CPU")
        return 2
    on = torch.device("cpu" if args.cpu_dry_run else "cuda")
    shapes = DRY if args.cpu_dry_run else GPU
    device_bytes = torch.cuda.get_device_properties(0).total_memory if on.type == "cuda" else None
    start = time.perf_counter()
    figures: list[Figure] = []
    for part in (throughput, ratios, fsdp_step, generation):
        figures += part(shapes, on, args.cpu_dry_run)
        print(f"[gpu_check] {part.__name__} done at {time.perf_counter() - start:.0f} s", flush=True)
    figures += memory(shapes, on, args.cpu_dry_run, device_bytes)
    name = device_name(on)
    print(f"device {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
          f"{time.perf_counter() - start:.0f} s" + (" (CPU dry run: tiny shapes, no target applies)"
                                                    if args.cpu_dry_run else ""))
    print(tabulate([[f.name, f.value, f.target, f.status] for f in figures],
                   headers=["figure", "measured", "target / plan", "status"], tablefmt="github"))
    slug = re.sub(r"[^a-z0-9]+", "_", ("cpu_dry_run" if args.cpu_dry_run else name).lower()).strip("_")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check-")) if args.cpu_dry_run else OUT
    path = out / f"gpu_check_{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device": name, "torch": torch.__version__, "dry_run": args.cpu_dry_run,
                                "seconds": time.perf_counter() - start,
                                "figures": [dataclasses.asdict(f) for f in figures]}, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
