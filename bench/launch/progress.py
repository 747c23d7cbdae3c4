"""Live progress of a grid in the driver's terminal, from what trials report through Ray
(``tune.report`` of every logged step), never from files polled on disk.

At least every ``every`` seconds, and whenever a running cell changes stage, one compact block:
cells done, running, failed and queued; per running cell its method, seed, stage k/K, step s/S,
loss and its own elapsed time; and an ETA of the training steps left at the measured step rates
(evaluation time not included). Nothing scrolls per step.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class GridProgress:
    """Folds trial reports into status blocks."""

    def __init__(self, total: int, steps_per_cell: dict[str, int], every: float = 30.0) -> None:
        self.total, self.steps_per_cell, self.every = total, steps_per_cell, every
        self.started = time.time()
        self.last_print = 0.0
        self.latest: dict[str, dict[str, Any]] = {}  # run_id -> last report of a running cell
        self.first_seen: dict[str, float] = {}
        self.done = self.failed = 0

    def report(self, run_id: str, result: dict[str, Any]) -> None:
        """A trial's per-step report; prints a block when its stage changed."""
        if "step" not in result:
            return
        previous = self.latest.get(run_id)
        self.first_seen.setdefault(run_id, time.time() - result.get("train_s", 0.0))
        self.latest[run_id] = result
        if previous is None or previous.get("stage") != result.get("stage"):
            self.print_block()

    def finished(self, run_id: str, failed: bool) -> None:
        self.latest.pop(run_id, None)
        self.done += 1
        self.failed += failed
        self.print_block()

    def tick(self) -> None:
        """Called by the driver loop; prints when ``every`` seconds have passed."""
        if time.time() - self.last_print >= self.every:
            self.print_block()

    def eta_s(self) -> float | None:
        rates = [(r["step"] + 1) / max(time.time() - self.first_seen[k], 1e-9) for k, r in self.latest.items()]
        if not rates:
            return None
        left_running = sum(self.steps_per_cell.get(k, 0) - (r["step"] + 1) for k, r in self.latest.items())
        queued = self.total - self.done - len(self.latest)
        mean_cell = sum(self.steps_per_cell.values()) / max(len(self.steps_per_cell), 1)
        return (left_running + queued * mean_cell) / sum(rates)

    def block(self) -> str:
        elapsed = time.time() - self.started
        queued = self.total - self.done - len(self.latest)
        eta = self.eta_s()
        lines = [f"[grid {clock(elapsed)}] {self.done - self.failed}/{self.total} done, {len(self.latest)} running, "
                 f"{self.failed} failed, {queued} queued"
                 + (f"; ETA {clock(eta)} (training steps at measured rates)" if eta is not None else "")]
        for run_id, r in sorted(self.latest.items()):
            lines.append(f"  {r.get('method', '?'):17s} seed {r.get('seed', '?')}  stage {r.get('stage', 0) + 1}/"
                         f"{r.get('stages', '?')}  step {r['step'] + 1}/{self.steps_per_cell.get(run_id, '?')}  "
                         f"loss {r.get('loss', float('nan')):.3f}  {clock(time.time() - self.first_seen[run_id])}"
                         f"  {run_id}")
        return "\n".join(lines)

    def print_block(self) -> None:
        self.last_print = time.time()
        print(self.block(), file=sys.stderr, flush=True)  # looked up now: Ray pickles its callbacks


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"
