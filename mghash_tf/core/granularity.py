"""What a ``granularity`` is, for every user: evaluation, the index, the CLIs, the server and the
benchmarks. One vocabulary and one resolver from a name (or segment weights) to bit slices and a
label level. NumPy only.

Vocabulary, for a code layout (:mod:`mghash_tf.core.layout`):

- ``fine`` (also ``full``; None): the **whole code**, judged by fine labels. The coarse prefix
  helps fine retrieval too, since items of one fine class share their coarse class. This holds
  even when a segment is itself named ``fine`` (``mg64``): that segment alone is
  ``segment:fine``.
- ``coarse``: the segments whose ``label_level`` is coarse (the prefix of ``mg64``), judged by
  coarse labels. Evaluation falls back to the whole code when the layout has none; search refuses.
- ``segment:NAME`` (evaluation's key: ``seg_NAME``), or the bare segment name when it is none of
  the words above: one segment alone, judged by its own label level.
- ``scales:low=1,mid=0.5`` or a ``{segment: weight}`` dict: the weighted sum of those segments'
  Hamming distances (keys of a weights dict always name segments).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mghash_tf.core.layout import LABEL_LEVELS, CodeLayout

LABEL_COLUMN = {level: i for i, level in enumerate(LABEL_LEVELS)}
WHOLE_CODE = ("fine", "full")
SEGMENT_PREFIX = "segment:"
EVAL_SEGMENT_PREFIX = "seg_"
SCALES_PREFIX = "scales:"


@dataclasses.dataclass(frozen=True)
class Granularity:
    """``slices``: the bit ranges read, in layout order; ``segments``: their segment names
    (empty for the whole code)."""

    name: str
    slices: tuple
    label_level: str
    segments: tuple = ()

    @property
    def label_column(self) -> int:
        return LABEL_COLUMN[self.label_level]

    @property
    def whole_code(self) -> bool:
        return not self.segments

    def bit_indices(self) -> np.ndarray:
        return np.concatenate([np.arange(s.start, s.stop) for s in self.slices])


def whole_code(layout: CodeLayout, name: str = "fine", label_level: str = "fine") -> Granularity:
    return Granularity(name, (slice(0, layout.bits),), label_level)


def coarse_segments(layout: CodeLayout) -> tuple:
    return tuple(s.name for s in layout.segments if s.label_level == "coarse")


def _segments(layout: CodeLayout, name: str, names, level: str) -> Granularity:
    return Granularity(name, tuple(layout.slice(n) for n in names), level, tuple(names))


def resolve(layout: CodeLayout, spec=None, *, coarse_fallback: bool = False) -> Granularity:
    """The :class:`Granularity` named by ``spec`` (see the module docstring; not ``scales:``)."""
    if spec is None or spec in WHOLE_CODE:
        return whole_code(layout, spec or "fine")
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"`granularity` must be a non-empty str. Received: granularity={spec!r}")
    if spec == "coarse":
        names = coarse_segments(layout)
        if names:
            return _segments(layout, spec, names, "coarse")
        if coarse_fallback:
            return whole_code(layout, spec, "coarse")
        raise ValueError(f"granularity 'coarse' needs a segment with label_level='coarse'; this "
                         f"model's segments are {list(layout.names)}. Received: granularity='coarse'")
    name = segment_name(spec)
    if name not in layout.names:
        raise ValueError(f"Unknown segment: `granularity` must be fine, full, coarse, "
                         f"{SCALES_PREFIX}NAME=W,..., {SEGMENT_PREFIX}NAME or a segment name from "
                         f"{list(layout.names)}. Received: granularity={spec!r}")
    return _segments(layout, spec, (name,), layout.segment(name).label_level)


def segment_name(spec: str) -> str:
    for prefix in (SEGMENT_PREFIX, EVAL_SEGMENT_PREFIX):
        if spec.startswith(prefix):
            return spec[len(prefix):]
    return spec


def evaluation_granularities(layout: CodeLayout, *, has_coarse: bool = True) -> dict:
    """``{name: Granularity}`` that evaluation reports: ``fine``, ``coarse`` (when the data has
    coarse labels) and ``seg_<name>`` per segment when there are several."""
    out = {"fine": whole_code(layout)}
    if has_coarse:
        out["coarse"] = resolve(layout, "coarse", coarse_fallback=True)
    if len(layout.segments) > 1:
        for s in layout.segments:
            out[EVAL_SEGMENT_PREFIX + s.name] = resolve(layout, EVAL_SEGMENT_PREFIX + s.name)
    return out


def check_weights(layout: CodeLayout, weights) -> dict:
    """``{segment: float weight}`` with weight-0 segments dropped; the rule in the error."""
    if not isinstance(weights, dict) or not weights:
        raise TypeError(
            f"`weights` must be a non-empty dict {{segment: weight}}. Received: weights={weights!r}"
        )
    out = {}
    for name, w in weights.items():
        if not isinstance(w, (int, float, np.integer, np.floating)) or isinstance(w, bool) or (
            not math.isfinite(w) or w < 0
        ):
            raise ValueError(f"Segment weights must be finite numbers >= 0. Received: {name!r}={w!r}")
        if not isinstance(name, str):
            raise TypeError(f"`weights` keys must be segment names. Received: {name!r}")
        layout.slice(name)  # raises for an unknown segment
        if w > 0:
            out[name] = float(w)
    if not out:
        raise ValueError(f"At least one segment weight must be > 0. Received: weights={weights!r}")
    return out


def parse_scales(layout: CodeLayout, spec: str) -> dict:
    """``"scales:low=1,mid=0.5"`` -> ``{"low": 1.0, "mid": 0.5}``, every pair checked."""
    weights = {}
    for part in spec[len(SCALES_PREFIX):].split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            w = float(value) if sep else math.nan
        except ValueError:
            w = math.nan
        if name not in layout.names or name in weights or not (math.isfinite(w) and w >= 0):
            raise ValueError(f"`scales:` takes distinct segment=weight pairs, segments from "
                             f"{list(layout.names)}, weights finite and >= 0. Received: {part!r} "
                             f"in granularity={spec!r}")
        weights[name] = w
    if not any(weights.values()):
        raise ValueError(f"At least one `scales:` weight must be > 0. Received: granularity={spec!r}")
    return weights


def search_args(layout: CodeLayout, spec) -> dict:
    """``{"granularity": ..., "weights": ...}`` for ``HammingIndex.search`` from a CLI/API spec,
    checked before any work: segment names (one, or a list for several coarse segments), None
    for the whole code, or the ``scales:`` weights."""
    if isinstance(spec, str) and spec.startswith(SCALES_PREFIX):
        return {"granularity": None, "weights": parse_scales(layout, spec)}
    g = resolve(layout, spec)
    if g.whole_code:
        return {"granularity": None, "weights": None}
    # Part of the code: distance ties are ordered by the whole code (``HammingIndex.search``'s
    # ``ties="code"``), so a coarse query returns its class nearest first.
    if len(g.segments) > 1:
        return {"granularity": list(g.segments), "weights": None, "ties": "code"}
    name = g.segments[0]
    # A segment named like a vocabulary word (mg64's ``fine``) must stay a segment for the index.
    return {"granularity": SEGMENT_PREFIX + name if name in WHOLE_CODE else name, "weights": None,
            "ties": "code"}
