"""Training data: tokenized rows, the seeded batch stream of a stage, collation and the loss.

The loss is the summed next-token NLL over answer tokens (target + end-of-text), divided by the
number of answer tokens in the whole optimizer step: batch 4 x accumulation 1 and batch 1 x
accumulation 4 therefore optimize the same quantity.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from bench.engine.precision import Precision

IGNORE = -100


class TrainingRow(TypedDict):
    """What the loop reads of a row (a task's row holds more, e.g. choices): the training text
    is ``prompt + " " + target``, and the loss covers the target (and end-of-text) only."""

    prompt: str
    target: str


Feature = tuple[list[int], list[int]]  # (input_ids, labels)


def encode(row: TrainingRow, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Feature:
    """Prompt tokens (label -100), then " target" and end-of-text (labelled); the prompt is cut
    from the left when the row is longer than ``max_length``."""
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    answer = tokenizer(" " + row["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    answer = answer[:max_length - 1]
    prompt = prompt[-(max_length - len(answer)):]
    return prompt + answer, [IGNORE] * len(prompt) + answer


def collate(features: Sequence[Feature], pad_id: int, on: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row of this micro-batch (dynamic padding)."""
    width = max(len(ids) for ids, _ in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(features), width), dtype=torch.long)
    for i, (x, y) in enumerate(features):
        ids[i, :len(x)], labels[i, :len(y)], attention[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids.to(on), "attention_mask": attention.to(on), "labels": labels.to(on)}


def answer_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


# Architectures whose forward ends in ``lm_head(hidden_states[:, positions])`` (Gemma-2 adds a
# final soft-cap after it): for them the output layer is computed on answer positions only.
ANSWER_ONLY_HEAD = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"}


def answer_logits(model: nn.Module, batch: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """Logits at the positions ``keep`` (shape ``(n_kept, vocab)``) predicting the next token.

    Prompt positions need no vocabulary projection: skipping them saves most of the output
    layer's work (vocabulary x hidden per token) on short answers. The forward goes through the
    root module, as FSDP2 requires (its root pre-forward hook gathers the embedding and output
    layer); a pre-hook on the output layer hands it the kept positions only. Other
    architectures compute the full logits."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if getattr(getattr(model, "config", None), "model_type", None) not in ANSWER_ONLY_HEAD:
        return model(**inputs).logits[:, :-1][keep]

    def kept_positions(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (args[0][:, :-1][keep], *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(kept_positions)
    try:
        return model(**inputs, logits_to_keep=0).logits  # 0 = every position, cut by the hook
    finally:
        handle.remove()


def summed_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token NLL over the labelled (answer) positions of ``batch``."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    return F.cross_entropy(answer_logits(model, batch, keep).float(), labels[keep], reduction="sum")


def mean_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return summed_nll(model, batch) / max(answer_tokens(batch), 1)


class Stream:
    """Infinite, seeded order over a stage's rows, with a position that can be saved: reshuffled
    each epoch; ``balanced`` draws tasks in turn so each contributes equally, ``proportional``
    mixes all rows. ``state_dict`` holds the RNG, the current epoch orders and positions."""

    def __init__(self, rows: dict[str, list[Feature]], seed: int | str, balanced: bool) -> None:
        self.rng, self.tasks = random.Random(seed), list(rows)
        if not balanced or len(self.tasks) == 1:
            self.pools = [[f for t in self.tasks for f in rows[t]]]
        else:
            self.pools = [rows[t] for t in self.tasks]
        if any(not pool for pool in self.pools):
            raise ValueError(f"a stage of tasks {self.tasks} has no training rows")
        self.orders: list[list[int]] = [[] for _ in self.pools]
        self.positions = [0] * len(self.pools)
        self.turn = 0

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Feature:
        i = self.turn
        self.turn = (i + 1) % len(self.pools)
        if self.positions[i] == len(self.orders[i]):  # a new epoch of this pool, shuffled now
            order = list(range(len(self.pools[i])))
            self.rng.shuffle(order)
            self.orders[i], self.positions[i] = order, 0
        self.positions[i] += 1
        return self.pools[i][self.orders[i][self.positions[i] - 1]]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "orders": [list(o) for o in self.orders],
                "positions": list(self.positions), "turn": self.turn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.orders = [list(o) for o in state["orders"]]
        self.positions, self.turn = list(state["positions"]), state["turn"]


class StageData:
    """What a method sees of a stage (``methods.base.StageData``): fresh seeded batches of the
    stage's mix or of one task, and the loop's own loss under the run's precision policy."""

    def __init__(self, stage: int, rows: dict[str, list[Feature]], batch_size: int, pad_id: int,
                 on: torch.device, seed: int, balanced: bool, precision: Precision | None = None) -> None:
        self.stage, self.tasks, self.rows = stage, list(rows), rows
        self.batch_size, self.pad_id, self.on = batch_size, pad_id, on
        self.seed, self.balanced = seed, balanced
        self.precision = precision or Precision("fp32", on)

    def batches(self, n: int, task: str | None = None) -> Iterator[dict[str, torch.Tensor]]:
        rows = self.rows if task is None else {task: self.rows[task]}
        stream = Stream(rows, f"{self.seed}:{self.stage}:{task}:calibration", self.balanced)
        for _ in range(n):
            yield collate([next(stream) for _ in range(self.batch_size)], self.pad_id, self.on)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.precision.autocast():
            return mean_nll(model, batch)

    def optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return self.precision.optimizer([{"params": params}], lr, (0.9, 0.999), 0.0)
