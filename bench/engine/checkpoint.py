"""Checkpoints inside a run: the whole ``Trainer`` state plus what the run has measured so far,
so a killed, preempted or crashed run continues where it stopped and ends bit-identical (CPU) to
a run done in one go.

- ``<run_dir>/checkpoint/state.pt``: one file, written aside and renamed over the previous one
  (atomic; the last complete checkpoint is always readable, and disk use stays at one copy).
- Saved every ``train.checkpoint_every`` optimizer steps and after every stage's evaluation.
- It holds the resolved-config hash; a checkpoint of another config is refused, never mixed.
- It holds the text of the log files (``metrics.jsonl``, ``events/*.jsonl``) as they were at
  save time and the lines buffered then; on resume the files are rewritten from that copy, so a
  log that a crash left shorter, longer or damaged comes back exactly, and no step line is lost
  or doubled. The file is fsynced before its rename, so a checkpoint never names a state that
  did not reach the disk.
- It is read with ``torch.load(weights_only=True)``: tensors and plain data, plus the types the
  run names (``safe_types``, its result dataclasses). A file holding anything else, a truncated
  or damaged file, is refused with its path and the ``--restart`` hint, before anything trains.
- A sharded run (``bench.engine.sharding``) saves one file per rank, each holding that rank's blocks of
  the model, the optimizer and the method's state: ``checkpoint/step-<N>/rank<r>.pt``. When
  every rank has written its file, rank 0 points ``checkpoint/latest`` at step N (atomic
  rename) and deletes older steps, so a run killed mid-save resumes from the last complete
  step. A checkpoint resumes only on the same number of workers (each rank's method and
  observer state covers its own blocks); another count is refused, naming both.

``ISOBENCH_FAULT_AT_STEP=kill:K`` (or ``hang:K``, ``grow:K``) makes a run that started from
step 0 SIGKILL itself (sleep; allocate host memory until something kills it) right after
optimizer step K: the fault injection the resume and memory tests use. A third field,
``grow:K:NAME``, limits it to the run whose folder name starts with NAME.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.engine.sharding import Sharding
from bench.files import remove_tree

CHECKPOINT_DIR = "checkpoint"
STATE = "state.pt"
FORMAT = 1


class CheckpointMismatch(RuntimeError):
    """A checkpoint written by another resolved config (or format) than the run's."""


class CheckpointUnreadable(RuntimeError):
    """A checkpoint that cannot be read safely: damaged, truncated, or holding code."""


class CheckpointNotWritten(RuntimeError):
    """A checkpoint that could not be written (e.g. a full disk); the previous one is kept."""


RESTART = "rerun with --restart to discard the checkpoint and start from step 0"


class Checkpointer:
    """Saves and loads one run's checkpoint; ``extra()`` gives the run's own progress (stage
    scores so far) to store beside the trainer state."""

    def __init__(self, run_dir: Path, config_hash: str, every: int, extra: Callable[[], dict[str, Any]],
                 sharding: Sharding | None = None, safe_types: tuple[type, ...] = ()) -> None:
        self.folder, self.config_hash, self.every, self.extra = run_dir / CHECKPOINT_DIR, config_hash, every, extra
        self.safe_types = list(safe_types)
        self.sharding = sharding or Sharding(torch.device("cpu"), enabled=False)
        self.stats: dict[str, Any] = {"saves": 0, "bytes": None, "write_s": 0.0, "read_s": None}
        self.first_step = 0  # the step this attempt started from (0, or where it resumed)

    @property
    def path(self) -> Path:
        """This process's file of the last complete checkpoint."""
        if not self.sharding.active:
            return self.folder / STATE
        latest = self.folder / "latest"
        step = latest.read_text().split()[0] if latest.is_file() else "none"
        return self.step_file(step)

    def step_file(self, step: int | str) -> Path:
        return self.folder / f"step-{step}" / f"rank{self.sharding.rank}.pt"

    def _commit(self, step: int) -> None:
        """Sharded: once every rank's file of ``step`` is written, point ``latest`` at it."""
        if not self.sharding.active:
            return
        self.sharding.barrier()
        if self.sharding.writes:
            tmp = self.folder / f".latest.{os.getpid()}.tmp"
            tmp.write_text(f"{step} workers {self.sharding.workers}\n")
            os.replace(tmp, self.folder / "latest")
            for old in self.folder.glob("step-*"):
                if old.name != f"step-{step}":
                    remove_tree(old)

    def after_step(self, trainer: Any) -> None:
        """Called by the trainer after every optimizer step."""
        if self.every > 0 and trainer.step % self.every == 0:
            self.save(trainer)
        inject_fault(trainer.step, self.first_step, self.folder.parent.name)

    def save(self, trainer: Any, always: bool = False) -> None:
        """Save now, if checkpoints are on (``every`` > 0) or ``always``."""
        if self.every <= 0 and not always:
            return
        start = time.perf_counter()
        payload = {"format": FORMAT, "config_hash": self.config_hash, "step": trainer.step,
                   "workers": self.sharding.workers, "trainer": trainer.state_dict(), "run": self.extra()}
        path = self.step_file(trainer.step) if self.sharding.active else self.folder / STATE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        try:
            torch.save(payload, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_folder(path.parent)
        except (OSError, RuntimeError) as e:
            free = shutil.disk_usage(path.parent).free
            raise CheckpointNotWritten(f"{path}: the checkpoint at step {trainer.step} could not be written "
                                       f"({str(e).splitlines()[0][:200]}; {free / 2**20:.0f} MiB free on that disk); "
                                       f"the previous checkpoint is kept") from None
        finally:
            tmp.unlink(missing_ok=True)
        self._commit(trainer.step)
        self.stats["saves"] += 1
        self.stats["bytes"] = path.stat().st_size
        self.stats["write_s"] += time.perf_counter() - start

    def load(self) -> dict[str, Any] | None:
        """The last complete checkpoint, or None; ``CheckpointMismatch`` if it is another run's
        (or, sharded, another number of workers')."""
        latest = self.folder / "latest"
        written = int(latest.read_text().split()[-1]) if latest.is_file() else 1 if (self.folder / STATE).is_file() \
            else None
        if written is None:
            return None
        if written != self.sharding.workers:
            raise CheckpointMismatch(f"{self.folder}: written by {written} worker(s), but this run has train.workers = "
                                     f"{self.sharding.workers}: resume with the same train.workers, or {RESTART}.")
        start = time.perf_counter()
        on = self.sharding.device if self.sharding.active else "cpu"  # a rank's blocks stay on its device
        try:
            with torch.serialization.safe_globals(self.safe_types):
                payload = torch.load(self.path, weights_only=True, map_location=on)
        except Exception as e:  # noqa: BLE001 - any unreadable file is refused the same way
            first = str(e).split("\n")[0] if "Weights only load failed" not in str(e) else next(
                (x.strip() for x in str(e).splitlines() if "GLOBAL" in x), "it holds code or unknown types")
            raise CheckpointUnreadable(f"{self.path}: cannot be read as a checkpoint ({type(e).__name__}: "
                                       f"{first[:300]}); {RESTART}") from None
        if not isinstance(payload, dict):
            raise CheckpointUnreadable(f"{self.path}: not a checkpoint (a {type(payload).__name__}); {RESTART}")
        self.stats["read_s"] = time.perf_counter() - start
        if payload.get("format") != FORMAT:
            raise CheckpointMismatch(
                f"{self.path}: written in checkpoint format {payload.get('format')!r} by another version of isobench; "
                f"this version reads format {FORMAT!r}: refusing to guess. {RESTART[0].upper() + RESTART[1:]}.")
        if payload.get("config_hash") != self.config_hash:
            raise CheckpointMismatch(
                f"{self.path}: written for config hash {payload.get('config_hash')!r}, but this run's resolved config "
                f"hashes to {self.config_hash!r}: refusing to mix them. {RESTART[0].upper() + RESTART[1:]}.")
        self.first_step = payload["step"]
        return payload

    def discard(self) -> None:
        """Delete the checkpoint (rank 0's job in a sharded run; the others wait for it)."""
        if self.sharding.writes:
            remove_tree(self.folder)
        self.sharding.barrier()


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


GROW_BYTES, GROW_FOR_S = 1 << 28, 120.0  # ``grow``: 256 MiB a step, for at most two minutes


def inject_fault(step: int, first_step: int, run: str = "") -> None:
    """Test hook: ``ISOBENCH_FAULT_AT_STEP=kill:K|hang:K|grow:K[:NAME]`` acts after step K of an
    attempt that started from step 0 (a resumed attempt runs on), in the run ``NAME`` starts."""
    spec = os.environ.get("ISOBENCH_FAULT_AT_STEP")
    if not spec or first_step != 0:
        return
    action, at, *name = spec.split(":")
    if step != int(at) or (name and not run.startswith(name[0])):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "hang":
        time.sleep(3600)
    elif action == "grow":  # touched pages, so the memory is resident: a memory monitor sees it
        held, deadline = [], time.monotonic() + GROW_FOR_S
        while time.monotonic() < deadline:
            held.append(bytearray(GROW_BYTES))
            for offset in range(0, GROW_BYTES, 4096):
                held[-1][offset] = 1
            time.sleep(0.05)
