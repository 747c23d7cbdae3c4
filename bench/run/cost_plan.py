"""The cost of a cell in device-hours, before it runs: training from its FLOPs, evaluation from
its requests, at a stated throughput; and, once cells have run, from what they measured.

- Training FLOPs per token (Kaplan et al.'s 6N, split by pass): forward 2N, backward 2N for the
  activation gradients plus 2 x the trainable parameters for the weight gradients (LoRA's
  frozen backbone needs no weight gradients), plus another 2N forward when activation
  checkpointing recomputes the layers; the enabled analyses add their own passes
  (``bench.analysis.planned_passes``: gradient conflict's per-task backward passes). N = the
  backbone's parameters, from its shape on the meta device (no download). Tokens: steps x batch
  x ``train.max_length``, an upper bound (rows are padded to the longest row of a micro-batch,
  not to ``max_length``).
- Evaluation FLOPs: per evaluation (the base model once per backbone, then every stage), every
  task's ``eval.limit`` items, each a forward over ``train.max_length`` tokens for its score or
  gold NLL, plus ``eval.max_gen_toks`` generated tokens for a generating task, at 2N per token.
- Throughput: a fraction of the device's dense peak (``--assume-mfu`` for training,
  ``--assume-eval-mfu`` for evaluation, whose generation is bound by memory, not FLOPs), of
  ``--device-flops``. Default: on a GPU machine an H100's 989 TFLOP/s dense bf16; on a CPU
  machine this CPU's own matrix throughput, measured once per policy by a short probe
  (``cpu_flops``: a SmolLM2-sized matmul in the policy's compute dtype, on the threads one
  worker of a trial holds). Device-hours count every device of a sharded cell (a CPU trial's
  worker is one device).
- Measured: a cell with a successful result contributes its own ``train_s`` and ``eval_s`` x
  workers; a cell still to run that shares its backbone, method and training settings with
  measured ones is estimated at their measured tokens/s and seconds per evaluation instead.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from typing import Any

from bench import analysis
from bench.backbones.registry import device
from bench.config import to_dict
from bench.engine.precision import Precision
from bench.run import results as res
from bench.run.cell import Cell
from bench.run.memory_plan import adapted_meta_model, shape_of
from bench.run.regimes import regime_plan
from bench.suite.tasks import TASKS
from pluggable.options import as_table, non_default

H100_BF16_FLOPS = 989e12
GENERATING = {"generate", "gsm8k", "open"}


PROBE_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3}
PROBE_ROWS, PROBE_LENGTH = 8, 64  # a micro-batch of 512 tokens


@functools.lru_cache(maxsize=8)
def cpu_flops(policy: str, threads: int = 1) -> float:
    """This CPU's training throughput (FLOP/s) under ``policy`` on ``threads`` threads: the best of
    3 forward + backward passes of one SmolLM2-135M-shaped decoder layer (transformers' Llama
    layer, random weights) over a micro-batch of 8 x 64 tokens, under the policy's autocast, at
    6 FLOPs per weight per token; about 0.3 s. A training step's own mix (norms, activations,
    attention, casts between dtypes) is in it, which a bare matmul probe leaves out: on a CPU
    with AMX, a 512 x 576 x 1536 bf16 matmul ran 5-10x faster than a real step's layers."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from bench.engine.precision import Precision

    precision = Precision.from_config(policy, torch.device("cpu"))
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        config = LlamaConfig(**PROBE_SHAPE, num_hidden_layers=1, vocab_size=16)
        config._attn_implementation = "sdpa"  # as the loaded models run
        generator = torch.random.fork_rng(devices=[])
        with generator:
            torch.manual_seed(0)
            layer = LlamaDecoderLayer(config, 0).to(precision.param_dtype)
            x = torch.randn(PROBE_ROWS, PROBE_LENGTH, config.hidden_size, dtype=precision.param_dtype,
                            requires_grad=True)
        rotary = LlamaRotaryEmbedding(config)
        positions = torch.arange(PROBE_LENGTH).unsqueeze(0)
        embeddings = rotary(x, positions)

        def step() -> None:
            with precision.autocast():
                out = layer(x, position_embeddings=embeddings)
                out = out[0] if isinstance(out, tuple) else out
            out.float().square().mean().backward()

        step()  # warm-up
        best = min(_timed(step) for _ in range(3))
    finally:
        torch.set_num_threads(before)
    weights = sum(p.numel() for p in layer.parameters())
    return 6 * weights * PROBE_ROWS * PROBE_LENGTH / best


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return max(time.perf_counter() - start, 1e-9)


# Default fractions of the peak: on a GPU, of its dense bf16 peak (generation is bound by memory);
# on a CPU, of the probe's training throughput (``cpu_flops``), fitted on the papers_cpu and
# tuned_cpu grids' measured cells (docs/perf.md, "Cost plan on a CPU"). Evaluation's 1.0 is not a
# claim that it runs at the probe's rate: its FLOPs count every item at train.max_length, an upper
# bound that the fit absorbs.
GPU_FRACTIONS, CPU_FRACTIONS = (0.40, 0.05), (0.80, 1.0)


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclasses.dataclass(frozen=True)
class Assumptions:
    mfu: float | None = None  # None: GPU_FRACTIONS or CPU_FRACTIONS, by the machine
    eval_mfu: float | None = None
    device_flops: float | None = None  # None: an H100's on a GPU machine, else this CPU's (``cpu_flops``)

    def __post_init__(self) -> None:
        defaults = GPU_FRACTIONS if on_gpu() or self.device_flops is not None else CPU_FRACTIONS
        object.__setattr__(self, "mfu", defaults[0] if self.mfu is None else self.mfu)
        object.__setattr__(self, "eval_mfu", defaults[1] if self.eval_mfu is None else self.eval_mfu)
        for flag, value in (("--assume-mfu", self.mfu), ("--assume-eval-mfu", self.eval_mfu)):
            if not 0 < value <= 1:  # also false for nan
                raise ValueError(f"{flag} {value}: allowed: a fraction in (0, 1]")
        if self.device_flops is not None and not (0 < self.device_flops < float("inf")):  # nan, inf: every cost nan or 0
            raise ValueError(f"--device-flops {self.device_flops}: allowed: a finite number > 0")

    def peak(self, cell: Cell) -> float:
        """The dense peak a cell's throughput is a fraction of."""
        if self.device_flops is not None:
            return self.device_flops
        return H100_BF16_FLOPS if on_gpu() else cpu_flops(cell.precision, cell.train.workers)

    def text(self) -> str:
        if self.device_flops is not None or on_gpu():
            peak = f"{(self.device_flops or H100_BF16_FLOPS) / 1e12:.0f} TFLOP/s per device"
        else:
            peak = "this CPU's measured matmul throughput per worker (" + ", ".join(
                f"{p} {cpu_flops(p) / 1e9:.0f} GFLOP/s" for p in ("fp32", "bf16-mixed")) + " at one thread)"
        return f"training at {100 * (self.mfu or 0):.0f}% and evaluation at {100 * (self.eval_mfu or 0):.0f}% of {peak}"


@dataclasses.dataclass(frozen=True)
class Cost:
    train_h: float
    eval_h: float
    source: str  # "assumed" or "measured" (a result of this cell) or "calibrated" (measured cells like it)
    tokens: int

    @property
    def total_h(self) -> float:
        return self.train_h + self.eval_h


def parameters(cell: Cell) -> tuple[int, int] | None:
    """(all, trainable) parameters of the cell's model as its method adapts it; None offline without a shape."""
    shape = shape_of(cell.backbone.name)
    if shape is None:
        return None
    model, _ = adapted_meta_model(cell, shape, Precision.from_config(cell.precision, device()))
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


_WORK: dict[str, tuple[int, float, float]] = {}


def work(cell: Cell) -> tuple[int, float, float]:
    """(training tokens, training FLOPs, evaluation FLOPs of one evaluation) of a cell, or zeros."""
    key = similar(cell) + str(len(regime_plan(cell).groups))
    if key not in _WORK:
        _WORK[key] = _work(cell)
    return _WORK[key]


def _work(cell: Cell) -> tuple[int, float, float]:
    counted = parameters(cell)
    if counted is None:
        return 0, 0.0, 0.0
    n, trainable = counted
    t = cell.train
    stages = len(regime_plan(cell).groups)
    steps = stages * t.steps_per_stage
    tokens = steps * t.batch_size * t.max_length
    per_token = 2 * n + 2 * n + 2 * trainable + (2 * n if t.activation_checkpointing else 0)
    # the analyses' own passes (gradient conflict's per-task backward passes), as whole steps' work
    extra = analysis.planned_passes(cell.analyses, steps, len(cell.tasks.names)) * t.batch_size * t.max_length
    per_eval = sum(cell.eval.limit * 2 * n * (t.max_length * (2 if cell.eval.nll else 1)
                                                 + (cell.eval.max_gen_toks if TASKS[name].kind in GENERATING else 0))
                   for name in cell.tasks.names)
    return tokens, float((tokens + extra) * per_token), float(per_eval)


def evaluations(cell: Cell) -> int:
    """Evaluations of a cell: one per stage (the base scores are counted once per backbone)."""
    return len(regime_plan(cell).groups)


def similar(cell: Cell) -> str:
    """What makes two cells cost the same per token: backbone, method and its options, training
    settings, evaluation settings, tasks, and the enabled analyses (their passes cost)."""
    return json.dumps([cell.backbone.name, cell.method_name, non_default(cell.options), to_dict(cell.train),
                       to_dict(cell.eval), cell.tasks.names,
                       {name: as_table(options) for name, options in sorted(cell.analyses.items())}], sort_keys=True)


def steps(cell: Cell) -> int:
    return len(regime_plan(cell).groups) * cell.train.steps_per_stage


def measured(cell: Cell) -> tuple[float, float] | None:
    """(training, evaluation) device-seconds of a cell's successful result, or None."""
    try:
        result = res.read_result(cell.run_dir)
    except res.ResultError:
        return None
    if result is None or not result.ok:
        return None
    workers = result.train.workers or 1
    timing = result.train.timing
    if "train_s" not in timing:  # an earlier or hand-made result that timed nothing: not a measurement
        return None
    return timing.get("train_s", 0.0) * workers, timing.get("eval_s", 0.0) * workers


def plan_costs(cells: Sequence[Cell], assume: Assumptions) -> list[Cost]:
    """Each cell's cost: measured where it ran, calibrated from measured cells like it (their
    device-seconds per step and per evaluation), else assumed; plus the base scores, once per
    backbone."""
    done = {id(c): m for c in cells if (m := measured(c)) is not None}
    rates: dict[str, list[tuple[float, float]]] = {}
    for c in cells:
        if id(c) in done:
            train_s, eval_s = done[id(c)]
            rates.setdefault(similar(c), []).append((train_s / steps(c), eval_s / evaluations(c)))
    out = []
    for c in cells:
        tokens, train_flops, eval_flops = work(c)
        if id(c) in done:
            train_s, eval_s = done[id(c)]
            out.append(Cost(train_s / 3600, eval_s / 3600, "measured", tokens))
        elif like := rates.get(similar(c)):
            per_step, per_eval = (sum(r[i] for r in like) / len(like) for i in (0, 1))
            out.append(Cost(per_step * steps(c) / 3600, per_eval * evaluations(c) / 3600, "calibrated", tokens))
        else:
            peak = assume.peak(c)
            out.append(Cost(train_flops / (float(assume.mfu) * peak) / 3600,
                            eval_flops * evaluations(c) / (float(assume.eval_mfu) * peak) / 3600, "assumed", tokens))
    for name in sorted({c.backbone.name for c in cells}):  # the base scores, before the trials
        first = next(c for c in cells if c.backbone.name == name)
        _, _, eval_flops = work(first)
        out.append(Cost(0.0, eval_flops / (float(assume.eval_mfu) * assume.peak(first)) / 3600, "assumed", 0))
    return out


def cost_line(cost: Cost) -> str:
    return (f"cost {cost.total_h:,.2f} device-h (training {cost.train_h:,.2f} of {cost.tokens:,} tokens at most, "
            f"evaluation {cost.eval_h:,.2f}; {cost.source})")


def total_line(costs: Sequence[Cost], assume: Assumptions) -> str:
    """The grid's total and how it splits, with where the figures come from."""
    train, evaluation = sum(c.train_h for c in costs), sum(c.eval_h for c in costs)
    counts = {s: sum(c.source == s for c in costs) for s in ("measured", "calibrated", "assumed")}
    return (f"cost of the grid: {train + evaluation:,.1f} device-hours = training {train:,.1f} + evaluation "
            f"{evaluation:,.1f} (base scores included; "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; assumed: {assume.text()})")
