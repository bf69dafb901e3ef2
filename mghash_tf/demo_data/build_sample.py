"""Rebuild ``cifar10_demo.npz`` from ../shared/data/cifar10.npz (see README.md here).

    python -m mghash_tf.demo_data.build_sample [--source PATH] [--out PATH]

Seeded: the same source file always gives the same sample, byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from mghash_tf.data import sources as data_sources
from mghash_tf.data import ImageSet, demo_data_path, load_source

TRAIN_PER_CLASS = 1400
TEST_PER_CLASS = 100
SEED = 0
# The source images are JPEG quality 75 with 4:2:0 chroma (shared/data/README.md); re-encoding
# with Pillow's quality-75 tables reproduces them within 0.16 grey levels on average, at ~0.3 KB
# per image (deflate shares the repeated headers) against ~2.4 KB for compressed raw pixels.
JPEG_QUALITY = 75
DEFAULT_SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10.npz"


def select(image_set: ImageSet, *, seed: int = SEED) -> np.ndarray:
    """Row indices: per split and class, a seeded draw in source order (split, class, file)."""
    rng = np.random.default_rng(seed)
    picks = []
    for split, count in ((0, TRAIN_PER_CLASS), (1, TEST_PER_CLASS)):
        for c in range(len(image_set.class_names_fine)):
            members = np.flatnonzero((image_set.split == split) & (image_set.y_fine == c))
            picks.append(np.sort(rng.choice(members, count, replace=False)))
    return np.concatenate(picks)


def build(source: Path, out: Path) -> ImageSet:
    full = load_source(f"npz:{source}", cache_dir=False)
    sample = full.subset(select(full))
    fields = {f: getattr(sample, f) for f in ("x", "y_fine", "y_coarse", "split", "class_names_fine",
                                              "class_names_coarse", "paths")}
    with np.load(source, allow_pickle=False) as npz:
        fields["coarse_of_fine"] = npz["coarse_of_fine"]
        fields["coarse_source"] = npz["coarse_source"]
    data_sources.write_npz(out, fields, jpeg_quality=JPEG_QUALITY)
    return sample


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=demo_data_path())
    args = parser.parse_args(argv)
    sample = build(args.source, args.out)
    reloaded = load_source(f"npz:{args.out}")
    err = np.abs(reloaded.x.astype(np.int16) - sample.x).astype(np.float64)
    print(f"wrote {args.out}: {args.out.stat().st_size:,} bytes, {len(sample)} images "
          f"({int((sample.split == 0).sum())} train, {int((sample.split == 1).sum())} test)")
    print(f"JPEG round trip vs source pixels: mean |diff| {err.mean():.3f}, max {int(err.max())}")
    print(f"sha256 {hashlib.sha256(args.out.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
