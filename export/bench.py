"""The model-size benchmark: backbones x code lengths x variants -> bytes, latency, parity, mAP.

Each row converts one model to every variant and measures the file size, single-image latency
(1 and 2 threads), bit agreement with Keras and mAP (query = test split, database = train split,
seeded samples). Models are random-init unless ``trained`` supplies one for that backbone and
code length; ``trained`` in a record is true only for those (trained on the eval data's training
split). The bare backbone (preprocessing + backbone, no attention or hash head) is converted
too, so the heads' share of the latency shows (``head_overhead_pct``).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np

from export import convert, quantize
from export.latency import measure_interleaved
from export.parity import bit_agreement, sample_split

logger = logging.getLogger(__name__)

LAYOUT_FOR_BITS = {16: "plain16", 32: "mg32", 64: "mg64"}
BARE_VARIANTS = ("fp32", "int8")


@dataclasses.dataclass(frozen=True)
class Row:
    backbone: str
    image_size: int
    input_size: int


DEFAULT_ROWS = (Row("small_cnn", 32, 32), Row("fast_cnn", 32, 32), Row("mobilenet_v3_small", 96, 32),
                Row("mobilenet_v2", 96, 32), Row("efficientnet_v2_b0", 96, 32))


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    rows: tuple = DEFAULT_ROWS
    bits: tuple = (16, 32, 64)
    variants: tuple = convert.DEFAULT_VARIANTS
    n_query: int = 200
    n_db: int = 1000
    rep_count: int = 100
    repeats: int = 100
    seed: int = 0


def _bare_backbone(model):
    import keras

    pixels = keras.Input(model.input_shape[1:], name="pixels")
    features = model.get_layer("backbone")(model.get_layer("preprocessing")(pixels))
    return keras.Model(pixels, features[-1], name="bare_backbone")


def add_latency(records: list, files: dict, repeats: int) -> list:
    """Fill the latency fields of ``records`` (``files[i]``: the bytes of ``records[i]``), timing all
    of them interleaved with 1 thread, then with 2."""
    one = measure_interleaved(files, num_threads=1, repeats=repeats)
    two = measure_interleaved(files, num_threads=2, repeats=max(repeats // 2, 5))
    for i, record in enumerate(records):
        record.update({"latency_ms_p50_1t": round(one[i]["p50_ms"], 3),
                       "latency_ms_p90_1t": round(one[i]["p90_ms"], 3),
                       "latency_ms_p50_2t": round(two[i]["p50_ms"], 3)})
    return records


def backbone_params(model) -> int:
    return int(model.get_layer("backbone").count_params())


def bare_backbone_records(model, row: Row, representative, work: Path) -> tuple:
    """Records (without latency) and file bytes of the bare backbone's variants."""
    bare = _bare_backbone(model)
    saved = convert.export_saved_model(bare, work / f"bare_{row.backbone}_{backbone_params(model)}")
    records, files = [], []
    for variant in BARE_VARIANTS:
        tflite = convert.convert_saved_model(saved, variant, representative=representative)
        records.append({"model": "backbone_only", "backbone": row.backbone, "image_size": row.image_size,
                        "input_size": row.input_size, "bits": None, "layout": None, "variant": variant,
                        "params": int(bare.count_params()), "backbone_params": backbone_params(model),
                        "bytes": len(tflite), "bit_agreement": None,
                        "map": None, "trained": False})
        files.append(tflite)
    return records, files


def _map(q, db, query, database) -> float:
    from mghash_tf.core.metrics import mean_average_precision

    return float(mean_average_precision(q, db, query.y_fine, database.y_fine))


def model_records(model, row: Row, settings: BenchSettings, eval_sets, representative, work: Path,
                  *, trained: bool) -> tuple:
    """Records (without latency) and file bytes, one per variant of ``model``."""
    from mghash_tf.core.encoder import TFLiteEncoder
    from mghash_tf.model import describe, encode, get_layout_of

    info, layout = describe(model), get_layout_of(model)
    query, database = eval_sets
    keras_q, keras_db = encode(model, query.x), encode(model, database.x)
    keras_map = _map(keras_q, keras_db, query, database)
    out_dir = work / f"{row.backbone}_{info['bits']}"
    paths = convert.convert_model(model, out_dir, variants=settings.variants, representative=representative)
    records, files = [], []
    for variant, path in paths.items():
        encoder = TFLiteEncoder(path)
        q, db = encoder.encode(query.x), encoder.encode(database.x)
        agreement = bit_agreement(np.concatenate([keras_q, keras_db]), np.concatenate([q, db]), layout)
        records.append({"model": "full", "backbone": row.backbone, "image_size": row.image_size,
                        "input_size": row.input_size, "bits": info["bits"], "layout": layout.to_dict(),
                        "variant": variant, "params": info["params"], "backbone_params": backbone_params(model),
                        "bytes": path.stat().st_size,
                        "bit_agreement": round(agreement["all"], 5), "map": round(_map(q, db, query, database), 5),
                        "map_keras": round(keras_map, 5), "trained": trained,
                        "fingerprint": info["fingerprint"]})
        files.append(path.read_bytes())
        logger.info("%s %d bits %s: %d bytes, agreement %.4f", row.backbone, info["bits"], variant,
                    records[-1]["bytes"], agreement["all"])
    return records, files


def _backbone_key(record: dict) -> tuple:
    # A trained model may predate a change to its backbone's definition: match on size too.
    return record["backbone"], record.get("backbone_params"), record["variant"]


def add_head_overhead(records: list) -> list:
    """``head_overhead_pct``: full-model p50 (1 thread) over its bare backbone's, same variant."""
    bare = {_backbone_key(r): r["latency_ms_p50_1t"] for r in records if r["model"] == "backbone_only"}
    for r in records:
        base = bare.get(_backbone_key(r))
        if r["model"] == "full" and base:
            r["head_overhead_pct"] = round(100.0 * (r["latency_ms_p50_1t"] / base - 1.0), 2)
    return records


def run_bench(image_set, settings: BenchSettings = BenchSettings(), *, trained_models=()) -> list:
    """All records. ``trained_models``: Keras models trained on ``image_set``'s training split;
    each replaces the random-init model of its (backbone, image size, bits)."""
    from mghash_tf.model import describe

    trained = {(describe(m)["backbone"], describe(m)["image_size"], describe(m)["bits"]): m
               for m in trained_models}
    eval_sets = (sample_split(image_set, 1, settings.n_query, settings.seed),
                 sample_split(image_set, 0, settings.n_db, settings.seed + 1))
    records = []
    with tempfile.TemporaryDirectory(prefix="mghash_bench_") as tmp:
        for row in settings.rows:
            records += _row_records(row, settings, image_set, eval_sets, trained, Path(tmp))
    if trained:
        logger.warning("trained models matched no bench row and were skipped: %s", sorted(trained))
    return add_head_overhead(records)


def _row_records(row: Row, settings: BenchSettings, image_set, eval_sets, trained: dict, work: Path) -> list:
    from mghash_tf.model import build_model

    rep = quantize.representative_images_from(image_set, settings.rep_count, row.input_size, seed=settings.seed)
    records, files, bare_done = [], [], set()
    for bits in settings.bits:
        model = trained.pop((row.backbone, row.image_size, bits), None)
        is_trained = model is not None
        if model is None:
            model = build_model(backbone=row.backbone, layout=LAYOUT_FOR_BITS[bits],
                                image_size=row.image_size, input_size=row.input_size)
        r, f = model_records(model, row, settings, eval_sets, rep, work, trained=is_trained)
        records, files = records + r, files + f
        if backbone_params(model) not in bare_done:
            bare_done.add(backbone_params(model))
            r, f = bare_backbone_records(model, row, rep, work)
            records, files = records + r, files + f
    logger.info("%s: timing %d files", row.backbone, len(files))
    return add_latency(records, dict(enumerate(files)), settings.repeats)
