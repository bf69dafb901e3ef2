"""Index files: round trip, refusal of damaged/foreign/newer/wrong-model files, atomic saves."""

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mghash_tf.core import files
from mghash_tf.core.index import HammingIndex, fileformat
from mghash_tf.core.layout import get_layout

REPO = Path(__file__).resolve().parents[1]


def small_index(n=300, seed=0):
    rng = np.random.default_rng(seed)
    index = HammingIndex(64, get_layout("mg64"), fingerprint="sha256:abc")
    index.add(rng.standard_normal((n, 64)), ids=rng.permutation(5 * n)[:n],
              names=[f"photos/ü/{i}.jpg" for i in range(n)],
              extras={"mtime": rng.random(n) * 1e9, "size": np.arange(n, dtype=np.int64),
                      "album": [f"a{i % 3}" for i in range(n)]})
    index.remove(index.ids[::7])
    return index


def test_round_trip_gives_the_same_answers(tmp_path):
    index = small_index()
    path = tmp_path / "photos.mgh"
    index.save(path)
    loaded = HammingIndex.load(path, expect_fingerprint="sha256:abc")
    q = np.asarray(index.codes[:5])
    for kwargs in ({}, {"granularity": "coarse"}, {"weights": {"coarse": 1, "fine": 0.5}}):
        for a, b in zip(index.search(q, 9, **kwargs), loaded.search(q, 9, **kwargs)):
            np.testing.assert_array_equal(a, b)
    assert loaded.layout == index.layout and loaded.fingerprint == index.fingerprint
    assert loaded.names == index.names and loaded.next_id == index.next_id
    for key, col in index.extras.items():
        np.testing.assert_array_equal(loaded.extras[key], col)
    loaded.add(np.ones((1, 64)), names=["new.jpg"],
               extras={"mtime": [1.0], "size": [5], "album": ["a0"]})
    # ids continue where the saved index stopped
    assert loaded.ids[-1] == index.next_id


def test_empty_and_plain_indexes_round_trip(tmp_path):
    for index in (HammingIndex(8), HammingIndex(200)):
        index.save(tmp_path / "x.mgh")
        loaded = HammingIndex.load(tmp_path / "x.mgh")
        assert len(loaded) == 0 and loaded.num_bits == index.num_bits and loaded.names is None


def test_wrong_model_foreign_and_future_files_are_refused(tmp_path):
    path = tmp_path / "i.mgh"
    small_index().save(path)
    with pytest.raises(ValueError, match="another model.*'sha256:abc'.*'sha256:new'"):
        HammingIndex.load(path, expect_fingerprint="sha256:new")
    foreign = tmp_path / "photo.jpg"
    foreign.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    with pytest.raises(ValueError, match="not an mghash_tf index file"):
        HammingIndex.load(foreign)
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack("<I", fileformat.FORMAT_VERSION + 1)
    future = tmp_path / "future.mgh"
    future.write_bytes(_with_checksum(data))
    with pytest.raises(ValueError, match="format version 2; this mghash_tf reads version 1"):
        HammingIndex.load(future)


def _with_checksum(data):
    body = bytes(data[:-32])
    return body + hashlib.sha256(body).digest()


def test_truncated_and_bit_flipped_files_raise_only_value_errors(tmp_path):
    path = tmp_path / "i.mgh"
    small_index(60).save(path)
    good = path.read_bytes()
    rng = np.random.default_rng(1)
    bad = tmp_path / "bad.mgh"
    cases = [good[: int(c)] for c in rng.integers(0, len(good), 150)]
    for _ in range(150):
        data = bytearray(good)
        pos = int(rng.integers(0, len(data)))
        data[pos] ^= 1 << int(rng.integers(0, 8))
        cases.append(bytes(data))
    for data in cases:
        bad.write_bytes(data)
        with pytest.raises(ValueError):
            HammingIndex.load(bad)


def _rewrite_header(good, edit):
    """The file with its JSON header edited and a valid checksum (payload bytes unchanged)."""
    hlen = struct.unpack_from("<I", good, 12)[0]
    header = json.loads(good[16 : 16 + hlen])
    edit(header)
    head = json.dumps(header, sort_keys=True).encode()
    body = good[:12] + struct.pack("<I", len(head)) + head
    body += b"\0" * (-len(body) % 8) + good[16 + hlen + (-(16 + hlen) % 8) : -32]
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.update(count=h["count"] + 1), "codes must be uint64"),
    (lambda h: h.update(num_bits=12), "multiple of 8"),
    (lambda h: h.update(layout={"segments": [{"name": "x", "bits": 64, "oops": 1}]}), "oops"),
    (lambda h: h.update(fingerprint=7), "`fingerprint` must be a str"),
    (lambda h: h.update(next_id=0), "below the stored ids"),
    (lambda h: h["sections"][0].update(dtype="|O"), "bad section entry"),
    (lambda h: h["sections"][0].update(shape=[10**12, 1]), "bad section entry"),
    (lambda h: h["sections"][2].update(nbytes=-1), "bad section entry"),
    (lambda h: h["sections"].pop(), "do not match the sections"),
    (lambda h: h.pop("layout"), "invalid: 'layout'"),
    (lambda h: h.update(next_id=2**70), "beyond int64 ids"),
    (lambda h: h.update(deep=[[[[[[[[[1]]]]]]]]]), "nests deeper than 8 levels"),
])
def test_damaged_content_behind_a_valid_checksum_is_refused(tmp_path, edit, message):
    """Checksum-valid but inconsistent files (a bug or a crafted file) still fail cleanly."""
    path = tmp_path / "i.mgh"
    small_index(40).save(path)
    good = path.read_bytes()
    path.write_bytes(_rewrite_header(good, lambda h: None))
    assert len(HammingIndex.load(path)) == len(small_index(40))  # the rewriter itself is exact
    path.write_bytes(_rewrite_header(good, edit))
    with pytest.raises(ValueError, match=message):
        HammingIndex.load(path)


@pytest.mark.parametrize("head, message", [
    (b'{"sections": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests deeper"),
    (b'{"sections": [', "not UTF-8 JSON"),
    (b'{"sections": "\xff\xfe"}', "not UTF-8 JSON"),
])
def test_unreadable_headers_behind_a_valid_checksum_are_refused(tmp_path, head, message):
    body = fileformat.MAGIC + struct.pack("<I", 1) + struct.pack("<I", len(head)) + head
    path = tmp_path / "i.mgh"
    path.write_bytes(body + hashlib.sha256(body).digest())
    with pytest.raises(ValueError, match=message):
        HammingIndex.load(path)


def test_duplicate_ids_in_a_file_are_refused(tmp_path):
    dup = HammingIndex(8)
    dup.add(np.eye(8))
    dup._ids[1] = dup._ids[0]  # duplicate ids can only come from a damaged file
    dup.save(tmp_path / "d.mgh")
    with pytest.raises(ValueError, match="duplicate id 0"):
        HammingIndex.load(tmp_path / "d.mgh")


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "i.mgh"
    small_index(30).save(path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        small_index(50, seed=2).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.mgh"]


SAVER = """
import sys, numpy as np
from mghash_tf.core.index import HammingIndex
index = HammingIndex(64, fingerprint="gen")
index.add(np.random.default_rng(0).standard_normal((400_000, 64)))
print("ready", flush=True)
i = 0
while True:
    index.fingerprint = f"gen{i}"
    index.save(sys.argv[1])
    i += 1
"""


def test_process_killed_during_save_leaves_a_loadable_file(tmp_path):
    path = tmp_path / "i.mgh"
    index = HammingIndex(64, fingerprint="first")
    index.add(np.ones((10, 64)))
    index.save(path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    landed = False
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline().strip()
        assert line == "ready", proc.communicate()[1]
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = HammingIndex.load(path)  # old or new, never torn
        assert loaded.fingerprint == "first" or loaded.fingerprint.startswith("gen")
        assert len(loaded) in (10, 400_000)
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        landed = landed or bool(temps)
        assert len(temps) <= 1  # each save first removes what earlier killed saves left
    # A leftover temporary file shows at least one kill landed in the middle of a save ...
    assert landed
    # ... and the next save cleans up after it.
    index.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.mgh"]


def test_stale_temps_are_removed_but_a_live_writers_is_kept(tmp_path):
    path = tmp_path / "i.mgh"
    stale = tmp_path / ".i.mgh.dead1234.tmp"
    stale.write_bytes(b"x" * 100)
    other = tmp_path / ".other.mgh.dead.tmp"  # another target's: not ours to remove
    other.write_bytes(b"y")
    live = tmp_path / ".i.mgh.live5678.tmp"
    live.write_bytes(b"z")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(live)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        small_index(20).save(path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other.name, live.name])
    finally:
        holder.kill()
        holder.wait()
    small_index(20).save(path)  # its writer is gone: now it is stale
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other.name])
