"""A study folder as a shared resource: one grid at a time (a lock), and writable before any
work starts, so a fault says what happened instead of surfacing as a second failure."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bench.files import hold_lock

LOCK = ".grid.lock"


class StudyBusy(RuntimeError):
    """Another grid process holds the study."""


class NotWritable(RuntimeError):
    """The results folder cannot be written; the message names the path."""


def check_writable(study_dir: Path) -> None:
    """Create the study folder and write (then remove) a probe file in it."""
    probe = study_dir / f".write-probe-{os.getpid()}"
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
    except OSError as e:
        raise NotWritable(f"cannot write results under {study_dir}: {e.strerror or e}") from None
    finally:
        probe.unlink(missing_ok=True)


@contextlib.contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """Hold ``<study>/.grid.lock`` for the duration; a second grid on the same study is refused
    at once, naming the holder. (Each run holds its own lock too: ``bench.run.execution``.)"""
    check_writable(study_dir)

    def busy(holder: str) -> StudyBusy:
        return StudyBusy(f"another isobench grid (pid {holder}) is running on {study_dir}; every cell runs "
                         f"once: wait for it to finish, then run this command again")

    with hold_lock(study_dir / LOCK, busy):
        yield
