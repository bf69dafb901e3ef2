"""Start of the TensorFlow command lines (``mghash_tf``, ``export``, ``demo``): quiet
TensorFlow's own log lines unless ``--verbose`` (:mod:`mghash_tf.core.native_logs`)."""

from __future__ import annotations

from mghash_tf.core import native_logs


def start_tensorflow(verbose: bool) -> None:
    """Set the log switches, then import TensorFlow with descriptor 2 filtered: its oneDNN
    notice is written at import, before its own level applies. Call before anything imports
    TensorFlow; a no-op import when it is already loaded."""
    native_logs.configure(verbose)
    with native_logs.filtered_stderr():
        import tensorflow  # noqa: F401
