"""Keras <-> TFLite parity on real images: which code bits agree, what that does to mAP, and
where the flipped bits sit (a bit flips when |h| is close to 0, so the histogram of |h| from
Keras for flipped bits against all bits shows whether training pushed codes far enough).

Protocol: queries from the test split (split 1), database from the training split (split 0),
each a seeded sample; mAP@all with fine labels on the full code (``map``), and per granularity
as in :mod:`mghash_tf.evaluation.retrieval`. ``map`` is computed with both sides encoded by the same
model; ``map_cross`` queries a Keras-encoded database with TFLite-encoded queries (a device
searching an index built on a server).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mghash_tf.core.description import read_description
from mghash_tf.core.encoder import TFLiteEncoder

logger = logging.getLogger(__name__)

ABS_H_EDGES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.9, 1.0)


def sample_split(image_set, split: int, count: int, seed: int):
    """A seeded sample of ``count`` images of one split (all of them when fewer)."""
    if image_set.split is None or not (image_set.split == split).any():
        raise ValueError(f"The data has no images in split {split} (0 = train, 1 = test); parity "
                         "needs both. Received: split values "
                         f"{None if image_set.split is None else np.unique(image_set.split).tolist()}")
    pool = np.flatnonzero(image_set.split == split)
    rng = np.random.default_rng(seed)
    return image_set.subset(np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False)))


def bit_agreement(reference: np.ndarray, codes: np.ndarray, layout) -> dict:
    """Fraction of bits with the same sign, overall and per segment."""
    same = (reference > 0) == (codes > 0)
    out = {"all": float(same.mean())}
    for segment in layout.segments:
        out[segment.name] = float(same[:, layout.slice(segment.name)].mean())
    return out


def flip_histogram(reference: np.ndarray, codes: np.ndarray, edges=ABS_H_EDGES) -> dict:
    """Counts of |h_keras| per bin, for all bits and for the bits whose sign flipped."""
    magnitude = np.abs(reference).ravel()
    flipped = ((reference > 0) != (codes > 0)).ravel()
    bins = np.asarray(edges, dtype=np.float64)
    all_counts = np.histogram(np.clip(magnitude, 0, 1), bins=bins)[0]
    flip_counts = np.histogram(np.clip(magnitude[flipped], 0, 1), bins=bins)[0]
    return {"edges": list(edges), "all": all_counts.tolist(), "flipped": flip_counts.tolist(),
            "flipped_max_abs_h": float(magnitude[flipped].max()) if flipped.any() else None}


def _granularity_maps(q, db, query, database, layout, has_coarse) -> dict:
    from mghash_tf.evaluation.retrieval import evaluate_codes

    return evaluate_codes(q, db, query.labels, database.labels, layout, has_coarse=has_coarse)


def variant_parity(path, keras_q, keras_db, query, database, layout, *, has_coarse,
                   num_threads=None) -> dict:
    """Parity record of one ``.tflite`` file against the Keras codes of the same images."""
    encoder = TFLiteEncoder(path, num_threads=num_threads)
    q, db = encoder.encode(query.x), encoder.encode(database.x)
    maps = _granularity_maps(q, db, query, database, layout, has_coarse)
    cross = _granularity_maps(q, keras_db, query, database, layout, has_coarse)
    reference, codes = np.concatenate([keras_q, keras_db]), np.concatenate([q, db])
    conversion = encoder.description.get("conversion", {})
    return {
        "variant": encoder.description["variant"],
        "representative_count": conversion.get("representative_count"),
        "file": Path(path).name,
        "bytes": Path(path).stat().st_size,
        "bit_agreement": bit_agreement(reference, codes, layout),
        "map": maps["map_fine"],
        "map_cross": cross["map_fine"],
        "maps": maps,
        "flips": flip_histogram(reference, codes),
    }


def parity_report(model, tflite_paths, image_set, *, n_query=1000, n_db=5000, seed=0,
                  num_threads=None) -> dict:
    """Parity of every ``.tflite`` file in ``tflite_paths`` with the Keras ``model``."""
    from mghash_tf.model import describe, encode, get_layout_of

    info = describe(model)
    layout = get_layout_of(model)
    for path in tflite_paths:
        fingerprint = read_description(path)["fingerprint"]
        if fingerprint != info["fingerprint"]:
            raise ValueError(f"{path} was exported from another model: fingerprint {fingerprint}, "
                             f"the Keras model's is {info['fingerprint']}")
    query = sample_split(image_set, 1, n_query, seed)
    database = sample_split(image_set, 0, n_db, seed + 1)
    keras_q, keras_db = encode(model, query.x), encode(model, database.x)
    keras_maps = _granularity_maps(keras_q, keras_db, query, database, layout, image_set.has_coarse)
    rows = []
    for path in tflite_paths:
        rows.append(variant_parity(path, keras_q, keras_db, query, database, layout,
                                   has_coarse=image_set.has_coarse, num_threads=num_threads))
        logger.info("%s: agreement %.4f, mAP %.4f (Keras %.4f)", rows[-1]["file"],
                    rows[-1]["bit_agreement"]["all"], rows[-1]["map"], keras_maps["map_fine"])
    return {
        "model": {k: info[k] for k in ("backbone", "image_size", "input_size", "bits", "fingerprint",
                                       "params", "layout")},
        "protocol": (f"query = {len(query)} test-split images, database = {len(database)} train-split "
                     f"images (seeded samples, seed {seed}); mAP@all, fine labels, full code; "
                     "bit agreement over query + database codes"),
        "keras": {"map": keras_maps["map_fine"], "maps": keras_maps,
                  "abs_h_histogram": flip_histogram(np.concatenate([keras_q, keras_db]),
                                                    np.concatenate([keras_q, keras_db]))["all"]},
        "variants": rows,
    }
