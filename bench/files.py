"""Files as shared resources: writing so that a reader never sees half of one, and locks that
let one process at a time work on a folder."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def current_umask() -> int:
    """This process's umask (read by setting and restoring it)."""
    bits = os.umask(0)
    os.umask(bits)
    return bits


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename; the temp file never outlives a
    failed write (e.g. a full disk). The file gets the permissions the umask gives a new file
    (mkstemp's 0600 would hide results from the other users of a shared results folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ForeignPath(OSError):
    """A path isobench writes and deletes inside its own folders that is a symbolic link to elsewhere."""


def refuse_links(folder: Path, names: tuple[str, ...]) -> None:
    """Raise ``ForeignPath`` when ``folder`` holds one of ``names`` as a symbolic link: isobench
    writes and deletes inside these, and would otherwise do it in the link's target."""
    for name in names:
        path = folder / name
        if path.is_symlink():
            raise ForeignPath(f"{path} is a symbolic link (to {os.readlink(path)}): isobench writes and deletes inside "
                              f"it and will not do that through a link; remove the link and retry")


def remove_tree(path: Path) -> None:
    """Delete the folder ``path`` and what is in it, never following a symbolic link (a link is
    removed itself, its target left alone)."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


class LockPathError(OSError):
    """A lock path that is not a plain file of isobench's own (a symbolic link, a folder, a hard link)."""


def _open_lock(path: Path):  # noqa: ANN202 - a text file object
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise LockPathError(f"lock {path} is not a plain file (a symbolic link or a folder?): isobench writes its "
                                f"pid there and will not follow it; remove it and retry") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise LockPathError(f"lock {path} is not a plain file of its own (a device, a fifo or a hard link to another "
                            f"file): isobench writes its pid there; remove it and retry")
    return os.fdopen(fd, "r+")


@contextlib.contextmanager
def hold_lock(path: Path, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold the OS lock on ``path`` (released even when the process is killed) for the body,
    with this process's pid in it; when another process holds it, raise ``busy(its pid)`` at once.
    The lock file is opened without following a symbolic link and must be a plain file with no
    other name (``LockPathError`` otherwise), so a planted link never empties a file elsewhere."""
    with _open_lock(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise busy(f.read().strip() or "?") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
