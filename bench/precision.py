"""The precision policy of a run: the one place that decides the model's dtype, the autocast of
every forward (training, a method's calibration or probe, evaluation) and how the optimizer is
built. The loop and the methods never branch on precision; they ask this object.

Today's two behaviours, as they were spread over ``backbone.dtype`` and ``train.bf16``:
- parameters in ``backbone.dtype`` (``auto`` = bf16 on GPU, fp32 on CPU);
- bf16 autocast around every forward when ``train.bf16`` is ``on`` (or ``auto`` on GPU);
- AdamW with decoupled weight decay, fused on GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class Precision:
    """Model dtype, autocast and optimizer construction for one device."""

    param_dtype: torch.dtype
    autocast_dtype: torch.dtype | None  # None = no autocast
    device: torch.device

    @classmethod
    def from_config(cls, dtype: str, bf16: str, on: torch.device) -> Precision:
        """From ``backbone.dtype`` (auto | float32 | bfloat16) and ``train.bf16`` (auto | on | off)."""
        param = (torch.bfloat16 if on.type == "cuda" else torch.float32) if dtype == "auto" else DTYPES[dtype]
        autocast = bf16 == "on" or (bf16 == "auto" and on.type == "cuda")
        return cls(param, torch.bfloat16 if autocast else None, on)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Context for every forward pass of the run."""
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            yield

    def optimizer(self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float],
                  weight_decay: float) -> torch.optim.Optimizer:
        """The optimizer that applies updates to parameters of ``param_dtype``."""
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay,
                                 fused=self.device.type == "cuda" or None)

    def describe(self) -> dict[str, Any]:
        """What result.json records about precision."""
        return {"param_dtype": str(self.param_dtype).removeprefix("torch."),
                "autocast": None if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch."),
                "optimizer": "torch.optim.AdamW"}
