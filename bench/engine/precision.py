"""The precision policy of a run (``train.precision``): the one place that decides the model's
parameter dtype, the autocast of every forward (training, a method's calibration or probe,
evaluation) and which optimizer applies the update. The loop and the methods ask this object
for dtypes, autocast and the optimizer, and never compare a policy's name. What they do know of
the optimizers this object builds: the loop puts a resumed LR back into torchao's tensor LR
(``bench/engine/train.py``), and ``methods/parts/importance.py`` reads Adam's second moment under the
state keys of torch, torchao and torch-optimi.

- ``fp32``: fp32 weights, fp32 AdamW state, fp32 compute (``auto`` on a CPU without bf16
  matrix units).
- ``bf16-mixed``: fp32 master weights and fp32 AdamW state, bf16 autocast compute (``auto`` on a
  GPU, and on a CPU with bf16 matrix units: ``cpu_bf16``): every update is applied in fp32, as in
  the fp32 run.
- ``bf16-pure``: bf16 weights and bf16 AdamW state, nearest rounding. An ablation with a known,
  measured loss: an update below half a bf16 ulp of its weight (lr 2e-5 against |w| ~ 0.02) is
  rounded away, and a lost update looks exactly like a deliberately frozen entry (``docs/perf.md``).
- ``bf16-sr``: bf16 weights and state, the update applied with stochastic rounding by torchao's
  ``_AdamW(bf16_stochastic_round=True)``: unbiased in expectation, no extra memory (8 B/param).
- ``bf16-kahan``: bf16 weights and state, the update applied with Kahan summation by
  torch-optimi's ``AdamW(kahan_sum=True)`` (+2 B/param for the compensation buffer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bench.config import POLICIES, ConfigError

# name -> (parameter dtype, autocast dtype or None, optimizer, optimizer state tensors per bf16 parameter).
# Every optimizer here keeps its state in the parameter's dtype: two Adam moments, plus Kahan's
# compensation buffer for a bf16 parameter (an fp32 one, e.g. a LoRA adapter, needs none).
_TABLE: dict[str, tuple[torch.dtype, torch.dtype | None, str, int]] = {
    "fp32": (torch.float32, None, "torch.optim.AdamW", 2),
    "bf16-mixed": (torch.float32, torch.bfloat16, "torch.optim.AdamW", 2),
    "bf16-pure": (torch.bfloat16, None, "torch.optim.AdamW", 2),
    "bf16-sr": (torch.bfloat16, None, "torchao.optim._AdamW(bf16_stochastic_round=True)", 2),
    "bf16-kahan": (torch.bfloat16, None, "optimi.AdamW(kahan_sum=True)", 3),
}


PACKAGES = {"bf16-sr": ("torchao", "torchao"), "bf16-kahan": ("optimi", "torch-optimi")}


def missing_package(name: str) -> str | None:
    """Why policy ``name`` cannot run here (its optimizer's package is not installed), or None."""
    import importlib.util

    module, dist = PACKAGES.get(name, (None, None))
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"train.precision = {name!r} needs the package {dist}: pip install 'isobench[gpu]' (or pip install {dist})"


CPU_BF16_ENV = "ISOBENCH_CPU_BF16"  # "1" or "0" decides for the detection (tests pin it to 0)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of the units oneDNN's bf16 matmul uses


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def _matmul_seconds(dtype: torch.dtype, repeats: int = 5) -> float:
    a, b = torch.randn(256, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, time.perf_counter() - start)
    return best


def check_cpu_bf16_setting() -> None:
    """``ConfigError`` for an ``ISOBENCH_CPU_BF16`` other than 1, 0 or unset (never ignored)."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced not in (None, "", "0", "1"):
        raise ConfigError(f"environment variable {CPU_BF16_ENV}={forced!r}: allowed: 1 (bf16-mixed on this "
                          f"CPU), 0 (fp32), or unset (decided by a probe)")


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices much faster than fp32: it has bf16 matrix units
    (AMX-BF16 or AVX512-BF16 in its flags) and a short timed probe (a SmolLM2-sized matmul, best
    of 5, about 0.1 s) runs bf16 in under 0.6x the fp32 time. ``ISOBENCH_CPU_BF16=1`` or ``=0``
    decides instead (the tests pin it to 0, so they behave alike on every machine)."""
    check_cpu_bf16_setting()
    forced = os.environ.get(CPU_BF16_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    if not cpu_flags() & set(BF16_FLAGS):
        return False
    return _matmul_seconds(torch.bfloat16) < 0.6 * _matmul_seconds(torch.float32)


def resolve(name: str, on: torch.device) -> str:
    """``auto`` -> ``bf16-mixed`` on GPU and on a CPU with fast bf16 matmul (``cpu_bf16``),
    else ``fp32``."""
    if name == "auto":
        return "bf16-mixed" if on.type == "cuda" or (on.type == "cpu" and cpu_bf16()) else "fp32"
    if name not in _TABLE:
        raise ValueError(f"unknown precision {name!r}; allowed: auto, {', '.join(POLICIES)}")
    return name


@dataclasses.dataclass(frozen=True)
class Precision:
    """Model dtype, autocast and optimizer construction of one policy on one device."""

    name: str
    device: torch.device

    @classmethod
    def from_config(cls, name: str, on: torch.device) -> Precision:
        return cls(resolve(name, on), on)

    @property
    def param_dtype(self) -> torch.dtype:
        return _TABLE[self.name][0]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _TABLE[self.name][1]

    def optimizer_state_bytes(self, param: torch.Tensor) -> int:
        """Bytes of optimizer state for one trainable parameter (the memory plan reads this)."""
        tensors = _TABLE[self.name][3] if param.dtype == torch.bfloat16 else 2
        return tensors * param.numel() * param.element_size()

    @property
    def bytes_per_trainable_param(self) -> int:
        """Weights + gradients + optimizer state of one full-SFT parameter (bf16-sr: 8)."""
        size = self.param_dtype.itemsize
        return 2 * size + (_TABLE[self.name][3] if self.param_dtype == torch.bfloat16 else 2) * size

    @property
    def activation_bytes(self) -> int:
        """Bytes per activation value of the compute dtype (the memory plan reads this)."""
        return (self.autocast_dtype or self.param_dtype).itemsize

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Context for every forward pass of the run."""
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            yield

    @contextlib.contextmanager
    def evaluation(self, model: torch.nn.Module) -> Iterator[None]:
        """Context for an evaluation of ``model``: the run's autocast, no autograd, and every
        weight cast to the autocast dtype once for the whole evaluation. torch's autocast caches a
        cast only for a leaf tensor that requires grad, so a frozen weight (LoRA's merged export,
        a frozen base model) would be cast again at every forward call, every generated token
        included; such weights are marked for the duration and put back afterwards."""
        frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()] \
            if self.autocast_dtype is not None else []
        for p in frozen:
            p.requires_grad_(True)
        try:
            with torch.no_grad(), self.autocast():
                yield
        finally:
            for p in frozen:
                p.requires_grad_(False)

    def optimizer(self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float],
                  weight_decay: float) -> torch.optim.Optimizer:
        """The optimizer that applies updates to parameters of ``param_dtype``."""
        if self.name == "bf16-sr":
            from torchao.optim import _AdamW

            return _AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, bf16_stochastic_round=True)
        if self.name == "bf16-kahan":
            from optimi import AdamW

            # optimi's defaults differ from torch's: pass eps and betas explicitly.
            return AdamW(groups, lr=lr, betas=betas, eps=1e-8, weight_decay=weight_decay, kahan_sum=True)
        # The fused kernel on CPU as on GPU: on CPU it makes the step of SmolLM2-135M 4x faster
        # than the default for-each implementation (0.15 s vs 0.65 s per step, docs/perf.md).
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)

    def describe(self) -> dict[str, Any]:
        """What result.json records about precision."""
        return {"policy": self.name, "param_dtype": str(self.param_dtype).removeprefix("torch."),
                "autocast": None if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch."),
                "optimizer": _TABLE[self.name][2]}

