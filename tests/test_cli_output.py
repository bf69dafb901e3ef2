"""What a user sees in a terminal or a log: the command lines keep TensorFlow's, absl's and
LiteRT's own log lines out unless ``--verbose`` (or the user's TF_CPP_MIN_LOG_LEVEL) asks for
them, and write no progress-bar escape codes into a pipe."""

import io
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mghash_tf.core import native_logs
from test_edge_cli import REPO, make_photos, model  # noqa: F401
from test_train import toy_set

NOISE = ("port.cc", "oneDNN", "absl", "XNNPACK", "cpu_feature_guard")
ESCAPES = ("\x1b[", "\r", "\b")


def _run(args, *, level=None):
    """``python -m ARGS`` with stdout and stderr to pipes, TF_CPP_MIN_LOG_LEVEL unset (the
    test suite sets it) unless ``level`` is given."""
    env = {k: v for k, v in os.environ.items() if k != native_logs.ENV}
    if level is not None:
        env[native_logs.ENV] = str(level)
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _noise(text: str) -> list:
    return [line for line in text.splitlines() if any(word in line for word in NOISE)]


def test_edge_index_output_is_clean_unless_verbose(tmp_path, model):  # noqa: F811
    make_photos(tmp_path / "photos")
    base = ["edge_demo", "index", tmp_path / "photos", "--model", model]
    quiet = _run([*base, "--out", tmp_path / "a.mgh"])
    assert quiet.returncode == 0, quiet.stderr
    assert "8 photos; added 8" in quiet.stdout and "skipped bad/empty.jpg: empty file" in quiet.stdout
    assert _noise(quiet.stdout + quiet.stderr) == [] and quiet.stderr == ""
    assert not any(e in quiet.stdout + quiet.stderr for e in ESCAPES)  # no progress bar in a pipe
    verbose = _run([*base, "--out", tmp_path / "b.mgh", "--verbose"])
    assert verbose.returncode == 0 and "INFO: Created TensorFlow Lite XNNPACK delegate" in verbose.stderr
    chosen = _run([*base, "--out", tmp_path / "c.mgh"], level=0)  # the user's own setting wins
    assert "XNNPACK" in chosen.stderr


def test_tensorflow_cli_hides_the_import_notices_unless_verbose(tmp_path):
    args = ["mghash_tf", "evaluate", "--model", tmp_path / "none", "--data", "demo", "--out", tmp_path]
    quiet = _run(args)
    assert quiet.returncode == 2 and quiet.stderr.startswith("error: No model file at")
    assert _noise(quiet.stderr) == []
    loud = _run(args + ["--verbose"])
    assert loud.returncode == 2 and "oneDNN custom operations are on" in loud.stderr
    assert any(re.match(r"I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] ", line) for line in loud.stderr.splitlines())


def test_train_writes_one_line_per_epoch_to_a_pipe(tmp_path):
    data = toy_set()
    np.savez(tmp_path / "toy.npz", x=data.x, y_fine=data.y_fine, y_coarse=data.y_coarse, split=data.split)
    result = _run(["mghash_tf", "train", "--data", f"npz:{tmp_path / 'toy.npz'}", "--out", tmp_path / "run",
                   "--image-size", "16", "--layout", "mg32", "--frozen-epochs", "2", "--batch-size", "16",
                   "--val-fraction", "0.2", "--val-database-size", "32"])
    assert result.returncode == 0, result.stderr
    assert not any(e in result.stdout for e in ESCAPES), result.stdout[:300]
    epochs = [line for line in result.stdout.splitlines() if re.match(r"\d+/\d+ - .* - loss: ", line)]
    assert len(epochs) == 2 and "Epoch 1/2" in result.stdout and "Epoch 2/2" in result.stdout
    assert "validation: fine mAP" in result.stdout
    assert _noise(result.stdout + result.stderr) == []


def _write_native(lines):
    os.write(2, b"".join(line + b"\n" for line in lines))


LINES = [b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
         b"I0000 00:00:1796231466.974427    6470 port.cc:153] oneDNN custom operations are on.",
         b"W0000 00:00:1796231580.589341    7229 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.",
         b"E0000 00:00:1796231580.589341    7229 loader.cc:12] a real error",
         b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
         b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32",
         b"Traceback (most recent call last): anything else is kept"]


@pytest.mark.parametrize("level, kept", [
    (0, LINES),
    (1, [LINES[2], LINES[3], LINES[6]]),
    (2, [LINES[3], LINES[6]]),
    (3, [LINES[6]]),
])
def test_filtered_stderr_drops_only_records_below_the_level(level, kept, monkeypatch, capfd):
    monkeypatch.setenv(native_logs.ENV, str(level))
    with native_logs.filtered_stderr():
        _write_native(LINES)
    assert capfd.readouterr().err.encode().splitlines() == kept


def test_configure_respects_the_users_setting(monkeypatch):
    monkeypatch.delenv(native_logs.ENV, raising=False)
    native_logs.configure(verbose=True)
    assert native_logs.ENV not in os.environ and native_logs.min_level() == 0
    native_logs.configure(verbose=False)
    assert os.environ[native_logs.ENV] == "2"
    monkeypatch.setenv(native_logs.ENV, "0")
    native_logs.configure(verbose=False)
    assert native_logs.min_level() == 0
    monkeypatch.setenv(native_logs.ENV, "not a number")
    assert native_logs.min_level() == 0
    assert logging.getLogger("tensorflow").level == logging.getLogger("absl").level == logging.ERROR
    native_logs.configure(verbose=True)
    assert logging.getLogger("tensorflow").level == logging.getLogger("absl").level == logging.NOTSET


def test_fit_verbosity_is_a_bar_on_a_terminal_and_a_line_per_epoch_elsewhere(monkeypatch):
    from mghash_tf.training.train import fit_verbosity

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert fit_verbosity("auto") == 2 and fit_verbosity(1) == 1 and fit_verbosity(0) == 0
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert fit_verbosity("auto") == 1 and fit_verbosity(2) == 2
