"""General-ability retention: the mean per-token NLL of the model on held-out general text, before
training and after every stage (``eval.retention``). It is reported as the change from the base
model (lower = more retained), the measure peft's method comparison calls "forgetting".

Sources (``eval.retention.source``):

- ``"python-docs"`` (the offline default): the English prose of Python's own reference help
  topics, ``pydoc_data.topics`` in the standard library of the interpreter that runs the suite
  (Python Software Foundation License; about 465,000 characters over 79 topics). Real English
  text that ships with every Python; technical, not a web corpus, and never a training task here.
- ``"hub:<dataset>[:<config>]:<split>:<column>"``: a hub dataset read with ``datasets`` (e.g.
  ``hub:Salesforce/wikitext:wikitext-103-raw-v1:test:text``, as ``configs/paper.toml`` does).
- a local ``.txt`` file (read whole) or ``.jsonl`` file (its ``"text"`` fields).

The text is joined, tokenized once, and cut into ``rows`` consecutive windows of ``tokens``
tokens from the start: the same tokens for every model of one backbone, so the numbers compare.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pluggable.options import Options

PYTHON_DOCS = "python-docs"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetentionOptions(Options):
    source: str = dataclasses.field(default=PYTHON_DOCS, metadata={
        "help": "python-docs | hub:<dataset>[:<config>]:<split>:<column> | a .txt or .jsonl file"})
    rows: int = dataclasses.field(default=32, metadata={"help": "windows of text measured", "minimum": 1})
    tokens: int = dataclasses.field(default=128, metadata={"help": "tokens per window", "minimum": 2})

    def __post_init__(self) -> None:
        ok = (self.source == PYTHON_DOCS or self.source.startswith("hub:")
              or self.source.endswith((".txt", ".jsonl")))
        self.check(ok, "source", "'python-docs', 'hub:<dataset>[:<config>]:<split>:<column>', or a .txt/.jsonl file")
        if self.source.startswith("hub:"):
            self.check(len(self.source.split(":")) in (4, 5), "source", "hub:<dataset>[:<config>]:<split>:<column>")


def source_problem(options: RetentionOptions) -> str | None:
    """Why the source cannot give ``rows x tokens`` tokens of text, checked before any model
    loads: a local file that is missing, not UTF-8 text, a ``.jsonl`` without a ``text`` string
    per line, no text at all, or fewer bytes than the tokens asked for (a token is at least one
    byte)."""
    if not options.source.endswith((".txt", ".jsonl")):
        return None
    path = Path(options.source).expanduser()
    if not path.is_file():
        return f"retention text {options.source!r} is not a file"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return f"retention text {options.source!r} is not UTF-8 text (byte {e.start}): a binary file?"
    except OSError as e:
        return f"retention text {options.source!r} cannot be read: {e.strerror or e}"
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            try:
                row = json.loads(line) if line.strip() else {"text": ""}
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                return f"retention text {options.source!r} line {number}: not a JSON object with a \"text\" string"
    if not source_text(options.source).strip():
        return f"retention text {options.source!r} holds no text"
    need = options.rows * options.tokens
    if len(source_text(options.source).encode()) < need:
        return (f"retention text {options.source!r} has {len(source_text(options.source).encode())} bytes, fewer "
                f"than the rows x tokens = {need} tokens eval.retention asks for (a token is at least one byte)")
    return None


@functools.lru_cache(maxsize=4)
def source_text(source: str) -> str:
    """The whole text of a source, joined by blank lines."""
    if source == PYTHON_DOCS:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    if source.startswith("hub:"):
        from datasets import load_dataset

        parts = source.split(":")[1:]
        dataset, config, split, column = parts if len(parts) == 4 else (parts[0], None, parts[1], parts[2])
        return "\n\n".join(t for t in load_dataset(dataset, config, split=split)[column] if t and t.strip())
    path = Path(source).expanduser()
    if path.suffix == ".jsonl":
        return "\n\n".join(json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip())
    return path.read_text()


def windows(options: RetentionOptions, tokenizer: Any) -> torch.Tensor:
    """``rows`` x ``tokens`` token ids: consecutive windows from the start of the text."""
    ids = tokenizer(source_text(options.source), add_special_tokens=False)["input_ids"]
    need = options.rows * options.tokens
    if len(ids) < need:
        raise ValueError(f"retention text {options.source!r} has {len(ids)} tokens; eval.retention asks for "
                         f"rows x tokens = {need}")
    return torch.tensor(ids[:need]).view(options.rows, options.tokens)


LOGITS_BUDGET = 1 << 25  # logit values per forward: 128 MiB in fp32, whatever the vocabulary


def rows_per_forward(model: nn.Module, tokens: int, batch_size: int) -> int:
    """Windows per forward: at most ``batch_size``, and few enough that the fp32 logits stay
    within ``LOGITS_BUDGET`` values (at a 49k-256k vocabulary a batch of whole windows would
    allocate, convert and normalize gigabytes of logits at once)."""
    output_embeddings = getattr(model, "get_output_embeddings", None)
    head = output_embeddings() if callable(output_embeddings) else None
    vocab = head.weight.shape[0] if head is not None else getattr(getattr(model, "config", None), "vocab_size", 1)
    return max(1, min(batch_size, LOGITS_BUDGET // max(1, tokens * vocab)))


@torch.no_grad()
def mean_token_nll(model: nn.Module, ids: torch.Tensor, batch_size: int) -> float:
    """Mean next-token NLL over every window (each token after the first of its window)."""
    was_training = model.training
    model.eval()
    on = next(model.parameters()).device
    total, count = 0.0, 0
    step = rows_per_forward(model, ids.shape[1], batch_size)
    for start in range(0, ids.shape[0], step):
        batch = ids[start:start + step].to(on)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"))
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / count


def retention(model: nn.Module, tokenizer: Any, options: RetentionOptions | None, batch_size: int) -> float | None:
    """The retention measure for ``eval.retention`` (None when it is off)."""
    if options is None:
        return None
    return mean_token_nll(model, windows(options, tokenizer), batch_size)
