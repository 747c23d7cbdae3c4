"""Backbones by name: ``tiny-llama`` (random init, offline tokenizer) or any hub id / local folder.

``tiny-llama`` is a ~100k-parameter Llama with a byte-level tokenizer built in memory (256 byte
symbols + 2 specials, no download, no training), deterministic from the seed: tests and smoke
runs take seconds on a CPU. Hub ids and folders load with ``from_pretrained`` (bf16 on GPU,
fp32 on CPU unless the config says otherwise).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

EOS, PAD = "<|endoftext|>", "<|pad|>"
# Random-init Llama shapes of real sizes, for speed and memory work where no weights exist.
LLAMA_SHAPES = {
    "random-llama-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                          "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152},  # SmolLM2-135M
    "random-llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},  # Llama-3.2-1B
}
RANDOM_INIT = {"tiny-llama", *LLAMA_SHAPES}  # backbones whose weights depend on the run seed


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str, on: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if on.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


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

    config = LlamaConfig(**LLAMA_SHAPES[name], max_position_embeddings=4096, tie_word_embeddings=True)
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


def prepare_backbone(name: str) -> None:
    """One-time work before many processes load ``name`` (the SmolLM2 conversion), so parallel
    trials do not all convert at once."""
    if name == "smollm2-135m":
        from bench.smollm2 import smollm2_folder

        smollm2_folder()


def load_backbone(name: str, dtype: str, seed: int, on: torch.device | None = None
                  ) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The backbone ``name`` on device ``on`` (default: GPU if any), in training mode."""
    on = on or device()
    if name == "tiny-llama":
        model, tokenizer = tiny_llama(seed)
    elif name == "smollm2-135m":
        from bench.smollm2 import smollm2_folder

        model, tokenizer = from_pretrained(str(smollm2_folder()), resolve_dtype(dtype, on))
    elif name in LLAMA_SHAPES:
        model, tokenizer = random_llama(name, seed, resolve_dtype(dtype, on), on)
    else:
        model, tokenizer = from_pretrained(name, resolve_dtype(dtype, on))
    model.to(device=on, dtype=resolve_dtype(dtype, on))
    model.train()
    return model, tokenizer
