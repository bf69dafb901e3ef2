"""Code layout: a hash code is an ordered list of named segments.

NumPy/stdlib only: the device side reads layouts from model descriptions and index files.

A segment owns a contiguous run of bits. Its position in the code is fixed by the order of
the segments, so the first segment is a *prefix* of the code: a coarse query that reads only
the ``coarse`` segment of an ``mg64`` code reads bits ``[0, 16)``.
"""

from __future__ import annotations

import dataclasses
import json

STAGES = ("low", "mid", "high")
LABEL_LEVELS = ("fine", "coarse")


@dataclasses.dataclass(frozen=True)
class Segment:
    """One named run of bits.

    Args:
        name: identifier used at query time (``granularity="coarse"``).
        bits: number of bits, a positive multiple of 8 (codes are stored byte-packed).
        stages: backbone stages whose attention-pooled features feed this segment.
        label_level: which labels supervise it during training (``"fine"`` or ``"coarse"``).
        weight: weight of this segment's loss term.
    """

    name: str
    bits: int
    stages: tuple = STAGES
    label_level: str = "fine"
    weight: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"Segment `name` must be an identifier. Received: name={self.name!r}")
        if not isinstance(self.bits, int) or self.bits <= 0 or self.bits % 8:
            raise ValueError(
                f"Segment `bits` must be a positive multiple of 8. Received: bits={self.bits!r}"
            )
        stages = tuple(self.stages)
        object.__setattr__(self, "stages", stages)
        if not stages or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(
                f"Segment `stages` must be distinct values from {STAGES}. Received: stages={stages}"
            )
        if self.label_level not in LABEL_LEVELS:
            raise ValueError(
                f"Segment `label_level` must be one of {LABEL_LEVELS}. "
                f"Received: label_level={self.label_level!r}"
            )
        if not self.weight >= 0:
            raise ValueError(f"Segment `weight` must be >= 0. Received: weight={self.weight!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stages"] = list(self.stages)
        return d


@dataclasses.dataclass(frozen=True)
class CodeLayout:
    """Ordered segments of a code. ``layout.slice("coarse")`` gives its bit range."""

    segments: tuple

    def __post_init__(self):
        segs = tuple(s if isinstance(s, Segment) else Segment(**s) for s in self.segments)
        object.__setattr__(self, "segments", segs)
        if not segs:
            raise ValueError("A CodeLayout needs at least one segment. Received: segments=()")
        names = [s.name for s in segs]
        if len(set(names)) != len(names):
            raise ValueError(f"Segment names must be unique. Received: names={names}")

    @property
    def bits(self) -> int:
        return sum(s.bits for s in self.segments)

    @property
    def names(self) -> tuple:
        return tuple(s.name for s in self.segments)

    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        raise ValueError(f"Unknown segment. Received: name={name!r}; known: {list(self.names)}")

    def slice(self, name: str) -> slice:
        start = 0
        for s in self.segments:
            if s.name == name:
                return slice(start, start + s.bits)
            start += s.bits
        raise ValueError(f"Unknown segment. Received: name={name!r}; known: {list(self.names)}")

    def to_dict(self) -> dict:
        return {"segments": [s.to_dict() for s in self.segments]}

    @classmethod
    def from_dict(cls, d: dict) -> "CodeLayout":
        if not isinstance(d, dict) or "segments" not in d:
            raise ValueError(f"A layout dict needs a 'segments' list. Received: {d!r}")
        return cls(tuple(Segment(**s) for s in d["segments"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CodeLayout":
        return cls.from_dict(json.loads(text))


def _plain(bits: int) -> dict:
    return {"segments": [{"name": "code", "bits": bits}]}


# Presets are plain data so they can be printed, diffed and stored in JSON configs.
PRESETS = {
    "mg64": {
        "segments": [
            {"name": "coarse", "bits": 16, "label_level": "coarse"},
            {"name": "fine", "bits": 48, "label_level": "fine"},
        ]
    },
    "mg32": {
        "segments": [
            {"name": "coarse", "bits": 8, "label_level": "coarse"},
            {"name": "fine", "bits": 24, "label_level": "fine"},
        ]
    },
    "scales": {
        "segments": [
            {"name": "low", "bits": 16, "stages": ["low"]},
            {"name": "mid", "bits": 16, "stages": ["mid"]},
            {"name": "high", "bits": 16, "stages": ["high"]},
            {"name": "fused", "bits": 16},
        ]
    },
    "plain16": _plain(16),
    "plain32": _plain(32),
    "plain64": _plain(64),
}


def get_layout(spec) -> CodeLayout:
    """A layout from a preset name, ``"plainK"``/an int K (one segment), a dict, or a layout."""
    if isinstance(spec, CodeLayout):
        return spec
    if isinstance(spec, dict):
        return CodeLayout.from_dict(spec)
    if isinstance(spec, int) and not isinstance(spec, bool):
        return CodeLayout.from_dict(_plain(spec))
    if isinstance(spec, str):
        if spec in PRESETS:
            return CodeLayout.from_dict(PRESETS[spec])
        if spec.startswith("plain") and spec[5:].isdigit():
            return CodeLayout.from_dict(_plain(int(spec[5:])))
    raise ValueError(
        f"`layout` must be a preset name {sorted(PRESETS)}, 'plainK', an int, or a dict. "
        f"Received: layout={spec!r}"
    )
