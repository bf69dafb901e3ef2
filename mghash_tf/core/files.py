"""Atomic file writes: a reader never sees a half-written file, a crash leaves the old one.

A temporary file in the target's folder is written, flushed to disk, given the old file's mode
and renamed over the target (``os.replace`` is atomic on POSIX and Windows); the folder is then
synced so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path, *, suffix: str = ".tmp"):
    """Yields a temporary path next to ``path`` to write; on success it replaces ``path``, on
    any error it is removed and ``path`` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


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
