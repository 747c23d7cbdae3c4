"""A memory plan before anything loads: the peak accelerator memory of one run, from its config
and the backbone's shape alone (the registry's built-in shapes, or a local folder's config.json),
with the model built on the meta device (no weights, no bytes) so that the method's own
``prepare`` says what it trains and what state it keeps.

Terms (bytes):
- parameters: every parameter x the precision's parameter dtype (LoRA adapters included);
- gradients: trainable parameters x the parameter dtype;
- optimizer: trainable parameters x the precision's optimizer state bytes (AdamW: 2 moments;
  Kahan: + a compensation buffer);
- method: ``Method.planned_state_bytes`` (e.g. an fp32 importance EMA, frozen entries and their values);
- analysis: the ``[analysis]`` observers' state (``bench.analysis.planned_bytes``), when enabled;
- activations, per micro-batch of T = micro-batch x max_length tokens, in the compute dtype:
  without checkpointing every layer keeps ~(10 h + 3 kv + 4 i) values per token (h hidden,
  i MLP width, kv = key/value heads x head dim: norms, q/k/v, attention output, MLP gate, up,
  activation, product, residuals); with checkpointing each layer keeps its input (h per token)
  and one layer at a time is recomputed in full; plus the output layer on answer positions
  (assumed half of the tokens) x vocabulary x 12 bytes (bf16 logits, their fp32 copy for the
  loss, and both gradients).
Sharded over W workers (``train.workers``, FSDP2), every term but the activations is per GPU:
parameters, gradients, optimizer, method and analysis state are divided by W (each rank holds a
1/W block of every tensor), and two terms are added:
- gathered: FSDP2's unsharded working set: the root group (embeddings, final norm, output layer)
  gathered for the whole step, two decoder layers at a time (the current one and the prefetched
  next), each in the compute dtype, plus their gradients reduced in fp32;
- evaluation: each rank's whole copy of the model (parameter dtype), moved to its GPU while the
  ranks evaluate a stage together, each its share of the items.
  Training activations are freed by then, so the peak is state + max(activations + gathered,
  evaluation).
On a CPU the plan is of the trial process's peak resident memory (``VmHWM``), and one more term
counts:
- host: the process itself, before any model loads: the interpreter and the libraries a trial
  imports (torch, transformers, lm-eval, Ray). Measured at 0.56 GiB in a fresh process importing
  them (torch 2.13, transformers 5.23, lm-eval 0.4.13, Ray 2.60; ``PROCESS_BASELINE`` rounds it
  up to 0.6 GiB).
  The bf16 copies autocast makes of the weights, lm-eval's requests and the tokenizer stay
  inside the activations term's margin; a run hands back what an earlier trial of its process
  freed before it starts counting (``bench.engine.host_memory.hand_back``). Checked against
  measured peaks by ``python -m bench.tools.plan_check`` (docs/perf.md, "Memory plan on a CPU").
A cell fits when the total is at most 95% of the device memory (the rest for the CUDA context
and fragmentation). ``workers_to_fit`` finds the smallest power-of-two W that fits. Not
calibrated on a GPU for W > 1 yet: see docs/perf.md.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

import methods
from bench import analysis
from bench.backbones.registry import device, resolve
from bench.engine.precision import Precision
from bench.run.cell import Cell

GiB = 1 << 30
HEADROOM = 0.95
PROCESS_BASELINE = int(0.6 * GiB)  # a trial process on a CPU before its model loads (module docstring)
ANSWER_FRACTION = 0.5


class DoesNotFit(RuntimeError):
    """A cell whose plan exceeds the device memory; the message names the knobs."""


@dataclasses.dataclass(frozen=True)
class Plan:
    parameters: int
    gradients: int
    optimizer: int
    method: int
    activations: int
    device_bytes: int | None  # None: no accelerator to compare with
    analysis: int = 0  # the [analysis] observers' state
    workers: int = 1  # train.workers: every term is per GPU
    gathered: int = 0  # FSDP2's unsharded working set (W > 1)
    evaluation: int = 0  # each rank's whole copy while the ranks evaluate (W > 1)
    host: int = 0  # on a CPU: the process itself before any model loads (PROCESS_BASELINE)

    @property
    def total(self) -> int:
        state = self.parameters + self.gradients + self.optimizer + self.method + self.analysis + self.host
        return state + max(self.activations + self.gathered, self.evaluation)

    @property
    def fits(self) -> bool | None:
        return None if self.device_bytes is None else self.total <= HEADROOM * self.device_bytes

    def line(self) -> str:
        def gib(k: str) -> str:
            return f"{k} {getattr(self, k) / GiB:.1f}"

        parts = " + ".join(gib(k) for k in ("parameters", "gradients", "optimizer", "method")
                           + (("analysis",) if self.analysis else ()) + (("host",) if self.host else ()))
        if self.workers > 1:
            parts += f" + max({gib('activations')} + {gib('gathered')}, {gib('evaluation')})"
        else:
            parts += " + " + gib("activations")
        device = "no device given (--device-memory)" if self.device_bytes is None else \
            f"{'fits' if self.fits else 'DOES NOT FIT'} {self.device_bytes / GiB:.0f} GiB"
        where = f"per GPU of {self.workers} workers" if self.workers > 1 else "GiB"
        return f"plan {where}: {parts} = {self.total / GiB:.1f}; {device}"

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total": self.total, "fits": self.fits}


def parse_size(text: str) -> int:
    """``80GiB``, ``80GB``, ``81920MiB`` or a number of bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]i?B)?\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"bad memory size {text!r}; allowed: a size > 0, e.g. 80GiB, 80GB, 81920MiB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 1 << 10, "MIB": 1 << 20,
             "GIB": 1 << 30, "TIB": 1 << 40}[unit]
    return int(float(m.group(1)) * scale)


def device_memory() -> int | None:
    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def shape_of(name: str) -> dict[str, Any] | None:
    """The backbone's architecture shape: built in, or read from a local folder's config."""
    backbone = resolve(name)
    if backbone.shape is not None:
        return backbone.shape
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(backbone.model_id or name)
    except (OSError, ValueError):
        return None
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "head_dim", "tie_word_embeddings")
    return {k: getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None}


def meta_model(shape: dict[str, Any], dtype: torch.dtype) -> torch.nn.Module:
    """A Llama of ``shape`` on the meta device: names, shapes and dtypes, no memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**shape)).to(dtype)


def activation_bytes(shape: dict[str, Any], tokens: int, act_bytes: int, checkpointing: bool) -> int:
    h, i, layers, vocab = (shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"],
                           shape["vocab_size"])
    head_dim = shape.get("head_dim") or h // shape["num_attention_heads"]
    kv = shape.get("num_key_value_heads", shape["num_attention_heads"]) * head_dim
    per_layer = tokens * (10 * h + 3 * kv + 4 * i) * act_bytes
    kept = layers * tokens * h * act_bytes + per_layer if checkpointing else layers * per_layer
    return int(kept + ANSWER_FRACTION * tokens * vocab * 12)


def gathered_bytes(model: torch.nn.Module, compute_bytes: int) -> int:
    """FSDP2's unsharded working set: the root group for the whole step and two decoder layers,
    in the compute dtype, plus their gradients reduced in fp32."""
    from bench.engine.sharding import decoder_layer_classes

    blocks = decoder_layer_classes(model)
    layers = [m for m in model.modules() if type(m).__name__ in blocks]

    def size(params: list[torch.nn.Parameter]) -> int:
        return sum(p.numel() * compute_bytes + (p.numel() * 4 if p.requires_grad else 0) for p in params)

    in_layers = {id(p) for m in layers for p in m.parameters()}
    root = size([p for p in model.parameters() if id(p) not in in_layers])
    return root + 2 * max((size(list(m.parameters())) for m in layers), default=0)


def adapted_meta_model(cell: Cell, shape: dict[str, Any],
                       precision: Precision) -> tuple[torch.nn.Module, methods.Method]:
    """The cell's model on the meta device as its method adapts and prepares it, and the method."""
    method = methods.build(cell.method_name, cell.options)
    return method.prepare(method.adapt(meta_model(shape, precision.param_dtype))), method


def state_per_parameter(cell: Cell) -> float | None:
    """The method's planned state (``Method.planned_state_bytes``) in bytes per parameter of the
    whole model, for result.json's budget; None when the backbone's shape is unknown offline."""
    shape = shape_of(cell.backbone.name)
    if shape is None:
        return None
    model, method = adapted_meta_model(cell, shape, Precision.from_config(cell.precision, device()))
    return method.planned_state_bytes() / sum(p.numel() for p in model.parameters())


def plan_cell(cell: Cell, device_bytes: int | None, workers: int | None = None) -> Plan | None:
    """The plan of one cell per accelerator, on ``workers`` GPUs (default ``train.workers``);
    None when the backbone's shape is unknown offline."""
    shape = shape_of(cell.backbone.name)
    if shape is None:
        return None
    w = workers or cell.train.workers
    precision = Precision.from_config(cell.precision, device())  # "auto" as resolved on this machine
    model, method = adapted_meta_model(cell, shape, precision)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    micro = cell.train.batch_size // cell.train.grad_accum
    optimizer_bytes = sum(precision.optimizer_state_bytes(p) for p in trainable)
    state = [param_bytes, grad_bytes, optimizer_bytes, method.planned_state_bytes()]
    analysis_bytes = analysis.planned_bytes(cell.analyses, sum(p.numel() for p in trainable),
                                            len(cell.tasks.names))
    sharded = w > 1
    return Plan(*(-(-b // w) for b in state),
                activation_bytes(shape, micro * cell.train.max_length, precision.activation_bytes,
                                 cell.train.activation_checkpointing),
                device_bytes, -(-analysis_bytes // w), workers=w,
                gathered=gathered_bytes(model, precision.activation_bytes) if sharded else 0,
                evaluation=param_bytes if sharded else 0,
                host=PROCESS_BASELINE if precision.device.type == "cpu" else 0)


def workers_to_fit(cell: Cell, device_bytes: int, most: int = 64) -> int | None:
    """The smallest power-of-two number of workers whose per-GPU plan fits, or None."""
    w = 1
    while w <= most:
        plan = plan_cell(cell, device_bytes, w)
        if plan is None or plan.fits:
            return w if plan is not None else None
        w *= 2
    return None


def knobs(cell: Cell, device_bytes: int | None = None) -> str:
    """What could make a cell fit, in the order a user would try them."""
    out = []
    policy = Precision.from_config(cell.precision, device())
    if policy.bytes_per_trainable_param > 8:
        out.append(f"train.precision = 'bf16-sr' (8 B/param of weights, gradients and AdamW state instead of "
                   f"{policy.bytes_per_trainable_param})")
    if not cell.train.activation_checkpointing:
        out.append("train.activation_checkpointing = true")
    micro = cell.train.batch_size // cell.train.grad_accum
    if micro > 1:
        out.append(f"a smaller micro-batch (train.grad_accum > {cell.train.grad_accum}; now {micro} rows)")
    if device_bytes:
        w = workers_to_fit(cell, device_bytes)
        out.append(f"train.workers = {w} (FSDP2 over {w} GPUs; train.grad_accum a multiple of it)" if w and
                   w > cell.train.workers else "no number of workers up to 64 is enough as configured")
    return "; ".join(out)


def check_fits(cell: Cell, device_bytes: int | None) -> Plan | None:
    """The plan; ``DoesNotFit`` naming the knobs when it exceeds the device."""
    plan = plan_cell(cell, device_bytes)
    if plan is not None and plan.fits is False:
        where = ("the device has" if plan.host == 0 else
                 "a trial's share of this machine's memory (total / trials at once, grid.max_concurrent_trials) is")
        raise DoesNotFit(f"{cell.run_id} ({cell.backbone.name}, {cell.method_name}, {cell.train.precision}) "
                         f"needs {plan.total / GiB:.1f} GiB but {where} {plan.device_bytes / GiB:.1f} GiB "
                         f"({plan.line()}). Knobs that would make it fit: {knobs(cell, device_bytes)}")
    return plan
