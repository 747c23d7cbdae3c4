"""A small driver around ``bench.train.Trainer`` for method-level tests: fixed rows per step,
constant learning rate, no evaluation, so losses and parameters can be compared exactly."""

from __future__ import annotations

import copy
from typing import Any

import torch

import methods
from bench.config import TrainConfig
from bench.data import StageData, encode
from bench.models import tiny_llama
from bench.tasks import TASKS
from bench.train import Trainer

CPU = torch.device("cpu")


def rows(task: str = "arithmetic", n: int = 64, seed: int = 0) -> list[Any]:
    _, tok = tiny_llama(0)
    train, _ = TASKS[task].generate(seed, n, 1)
    return [encode(r, tok, 96) for r in train]


class Harness:
    """``Harness("epi", {"refresh_every": 2}).steps(5)`` -> losses of 5 optimizer steps."""

    def __init__(self, method: str, options: dict[str, Any] | None = None, seed: int = 0,
                 tasks: tuple[str, ...] = ("arithmetic", "format"), **train: Any) -> None:
        torch.manual_seed(seed)
        model, self.tokenizer = tiny_llama(seed)
        settings = {"batch_size": 4, "lr": 1e-2, "weight_decay": 0.1, "warmup_steps": 0, **train}
        self.config = TrainConfig(**settings)
        self.method = methods.build(method, options or {})
        self.trainer = Trainer(model, self.method, self.config, self.tokenizer.pad_token_id, CPU, progress=False)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.trainer.optimizer, lambda _: 1.0)
        self.rows = {t: rows(t) for t in tasks}
        self.order = [f for t in tasks for f in self.rows[t]]
        self.data = StageData(0, self.rows, self.config.batch_size, self.tokenizer.pad_token_id, CPU, seed, False)
        self.method.on_stage_start(0, self.data)

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model

    def batch(self, step: int) -> list[Any]:
        b = self.config.batch_size
        start = (step * b) % (len(self.order) - b)
        return self.order[start:start + b]

    def step(self) -> float:
        return self.trainer.train_step(self.batch(self.trainer.step), self.scheduler)

    def steps(self, n: int) -> list[float]:
        return [self.step() for _ in range(n)]

    def snapshot(self) -> dict[str, Any]:
        return {"model": copy.deepcopy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.trainer.optimizer.state_dict()),
                "method": copy.deepcopy(self.method.state_dict()), "step": self.trainer.step}

    def restore(self, snap: dict[str, Any]) -> None:
        self.model.load_state_dict(snap["model"])
        self.trainer.optimizer.load_state_dict(snap["optimizer"])
        self.method.load_state_dict(copy.deepcopy(snap["method"]))
        self.trainer.step = snap["step"]
