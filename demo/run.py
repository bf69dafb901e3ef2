"""The README's main job on the embedded CIFAR-10 sample, offline:
train -> export int8 TFLite -> index a photo folder on the device side -> query it.

The database is the sample's training split written out as a photo folder
(``photos/<coarse>/<fine>/NNNN.png``); the queries are its test split. mAP is reported per
granularity, for the Keras model and for the int8 model searched through the NumPy index.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEMO_EPOCHS = 7
REPRESENTATIVE_IMAGES = 256


def demo_config(epochs: int | None = None):
    """The fast recipe (README "Training recipes") on the embedded sample. Flip TTA is off so
    the Keras and the int8-through-the-index numbers measure the same encoding (and the demo
    stays inside its five minutes); ``edge_demo index --tta`` is the option on a device."""
    from mghash_tf.training.config import TrainConfig

    # 13,300 training images: half the recipe's batch (and so its rate) gives 51 steps an epoch.
    return TrainConfig.preset("fast", data="demo", layout="mg64", frozen_epochs=epochs or DEMO_EPOCHS,
                              batch_size=256, learning_rate=0.4, tta=False, val_database_size=2000, seed=1)


def write_photo_folder(image_set, root: Path) -> list:
    """Images as ``root/<coarse>/<fine>/<i>.png``; returns the relative paths in order."""
    from PIL import Image

    names = []
    for i, (img, f, c) in enumerate(zip(image_set.x, image_set.y_fine, image_set.y_coarse)):
        rel = Path(image_set.class_names_coarse[c]) / image_set.class_names_fine[f] / f"{i:05d}.png"
        (root / rel.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel)
        names.append(rel.as_posix())
    return names


def index_map(index, query_codes, query_labels, name_labels: dict, search_args: dict) -> float:
    """mAP@all from the index's own ranking (ties by insertion order, as in metrics)."""
    from mghash_tf.core.rank_stats import ap_stable

    _, ids = index.search(query_codes, len(index), **search_args)
    db_labels = np.array([name_labels[n] for n in index.names_of(ids.ravel())]).reshape(ids.shape)
    relevant = db_labels == query_labels[:, None]
    total = relevant.sum(axis=1)
    ap = ap_stable(relevant, total, len(index), "retrieved")
    return float(np.mean(ap[total > 0]))


def _print_maps(title, scores):
    print(f"{title}: " + ", ".join(f"{k.removeprefix('map_')} {v:.4f}" for k, v in scores.items()))


def run_demo(out_dir, *, epochs: int | None = None, verbose=2) -> dict:
    from edge_demo.photos import index_folder, load_index_for, query_image
    from export.convert import convert_model
    from mghash_tf.core.encoder import TFLiteEncoder
    from mghash_tf.core.granularity import search_args
    from mghash_tf.training.train import load_splits, train

    out = Path(out_dir)
    start = time.perf_counter()
    print(f"[1/4] training fast_cnn (fast recipe), mg64 layout, on the embedded CIFAR-10 sample -> {out}")
    result = train(demo_config(epochs), out / "run", verbose=verbose)
    _print_maps("Keras test mAP@all (query = test, database = train)", result.metrics["test"])

    splits = load_splits(demo_config(epochs))
    print("[2/4] exporting int8 TFLite (representative data from the training split)")
    tflite = convert_model(result.model, out / "tflite", variants="int8",
                           representative=splits.train.x[:REPRESENTATIVE_IMAGES])["int8"]
    print(f"      {tflite} ({Path(tflite).stat().st_size / 1024:.0f} KiB)")

    print("[3/4] indexing the training split as a photo folder with the int8 model (no TensorFlow)")
    photos = out / "photos"
    names = write_photo_folder(splits.train, photos)
    encoder = TFLiteEncoder(tflite)
    report = index_folder(photos, encoder, out / "photos.mgh")
    print(f"      {report['total']} photos indexed ({report['images_per_s']:.0f} images/s), "
          f"{len(report['skipped'])} skipped")

    print("[4/4] querying the index with the test split")
    index = load_index_for(out / "photos.mgh", encoder)
    q_codes = encoder.encode(splits.test.x)
    fine_of = dict(zip(names, splits.train.y_fine))
    coarse_of = dict(zip(names, splits.train.y_coarse))
    int8_maps = {
        "fine": index_map(index, q_codes, splits.test.y_fine, fine_of, search_args(encoder.layout, "fine")),
        "coarse": index_map(index, q_codes, splits.test.y_coarse, coarse_of,
                            search_args(encoder.layout, "coarse")),
    }
    _print_maps("int8 TFLite test mAP@all through the NumPy index", int8_maps)
    hits = query_image(splits.test.x[0], index, encoder, 5, "fine")
    print(f"      query test image 0 ({splits.test.class_names_fine[splits.test.y_fine[0]]}): "
          + ", ".join(f"{name} (d={d})" for name, d in hits))
    print(f"done in {time.perf_counter() - start:.0f} s")
    return {"keras": result.metrics["test"], "int8_index": int8_maps}
