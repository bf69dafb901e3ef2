"""Atomic file writes: a reader never sees a half-written file, a crash leaves the old one.

A temporary file in the target's folder is written, flushed to disk, given the old file's mode
and renamed over the target (``os.replace`` is atomic on POSIX and Windows); the folder is then
synced so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, stale temporary files are left alone
    fcntl = None

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path, *, suffix: str = ".tmp"):
    """Yields a temporary path next to ``path`` to write; on success it replaces ``path``, on
    any error it is removed and ``path`` stays as it was.

    The writer holds an advisory lock on its temporary file while it works, so a temporary file
    nobody holds belongs to a writer that died (``kill -9``, power cut): the next save of the
    same target removes those (POSIX; elsewhere they stay)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    remove_stale_temps(path.parent, prefix, suffix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    if not _try_lock(fd):  # no advisory locks (Windows): an open handle would block the rename
        os.close(fd)
        fd = None
    try:
        yield Path(tmp)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:  # the lock is held until here, i.e. until this writer is done or dead
            os.close(fd)
    fsync_dir(path.parent)


def _try_lock(fd: int) -> bool:
    """A non-blocking exclusive advisory lock; False when another holds it (or no fcntl)."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def remove_stale_temps(folder: Path, prefix: str, suffix: str) -> list:
    """Remove ``folder/prefix*suffix`` files that no live writer holds; returns their paths."""
    if fcntl is None:
        return []
    removed = []
    for candidate in Path(folder).glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        try:
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _try_lock(fd):
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
        finally:
            os.close(fd)
    if removed:
        logger.info("removed %d stale temporary file(s) of %s*", len(removed), Path(folder) / prefix)
    return removed


@contextlib.contextmanager
def atomic_open(path):
    """A binary file object whose content replaces ``path`` atomically once the block ends."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_bytes_atomic(path, data: bytes) -> Path:
    with atomic_open(path) as f:
        f.write(data)
    logger.info("wrote %s (%d bytes)", path, len(data))
    return Path(path)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable. Not possible on Windows, where os.replace is durable enough."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
