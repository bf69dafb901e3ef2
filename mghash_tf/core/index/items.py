"""Per-item metadata kept row-aligned with the codes: names (e.g. photo paths) and extra columns.

The device CLI stores each photo's path as its name and its mtime and size as extra columns, so
an incremental re-index can tell new and changed files from unchanged ones. Extra columns are
1-D: numbers (bool/int/uint/float) or strings. Strings are Python lists, not NumPy ``U`` arrays,
whose fixed width would cost 4 bytes times the longest path for every row.
"""

from __future__ import annotations

import numpy as np

NUMERIC_KINDS = "biuf"


def as_names(names, n: int):
    """Validated list of ``n`` strings, or None."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not hasattr(names, "__len__"):
        raise TypeError(f"`names` must be a list of str. Received: {type(names).__name__}")
    names = list(names)
    if len(names) != n:
        raise ValueError(f"`names` must have one entry per code ({n}). Received: {len(names)}")
    bad = [x for x in names if not isinstance(x, str)]
    if bad:
        raise TypeError(f"Every name must be a str. Received: {bad[0]!r}")
    return [str(x) for x in names]


def as_column(name: str, values, n: int):
    """One validated extra column: a 1-D numeric array or a list of str, of length ``n``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"Extra column names must be non-empty str. Received: {name!r}")
    if isinstance(values, list) and all(isinstance(v, str) for v in values):
        column = values
    else:
        arr = np.asarray(values)
        if arr.dtype.kind == "U":
            column = [str(v) for v in arr.reshape(-1)] if arr.ndim == 1 else None
        elif arr.dtype.kind in NUMERIC_KINDS and arr.ndim == 1:
            column = arr.copy()
        else:
            column = None
        if column is None:
            raise TypeError(
                f"Extra column {name!r} must be 1-D numbers or a list of str. "
                f"Received: dtype={arr.dtype}, shape={arr.shape}"
            )
    if len(column) != n:
        raise ValueError(
            f"Extra column {name!r} must have one entry per code ({n}). Received: {len(column)}"
        )
    return column


def as_extras(extras, n: int) -> dict:
    if extras is None:
        return {}
    if not isinstance(extras, dict):
        raise TypeError(f"`extras` must be a dict of columns. Received: {type(extras).__name__}")
    return {name: as_column(name, values, n) for name, values in extras.items()}


class ItemData:
    """Names and extra columns for the rows of an index (all optional, fixed by the first add)."""

    def __init__(self):
        self.names = None
        self.extras = {}
        self._schema = None

    def append(self, names, extras, n: int, had_rows: bool) -> None:
        names, extras = as_names(names, n), as_extras(extras, n)
        schema = (names is not None, _column_schema(extras))
        if self._schema is not None and had_rows and schema != self._schema:
            raise ValueError(
                "Every add must give the same metadata as the first: names "
                f"{'given' if self._schema[0] else 'absent'}, extras {self._schema[1]}. "
                f"Received: names {'given' if schema[0] else 'absent'}, extras {schema[1]}"
            )
        if not had_rows:
            self._schema = schema
            self.names = [] if names is not None else None
            self.extras = {k: ([] if isinstance(v, list) else v[:0]) for k, v in extras.items()}
        if names is not None:
            self.names.extend(names)
        for key, col in extras.items():
            old = self.extras[key]
            self.extras[key] = old + col if isinstance(old, list) else np.concatenate([old, col])

    def keep(self, mask: np.ndarray) -> None:
        """Keep the rows where ``mask`` is True (order preserved)."""
        rows = np.flatnonzero(mask)
        if self.names is not None:
            self.names = [self.names[i] for i in rows]
        self.extras = {
            k: [v[i] for i in rows] if isinstance(v, list) else v[rows]
            for k, v in self.extras.items()
        }

    def restore(self, names, extras) -> None:
        """Set loaded metadata (already validated by the file reader)."""
        self.names, self.extras = names, dict(extras)
        self._schema = (names is not None, _column_schema(self.extras))


def _column_schema(extras: dict) -> tuple:
    return tuple(sorted(
        (k, "str" if isinstance(v, list) else v.dtype.kind) for k, v in extras.items()
    ))
