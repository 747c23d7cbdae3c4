"""Result files of a run: ``result.json`` (atomic), and what goes in it besides scores
(versions, git commit, hardware), so every number can be traced and reproduced."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.tasks.lm_eval_files import atomic_write

RESULT = "result.json"


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    atomic_write(run_dir / RESULT, json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's result, or None when absent or unreadable (a crash never leaves half a file,
    but a foreign or truncated file is treated as missing)."""
    try:
        return json.loads((run_dir / RESULT).read_text())
    except (OSError, ValueError):
        return None


def is_done(run_dir: Path) -> bool:
    result = read_result(run_dir)
    return bool(result) and result.get("status") == "success"


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "lm_eval", "ray", "datasets", "isobench"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict[str, Any]:
    import os

    import torch

    info: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def peak_memory_bytes() -> int | None:
    """CUDA max allocated on GPU, else the process's peak RSS."""
    import resource

    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
