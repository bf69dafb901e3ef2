"""The description embedded in a .tflite file: write -> read round trip, the repacked model still
runs identically, and damaged or foreign files are refused with ValueError."""

import os

import numpy as np
import pytest

from mghash_tf.core import description as reader
from export import convert, metadata
from mghash_tf.core import files

DESCRIPTION = {
    "format": reader.FORMAT, "format_version": reader.FORMAT_VERSION, "variant": "fp32",
    "layout": {"segments": [{"name": "coarse", "bits": 8, "stages": ["low", "mid", "high"],
                             "label_level": "coarse", "weight": 1.0},
                            {"name": "fine", "bits": 24, "stages": ["high"], "label_level": "fine",
                             "weight": 0.5}]},
    "bits": 32, "input_size": 16, "input_dtype": "uint8", "output_dtype": "int8",
    "input_quantization": {"scale": 1.0, "zero_point": 0},
    "output_quantization": {"scale": 0.0078125, "zero_point": -3},
    "fingerprint": "0123456789abcdef", "library_version": "0.1.0", "note": "café ✓",
}


@pytest.fixture(scope="module")
def raw_tflite(tmp_path_factory):
    """A small valid TFLite model without our description (converter output as is)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="tanh"),
                              keras.layers.Dense(300)])
    saved = convert.export_saved_model(model, tmp_path_factory.mktemp("sm") / "saved")
    return convert.convert_saved_model(saved, "fp32")


@pytest.fixture(scope="module")
def described(raw_tflite):
    return metadata.embed_description(raw_tflite, DESCRIPTION)


def _run(tflite: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_round_trip(described, tmp_path):
    assert reader.read_description(described) == DESCRIPTION
    path = files.write_bytes_atomic(tmp_path / "m.tflite", described)
    assert reader.read_description(path) == DESCRIPTION
    assert reader.read_description(str(path)) == DESCRIPTION
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]  # no temp file left behind


def test_repacked_model_runs_identically(raw_tflite, described):
    x = np.random.default_rng(0).normal(size=(1, 6)).astype(np.float32)
    np.testing.assert_array_equal(_run(described, x), _run(raw_tflite, x))


def test_buffers_stay_16_byte_aligned(described):
    r = reader._Reader(described, "t")
    root = r.indirect(0)
    first, count = r.vector(r.field(root, reader._MODEL_BUFFERS), 4)
    starts = [reader._buffer_region(r, root, i)[0] for i in range(count)
              if r.field(r.indirect(first + 4 * i), reader._BUFFER_DATA) is not None]
    assert len(starts) >= 3 and all(s % 16 == 0 for s in starts), starts


def test_embedding_again_replaces_the_description(described):
    second = metadata.embed_description(described, {**DESCRIPTION, "variant": "int8"})
    assert reader.read_description(second)["variant"] == "int8"
    r = reader._Reader(second, "t")
    assert list(reader.metadata_names(r, r.indirect(0))).count(reader.METADATA_NAME) == 1
    assert len(second) == len(described)  # the old buffer was reused, not orphaned


def test_refuses_random_bytes_and_foreign_types():
    with pytest.raises(ValueError, match="not a TFLite model"):
        reader.read_description(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ValueError, match="not a TFLite model"):
        reader.read_description(b"")
    with pytest.raises(TypeError, match="path or bytes"):
        reader.read_description(12)
    with pytest.raises(ValueError, match="identifier"):
        metadata.embed_description(b"PK\x03\x04 not a model", DESCRIPTION)


def test_refuses_tflite_without_description(raw_tflite):
    with pytest.raises(ValueError, match="no 'mghash_description' metadata"):
        reader.read_description(raw_tflite)


@pytest.mark.parametrize("keep", [0, 3, 8, 64, 0.5, -100, -1])
def test_refuses_truncated_files(described, keep):
    end = int(len(described) * keep) if isinstance(keep, float) else keep
    with pytest.raises(ValueError):
        reader.read_description(described[:end])


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def test_refuses_every_bit_flip_in_header_and_metadata(described):
    start, end = reader.locate_description(described)
    positions = list(range(0, 96)) + list(range(start - 64, end))
    for pos in positions:
        for bit in (0, 7):
            with pytest.raises(ValueError):
                reader.read_description(_flip(described, pos, bit))


def test_integrity_catches_flips_in_weights(described):
    start, _ = reader.locate_description(described)
    rng = np.random.default_rng(2)
    for pos in rng.choice(start - 64, size=40, replace=False):
        flipped = _flip(described, int(pos), int(rng.integers(8)))
        with pytest.raises(ValueError):
            reader.read_description(flipped)
    weights_flip = _flip(described, len(described) // 2, 3)
    with pytest.raises(ValueError, match="corrupt or was modified"):
        reader.read_description(weights_flip)
    assert reader.read_description(weights_flip, verify=False) == DESCRIPTION


def test_refuses_newer_format_and_missing_keys(raw_tflite):
    newer = metadata.embed_description(raw_tflite, {**DESCRIPTION, "format_version": 99})
    with pytest.raises(ValueError, match="format_version"):
        reader.read_description(newer)
    partial = {k: v for k, v in DESCRIPTION.items() if k != "layout"}
    with pytest.raises(ValueError, match="layout"):
        reader.read_description(metadata.embed_description(raw_tflite, partial))
    with pytest.raises(ValueError, match="integrity"):
        metadata.embed_description(raw_tflite, {**DESCRIPTION, "integrity": {}})


def test_atomic_write_keeps_old_file_when_replace_fails(tmp_path, monkeypatch, described):
    target = tmp_path / "m.tflite"
    target.write_bytes(b"old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        files.write_bytes_atomic(target, described)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.tflite"]
