import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir():
    return SHARED


@pytest.fixture(scope="session")
def mobilenet_weights(tmp_path_factory):
    """A weights file for MobileNetV2 (random values: the tests that take it are about the plumbing)."""
    import keras

    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_random.weights.h5"
    keras.utils.set_random_seed(0)
    keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None).save_weights(str(path))
    return str(path)
