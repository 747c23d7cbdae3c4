"""Writing and reading a run's ``result.json`` (schema: ``reports.schema``), and the provenance
that goes in it (versions, hardware, git commit and worktree state), so every number can be
traced and reproduced."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import resource
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.files import atomic_write
from reports.schema import (
    ITEMS,
    ItemRecord,
    Provenance,
    Result,
    ResultError,
    items_from_jsonl,
    items_to_jsonl,
    read_items,
    read_result_file,
)

RESULT = "result.json"
REPO = Path(__file__).resolve().parents[2]  # the checkout bench/ lies in (no git there when installed)

__all__ = ["RESULT", "Result", "ResultError", "add_item_records", "item_records", "provenance", "read_result",
           "write_result"]


def write_result(run_dir: Path, result: Result) -> None:
    atomic_write(run_dir / RESULT, result.to_json())


def item_records(evaluation: str | int, scores: dict[str, dict[str, Any]]) -> list[ItemRecord]:
    """Take each task's ``items`` out of ``scores`` (``evaluate(per_item=True)``, already on the
    task's scale: 0-100, or the judge's 1-10) as records."""
    out = []
    for name, entry in scores.items():
        items = entry.pop("items", None)
        if items is None:
            continue
        out.append(ItemRecord(evaluation, name, [int(i["id"]) for i in items],
                              [None if i["score"] is None else float(i["score"]) for i in items],
                              [None if i.get("nll") is None else round(float(i["nll"]), 4) for i in items]))
    return out


def add_item_records(run_dir: Path, records: list[ItemRecord]) -> None:
    """Append ``records`` to the run's ``evaluation/items.jsonl`` (rewritten atomically; a
    record of the same evaluation and task replaces the earlier one, as a resumed run's)."""
    if not records:
        return
    new = {(r.evaluation, r.task) for r in records}
    kept = [r for r in read_items(run_dir) if (r.evaluation, r.task) not in new]
    atomic_write(run_dir / ITEMS, items_to_jsonl(kept + records))


def item_snapshot(run_dir: Path) -> str:
    """The run's ``items.jsonl`` as text, for a checkpoint to keep ("" when it has none yet)."""
    path = run_dir / ITEMS
    return path.read_text() if path.is_file() else ""


def restore_item_records(run_dir: Path, snapshot: str) -> int:
    """Put back the records of a checkpoint's ``snapshot`` that ``items.jsonl`` no longer holds
    (deleted or cut short since); returns how many."""
    if not snapshot:
        return 0
    kept = {(r.evaluation, r.task) for r in read_items(run_dir)}
    lost = [r for r in items_from_jsonl(snapshot, f"the checkpoint of {run_dir}") if (r.evaluation, r.task) not in kept]
    add_item_records(run_dir, lost)
    return len(lost)


def read_result(run_dir: Path) -> Result | None:
    """The run's result; None when absent; ``ResultError`` (naming the file) when corrupt."""
    return read_result_file(run_dir / RESULT)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "lm_eval", "ray", "datasets", "isobench"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, timeout=10,
                              check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def git_state() -> dict[str, Any]:
    """Commit, dirty flag and a hash of the uncommitted change (tracked diff + untracked files'
    names and contents), so that two runs of different uncommitted code never look alike."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None, "git_diff_sha1": None}
    diff = _git("diff", "HEAD", "--binary") or ""
    untracked = [u for u in (_git("ls-files", "--others", "--exclude-standard") or "").splitlines() if u]
    digest = hashlib.sha1(diff.encode())
    for name in sorted(untracked):
        digest.update(name.encode())
        try:
            digest.update((REPO / name).read_bytes())
        except OSError:
            continue
    dirty = bool(diff or untracked)
    return {"git_commit": commit.strip() or None, "git_dirty": dirty, "git_diff_sha1": digest.hexdigest() if dirty else None}


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def provenance() -> Provenance:
    return Provenance(versions=versions(), hardware=hardware(), **git_state())


STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_memory() -> None:
    """Start this run's peak memory from now: CUDA's peak statistics, and on Linux the process's
    peak RSS (``VmHWM``, reset by writing 5 to ``clear_refs``), so a trial that reuses a Ray
    worker does not report the peak of the trial before it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        CLEAR_REFS.write_text("5")
    except OSError:  # not Linux, or not allowed: the peak is then the process's since it started
        pass


def peak_memory_bytes() -> int:
    """CUDA max allocated on GPU, else the peak RSS since ``reset_peak_memory`` (``VmHWM``; the
    process's lifetime peak where Linux's counters are not there)."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    try:
        found = re.search(r"^VmHWM:\s+(\d+) kB", STATUS.read_text(), re.M)
    except OSError:
        found = None
    return int(found.group(1)) * 1024 if found else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
