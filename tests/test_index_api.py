"""HammingIndex API: inputs, ids, metadata, validation messages, memory."""

import sys

import numpy as np
import pytest

from mghash_tf.core.index import HammingIndex, pack_bits


def test_real_pm1_binary_and_packed_inputs_are_the_same_codes():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((20, 16))
    forms = [real, np.sign(real), (real > 0).astype(np.uint8), real > 0, pack_bits(real)]
    found = []
    for form in forms:
        index = HammingIndex(16)
        index.add(form)
        found.append(index.search(form[:3], 4))
    for D, I in found[1:]:
        np.testing.assert_array_equal(D, found[0][0])
        np.testing.assert_array_equal(I, found[0][1])


def test_default_ids_continue_after_the_largest_id():
    index = HammingIndex(8)
    index.add(np.ones((2, 8)))
    index.add(np.ones((1, 8)), ids=[10])
    index.remove([0])
    index.add(np.ones((2, 8)))
    np.testing.assert_array_equal(index.ids, [1, 10, 11, 12])
    assert len(index) == index.ntotal == 4 and index.next_id == 13


def test_remove_returns_count_and_ignores_unknown_ids():
    index = HammingIndex(8)
    index.add(np.eye(8), names=[f"img{i}" for i in range(8)], extras={"size": np.arange(8) * 10})
    assert index.remove(np.array([3, 5, 99])) == 2
    assert index.names == ["img0", "img1", "img2", "img4", "img6", "img7"]
    np.testing.assert_array_equal(index.extras["size"], [0, 10, 20, 40, 60, 70])
    assert index.names_of([4, -1, 3]) == ["img4", None, None]


def test_metadata_must_match_the_first_add():
    index = HammingIndex(8)
    index.add(np.eye(8), names=list("abcdefgh"), extras={"mtime": np.zeros(8), "tag": ["x"] * 8})
    with pytest.raises(ValueError, match="same metadata"):
        index.add(np.eye(8), names=list("abcdefgh"))
    with pytest.raises(ValueError, match="one entry per code"):
        index.add(np.eye(8), names=["a"], extras={"mtime": np.zeros(8), "tag": ["x"] * 8})
    with pytest.raises(TypeError, match="1-D numbers or a list of str"):
        index.add(np.eye(8), names=list("abcdefgh"), extras={"mtime": np.zeros((8, 2)), "tag": 1})
    assert len(index) == 8  # failed adds change nothing


@pytest.mark.parametrize("bad, error, message", [
    (np.ones(8), ValueError, "2-D"),
    (np.ones((2, 9)), ValueError, "num_bits=8 columns"),
    (np.full((2, 8), np.nan), ValueError, "NaN"),
    (np.array([["a"] * 8]), TypeError, "numeric"),
    (np.full((1, 1), 1 << 20, dtype=np.uint64), ValueError, "beyond num_bits"),
])
def test_bad_codes_are_refused_with_the_rule(bad, error, message):
    index = HammingIndex(8)
    with pytest.raises(error, match=message):
        index.add(bad)


def test_bad_arguments_are_refused_with_the_value():
    index = HammingIndex(16, {"segments": [{"name": "c", "bits": 8}, {"name": "f", "bits": 8}]})
    index.add(np.eye(16))
    with pytest.raises(ValueError, match="multiple of 8. Received: num_bits=12"):
        HammingIndex(12)
    with pytest.raises(ValueError, match="exactly `num_bits`=32"):
        HammingIndex(32, "mg64")
    with pytest.raises(ValueError, match="`k` must be an int >= 1. Received: k=0"):
        index.search(np.eye(16), 0)
    with pytest.raises(ValueError, match="Unknown segment"):
        index.search(np.eye(16), 1, granularity="nope")
    with pytest.raises(ValueError, match="prefix `granularity` must be in"):
        index.search(np.eye(16), 1, granularity=17)
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        index.search(np.eye(16), 1, weights={"c": -1})
    with pytest.raises(ValueError, match="At least one segment weight"):
        index.search(np.eye(16), 1, weights={"c": 0})
    with pytest.raises(ValueError, match="`method` must be one of"):
        index.search(np.eye(16), 1, method="fast")
    with pytest.raises(ValueError, match="duplicate id 3"):
        index.add(np.eye(16)[:2], ids=[3, 200])
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
        index.add(np.eye(16)[:1], ids=[-5])
    with pytest.raises(ValueError, match="`shortlist` must be an int >= 4"):
        index.cascade(np.eye(16), 4, shortlist=2)
    with pytest.raises(ValueError, match="`radius` must be an int >= 0"):
        index.range_search(np.eye(16), -1)


def test_memory_is_16_bytes_per_64_bit_item():
    index = HammingIndex(64)
    index.add(np.random.default_rng(0).standard_normal((10000, 64)))
    assert index.nbytes / len(index) == 16  # 8 bytes of code + 8 bytes of id


def test_read_only_views():
    index = HammingIndex(8)
    index.add(np.eye(8))
    with pytest.raises(ValueError):
        index.ids[0] = 5
    with pytest.raises(ValueError):
        index.codes[0, 0] = 5


def test_missing_faiss_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        HammingIndex(8).to_faiss()
