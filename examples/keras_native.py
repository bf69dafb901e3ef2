"""The Keras-native route, no wrapper: build, compile with HashingLoss, fit, save, reload
(no custom_objects), export to TFLite, index and query on the device side.

    python examples/keras_native.py [--data npz:PATH] [--epochs 3] [--out runs/keras_native]

Default data: the embedded CIFAR-10 sample. ``--max-images`` keeps a smoke run short.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mghash_tf  # noqa: E402,F401  (registers the layers and the loss with Keras)
from mghash_tf.data import demo_data_path, load_source  # noqa: E402
from mghash_tf.model import build_model  # noqa: E402
from mghash_tf.model.hashing_loss import HashingLoss  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=f"npz:{demo_data_path()}")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "keras_native")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    data = load_source(args.data, image_size=32)
    train, test = data.subset(np.flatnonzero(data.split == 0)), data.subset(np.flatnonzero(data.split == 1))
    if args.max_images:  # a smoke run: the first images of each split
        train = train.subset(np.arange(min(args.max_images, len(train))))
        test = test.subset(np.arange(min(max(args.max_images // 4, 5), len(test))))

    # 1. Build and compile like any Keras model. Labels are (N, 2): fine, coarse.
    model = build_model(backbone="small_cnn", layout="mg64", image_size=32)
    model.compile(optimizer=keras.optimizers.AdamW(2e-3),
                  loss=HashingLoss("mg64", {"fine": len(train.class_names_fine),
                                            "coarse": len(train.class_names_coarse)}, loss="ortho"))
    # 2. Fit on arrays (a tf.data.Dataset of (images, labels) works the same).
    model.fit(train.x.astype("float32"), train.labels, batch_size=64, epochs=args.epochs, verbose=2)
    # 3. Save, and reload with plain Keras: importing mghash_tf registered every custom class.
    path = args.out / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    codes = np.sign(reloaded.predict(test.x.astype("float32"), verbose=0))
    assert np.array_equal(codes, np.sign(model.predict(test.x.astype("float32"), verbose=0)))

    # 4. Export int8 TFLite (the description travels inside the file).
    from export.convert import convert_model

    tflite = convert_model(reloaded, args.out / "tflite", variants="int8", representative=train.x[:128])["int8"]
    # 5. The device side: LiteRT encoder + NumPy index, no TensorFlow needed there.
    from mghash_tf.core.encoder import TFLiteEncoder
    from mghash_tf.core.index import HammingIndex

    encoder = TFLiteEncoder(tflite)
    index = HammingIndex(encoder.layout.bits, encoder.layout)
    index.add(encoder.encode(train.x))
    _, ids = index.search(encoder.encode(test.x[:5]), 5)
    hits = [[train.class_names_fine[train.y_fine[i]] for i in row] for row in ids]
    for q, row in zip(test.y_fine[:5], hits):
        print(f"query {test.class_names_fine[q]}: {', '.join(row)}")
    return {"model": path, "tflite": tflite, "hits": hits}


if __name__ == "__main__":
    main()
