"""The whole core imports and runs where importing TensorFlow or Keras raises."""

import subprocess
import sys
from pathlib import Path

from no_tf import BLOCK_TF, no_tf_env

REPO = Path(__file__).resolve().parents[1]

RUN_CORE = BLOCK_TF + """
import importlib, pkgutil, sys
from pathlib import Path

import numpy as np
from PIL import Image

import mghash_tf.core as core

names = [m.name for m in pkgutil.walk_packages(core.__path__, "mghash_tf.core.")]
for name in names:
    importlib.import_module(name)

from mghash_tf.core import description, files, granularity, images, metrics
from mghash_tf.core.index import HammingIndex
from mghash_tf.core.layout import get_layout

out = Path(sys.argv[1])
layout = get_layout("mg64")
g = granularity.resolve(layout, "coarse")
assert g.slices == (slice(0, 16),) and g.label_level == "coarse"
assert granularity.resolve(layout, "fine").whole_code
codes = np.random.default_rng(0).standard_normal((40, 64))
labels = np.arange(40) % 4
assert 0 <= metrics.mean_average_precision(codes, codes, labels, labels) <= 1
index = HammingIndex(64, layout, fingerprint="m")
index.add(codes)
assert index.search(codes[:2], 3, granularity="segment:fine")[1].shape == (2, 3)
index.save(out / "i.mgh")
Image.fromarray(np.zeros((20, 10, 3), np.uint8)).save(out / "p.png")
assert images.decode_image(out / "p.png", 16).shape == (16, 16, 3)
files.write_bytes_atomic(out / "b.bin", b"ok")
detail = {"dtype": np.float32, "quantization": (0.0, 0)}
text = description.unsealed_text(description.build_description(
    {"bits": 64}, variant="fp32", input_detail=detail, output_detail=detail))
assert '"sha256":"' + description.PLACEHOLDER in text
loaded = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
assert not loaded, loaded
assert all(not m.startswith("mghash_tf.") or m.startswith("mghash_tf.core") for m in sys.modules)
print(len(names))
"""


def test_the_whole_core_imports_and_runs_without_tensorflow(tmp_path):
    out = subprocess.run([sys.executable, "-c", RUN_CORE, str(tmp_path)],
                         env=no_tf_env(tmp_path, REPO), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 15  # every core module was imported
