"""A run's line logs: ``metrics.jsonl`` (one line per logged step) and ``events/<source>.jsonl``
(one file per event source: ``method`` and each observer; each event carries its ``kind``).

Lines are buffered in memory and appended once per stage, so the step path does no disk I/O.
Names of files here are generic: what an event means is said by its ``kind``, not its file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.files import atomic_write

METRICS = "metrics.jsonl"
EVENTS_DIR = "events"


class RunLog:
    """Buffered JSON lines for one run folder (or none: lines are then dropped at flush)."""

    def __init__(self, run_dir: Path | None, listeners: list[Callable[[dict[str, Any]], None]] | None = None) -> None:
        self.run_dir = run_dir
        self.listeners = list(listeners or [])  # e.g. a Ray trial reporting each line to the driver
        self.metrics: list[str] = []
        self.events: dict[str, list[str]] = {}

    def metric(self, record: dict[str, Any]) -> None:
        self.metrics.append(json.dumps(record))
        for listener in self.listeners:
            listener(record)

    def event(self, source: str, events: list[dict[str, Any]]) -> None:
        if events:
            self.events.setdefault(source, []).extend(json.dumps(e) for e in events)

    def flush(self) -> None:
        """Append the buffered lines to their files and empty the buffers."""
        if self.run_dir is not None:
            targets = [(self.run_dir / METRICS, self.metrics)]
            targets += [(self.run_dir / EVENTS_DIR / f"{source}.jsonl", lines) for source, lines in self.events.items()]
            for path, lines in targets:
                if lines:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "a") as f:
                        f.write("\n".join(lines) + "\n")
        self.metrics, self.events = [], {}

    def clear_files(self) -> None:
        """Remove the files of an earlier attempt of this run (a fresh run starts empty)."""
        if self.run_dir is None:
            return
        (self.run_dir / METRICS).unlink(missing_ok=True)
        for path in (self.run_dir / EVENTS_DIR).glob("*.jsonl"):
            path.unlink()

    def files(self) -> list[Path]:
        if self.run_dir is None:
            return []
        return [p for p in [self.run_dir / METRICS, *sorted((self.run_dir / EVENTS_DIR).glob("*.jsonl"))] if p.is_file()]

    def state_dict(self) -> dict[str, Any]:
        """Buffered lines, and the text of every log file on disk now (see ``load_state_dict``)."""
        assert self.run_dir is None or all(p.is_relative_to(self.run_dir) for p in self.files())
        return {"metrics": list(self.metrics), "events": {k: list(v) for k, v in self.events.items()},
                "on_disk_text": {str(p.relative_to(self.run_dir)): p.read_text() for p in self.files()}
                if self.run_dir is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the buffers and rewrite every log file as it was at save time: lines written
        after the save are written again by the resumed run, never twice, and a file a crash
        left shorter or damaged is restored, never extended or cut blindly. A checkpoint of an
        earlier format holds only the files' sizes: a file shorter than its recorded size is
        then refused (``LogBehind``), since its lost lines cannot be restored."""
        self.metrics = list(state["metrics"])
        self.events = {k: list(v) for k, v in state["events"].items()}
        if self.run_dir is None:
            return
        texts = state.get("on_disk_text")
        if texts is None:
            return self._cut_to_sizes(state.get("on_disk", {}))
        for path in self.files():
            if str(path.relative_to(self.run_dir)) not in texts:
                path.unlink()
        for name, text in texts.items():
            atomic_write(self.run_dir / name, text)

    def _cut_to_sizes(self, sizes: dict[str, int]) -> None:
        for path in self.files():
            size = sizes.get(str(path.relative_to(self.run_dir)))
            if size is None:
                path.unlink()
            elif path.stat().st_size < size:
                raise LogBehind(f"{path}: {path.stat().st_size} bytes, shorter than the {size} the checkpoint "
                                f"recorded (lines were lost after it was saved); rerun with --restart")
            else:
                with open(path, "r+b") as f:
                    f.truncate(size)


class LogBehind(RuntimeError):
    """A log file shorter than the checkpoint it belongs to."""
