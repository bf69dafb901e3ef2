"""The index behind ``edge_demo serve``: one immutable snapshot per request, reloaded when
``edge_demo index`` replaces the file.

``index`` writes the file atomically (rename), so the server checks the file's identity (inode,
size, mtime) on each request and loads the new index when it changed. Each request takes one
snapshot (index plus its id lookup) and uses only that, so a swap mid-request cannot mix two
indexes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edge_demo import photos

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One loaded index and the lookups derived from it; never mutated after creation."""

    index: object
    key: tuple
    row_of_id: dict = field(repr=False)


class IndexHolder:
    """The current index snapshot, reloaded when the file on disk changes.

    ``current()`` stats the file (cheap) and returns the loaded snapshot while the file's
    identity is unchanged, without locking. When it changed, one request loads the new file
    under a lock (others that saw the change wait for that load instead of repeating it) and
    swaps the reference; requests already holding the old snapshot finish with it. A file that
    fails to load (half-copied by hand, another model's index) leaves the previous snapshot
    serving and is logged once per identity.
    """

    def __init__(self, path, encoder):
        self.path, self.encoder = Path(path), encoder
        self._lock = threading.Lock()
        self._bad_key = None
        self._snapshot = self._load(self._file_key())
        if self._snapshot.index.names is None:
            raise ValueError(f"{self.path} stores no photo names; build it with "
                             "`python -m edge_demo index`")

    def _file_key(self) -> tuple:
        st = self.path.stat()
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self, key) -> Snapshot:
        index = photos.load_index_for(self.path, self.encoder)
        rows = {int(i): r for r, i in enumerate(index.ids)}
        logger.info("loaded %s: %d items", self.path, len(index))
        return Snapshot(index, key, rows)

    def current(self) -> Snapshot:
        snap = self._snapshot
        try:
            key = self._file_key()
        except OSError:  # mid-replace or deleted: keep serving what we have
            return snap
        if key == snap.key or key == self._bad_key:
            return snap
        with self._lock:
            snap = self._snapshot
            if key == snap.key or key == self._bad_key:
                return snap
            try:
                snap = self._load(key)
            except (OSError, ValueError) as e:
                self._bad_key = key
                logger.warning("keeping the previous index: cannot load %s: %s", self.path, e)
                return self._snapshot
            if snap.index.names is None:
                self._bad_key = key
                logger.warning("keeping the previous index: %s stores no names", self.path)
                return self._snapshot
            self._snapshot = snap
            return snap
