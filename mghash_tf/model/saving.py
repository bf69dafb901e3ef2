"""Writing and reading ``.keras`` files: one loader for every command."""

from __future__ import annotations

from pathlib import Path

import keras

from mghash_tf.core.files import atomic_path
from mghash_tf.model import layers  # noqa: F401  (registers the custom layers for loading)


def save_model_atomic(model: keras.Model, path) -> Path:
    """``model.save(path)`` through a temporary file, so a crash never leaves a torn model."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(str(tmp))
    return Path(path)


def load_model(model_path) -> keras.Model:
    """The ``model.keras`` of a training output directory (or that file itself), uncompiled."""
    path = Path(model_path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}: pass a training output directory "
                                "holding model.keras, or the .keras file")
    return keras.saving.load_model(str(path), compile=False)
