"""The device side imports and runs where importing TensorFlow or Keras raises."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCKED = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, Block())
try:
    import tensorflow
except ImportError:
    pass
else:
    raise SystemExit("the import blocker does not work")

import numpy as np
from mghash_tf.core.index import HammingIndex

index = HammingIndex(64, "mg64", fingerprint="m")
index.add(np.random.default_rng(0).standard_normal((2000, 64)), names=[str(i) for i in range(2000)])
q = np.asarray(index.codes[:3])
D, I = index.search(q, 5)
assert (I[:, 0] == [0, 1, 2]).all() and (D[:, 0] == 0).all()
index.search(q, 5, granularity="coarse")
index.cascade(q, 5)
assert (index.search(q, 5, method="mih")[1] == I).all()
index.save(sys.argv[1])
HammingIndex.load(sys.argv[1], expect_fingerprint="m")
loaded = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
assert not loaded, loaded
print("ok")
"""


def test_index_runs_with_tensorflow_and_keras_unimportable(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", BLOCKED, str(tmp_path / "i.mgh")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
