"""Device CLI: a tiny photo folder with bad files mixed in, incremental re-indexing, queries at
every granularity, wrong-model and wrong-TTA refusal, the result grid, and a run where TensorFlow
cannot load."""

import io
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_demo import grid, photos
from edge_demo.cli import main
from mghash_tf.core.encoder import TFLiteEncoder
from mghash_tf.core import granularity
from mghash_tf.core.index import HammingIndex
from mghash_tf.core.layout import get_layout
from no_tf import no_tf_env

SIZE = 16
REPO = Path(__file__).resolve().parents[1]
GOOD = ["cats/a.png", "cats/b.jpg", "cats/cmyk.jpg", "dogs/c.png", "dogs/gray.png",
        "dogs/rgba.png", "dogs/deep16.png", "dogs/sub/d.bmp"]
BAD = ["bad/truncated.jpg", "bad/empty.jpg", "bad/text.jpg", "bad/bomb.png"]


def _noise(seed, size=40):
    """Random 4 x 4 colour blocks: unlike pixel noise, distinct blocks give distinct codes even
    through an untrained model."""
    blocks = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, size // 4, axis=0), size // 4, axis=1)


def _jpeg_bytes(array, mode="RGB"):
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png():
    """A valid PNG header claiming 30000 x 30000 pixels (900 M > Pillow's limit) and no pixels."""
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def make_photos(root: Path):
    for name in GOOD + BAD:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise(1)).save(root / "cats/a.png")
    (root / "cats/b.jpg").write_bytes(_jpeg_bytes(_noise(2)))
    (root / "cats/cmyk.jpg").write_bytes(_jpeg_bytes(_noise(3), "CMYK"))
    Image.fromarray(_noise(4)).save(root / "dogs/c.png")
    Image.fromarray(_noise(5)[..., 0]).save(root / "dogs/gray.png")
    rgba = np.concatenate([_noise(6), _noise(7)[..., :1]], axis=2)
    Image.fromarray(rgba, "RGBA").save(root / "dogs/rgba.png")
    deep = np.random.default_rng(8).integers(0, 65536, (40, 40), dtype=np.uint16)
    Image.fromarray(deep).save(root / "dogs/deep16.png")
    Image.fromarray(_noise(9)).save(root / "dogs/sub/d.bmp")
    (root / "bad/truncated.jpg").write_bytes(_jpeg_bytes(_noise(10, 64))[:600])
    (root / "bad/empty.jpg").write_bytes(b"")
    (root / "bad/text.jpg").write_text("not a picture\n")
    (root / "bad/bomb.png").write_bytes(_bomb_png())
    (root / "notes.txt").write_text("ignored: not an image suffix\n")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from export import convert
    from mghash_tf.model import build_model, encode

    model = build_model(backbone="small_cnn", layout="mg32", image_size=SIZE)
    sample = np.stack([np.asarray(Image.fromarray(_noise(s)).resize((SIZE, SIZE))) for s in range(32)])
    # An untrained head gives |h| ~ 0.005, where tanh is linear, so the codes are the projection
    # itself: centring and scaling each bit on the sample makes the photos' codes differ in
    # about half their bits instead of all sharing the signs of the biases.
    h = encode(model, sample)
    mean, std = h.mean(axis=0), h.std(axis=0) + 1e-12
    start = 0
    for dense in model.get_layer("hash_head").projections:
        kernel, bias = dense.get_weights()
        cols = slice(start, start + kernel.shape[1])
        dense.set_weights([kernel / std[cols], (bias - mean[cols]) / std[cols]])
        start = cols.stop
    return convert.convert_model(model, tmp_path_factory.mktemp("model"), variants="fp32")["fp32"]


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "photos"
    make_photos(root)
    return root


@pytest.fixture
def encode_counter(monkeypatch):
    """Counts the images every TFLiteEncoder encodes in this test."""
    counts = []
    original = TFLiteEncoder.encode

    def counting(self, images, **kwargs):
        counts.append(len(images))
        return original(self, images, **kwargs)

    monkeypatch.setattr(TFLiteEncoder, "encode", counting)
    return counts


def _index(library, model, out, capsys):
    assert main(["index", str(library), "--model", str(model), "--out", str(out)]) == 0
    return capsys.readouterr()


def test_index_skips_bad_files_and_keeps_good_ones(library, model, tmp_path, capsys, encode_counter):
    out = tmp_path / "photos.mgh"
    captured = _index(library, model, out, capsys)
    for name in BAD:
        assert f"skipped {name}:" in captured.out
    assert "skipped bad/empty.jpg: empty file" in captured.out
    assert "DecompressionBomb" in captured.out
    assert "added 8, updated 0, removed 0, unchanged 0, skipped 4, ignored 1" in captured.out
    assert "\r" not in captured.err and "/12" not in captured.err  # no bar: stderr is no terminal
    index = HammingIndex.load(out)
    assert sorted(index.names) == sorted(GOOD) and sum(encode_counter) == len(GOOD)
    st = (library / "cats/a.png").stat()
    row = index.names.index("cats/a.png")
    assert (index.extras["size"][row], index.extras["mtime_ns"][row]) == (st.st_size, st.st_mtime_ns)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_index_shows_a_progress_bar_on_a_terminal_only(library, model, tmp_path, monkeypatch, capsys):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["index", str(library), "--model", str(model), "--out", str(tmp_path / "a.mgh")]) == 0
    total = len(GOOD) + len(BAD)
    bar = terminal.getvalue()
    assert bar.startswith("\r[") and bar.endswith(f"] {total}/{total} " + bar.rsplit(" ", 2)[1] + " files/s\n")
    assert "added 8" in capsys.readouterr().out  # the summary stays on stdout
    terminal.seek(0), terminal.truncate()
    assert main(["index", str(library), "--model", str(model), "--out", str(tmp_path / "b.mgh"),
                 "--no-progress"]) == 0
    assert terminal.getvalue() == ""


def test_reindex_encodes_only_new_and_changed_and_drops_deleted(library, model, tmp_path, capsys,
                                                                encode_counter):
    out = tmp_path / "photos.mgh"
    _index(library, model, out, capsys)
    first = HammingIndex.load(out)
    encode_counter.clear()
    Image.fromarray(_noise(20)).save(library / "dogs/new.png")
    Image.fromarray(_noise(21)).save(library / "cats/a.png")  # changed: new pixels, new size/mtime
    (library / "dogs/c.png").unlink()
    captured = _index(library, model, out, capsys)
    # 4 bad files are retried too (they were never indexed), so 2 images reach the encoder.
    assert "added 1, updated 1, removed 1, unchanged 6, skipped 4" in captured.out
    assert sum(encode_counter) == 2
    second = HammingIndex.load(out)
    assert sorted(second.names) == sorted(set(GOOD) - {"dogs/c.png"} | {"dogs/new.png"})
    unchanged = [n for n in first.names if n not in ("cats/a.png", "dogs/c.png")]
    for name in unchanged:  # untouched rows keep their id and code
        i, j = first.names.index(name), second.names.index(name)
        assert first.ids[i] == second.ids[j]
        np.testing.assert_array_equal(first.codes[i], second.codes[j])
    encode_counter.clear()
    mtime = out.stat().st_mtime_ns
    assert "added 0, updated 0, removed 0, unchanged 8" in _index(library, model, out, capsys).out
    assert sum(encode_counter) == 0 and out.stat().st_mtime_ns == mtime  # nothing to write


def test_index_from_another_model_is_rebuilt_and_foreign_out_is_refused(library, model, tmp_path, capsys):
    out = tmp_path / "photos.mgh"
    enc = TFLiteEncoder(model)
    HammingIndex(enc.bits, enc.layout, fingerprint="another-model/fp32").save(out)
    assert "(rebuilt: new model)" in _index(library, model, out, capsys).out
    assert HammingIndex.load(out).fingerprint == photos.index_fingerprint(enc.description)
    foreign = tmp_path / "holiday.jpg"
    foreign.write_bytes(_jpeg_bytes(_noise(1)))
    assert main(["index", str(library), "--model", str(model), "--out", str(foreign)]) == 2
    assert "not a readable index" in capsys.readouterr().err
    assert foreign.read_bytes() == _jpeg_bytes(_noise(1))  # the user's file is untouched


def _query(*args):
    return main(["query", *map(str, args)])


def test_tta_index_holds_tta_codes_and_refuses_the_other_setting(library, model, tmp_path, capsys,
                                                                  encode_counter):
    out = tmp_path / "photos.mgh"
    assert main(["index", str(library), "--model", str(model), "--out", str(out), "--tta"]) == 0
    assert "8 photos (flip TTA); added 8" in capsys.readouterr().out
    enc = TFLiteEncoder(model)
    index = HammingIndex.load(out)
    assert index.fingerprint == photos.index_fingerprint(enc.description) + "/tta"
    assert photos.index_tta(index) and sum(encode_counter) == len(GOOD)
    for name in ("cats/a.png", "dogs/sub/d.bmp"):
        image = photos.prepare_query(library / name, SIZE)[None]
        np.testing.assert_array_equal(index.codes[index.names.index(name)],
                                      enc.encode_bits(image, tta=True)[0])
    before, encode_counter[:] = out.read_bytes(), []
    Image.fromarray(_noise(20)).save(library / "dogs/new.png")  # work a plain run would do
    assert main(["index", str(library), "--model", str(model), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "`tta` must match the setting the index" in captured.err
    assert "(tta=True)" in captured.err and "Received: tta=False" in captured.err
    assert "Pass --tta" in captured.err
    assert out.read_bytes() == before and sum(encode_counter) == 0  # refused before any work
    assert main(["index", str(library), "--model", str(model), "--out", str(out), "--tta"]) == 0
    assert "added 1, updated 0, removed 0, unchanged 8" in capsys.readouterr().out
    assert _query(library / "cats/a.png", "--index", out, "--model", model, "--k", 2) == 2
    assert "Received: tta=False" in capsys.readouterr().err
    assert _query(library / "cats/a.png", "--index", out, "--model", model, "--k", 2, "--tta") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 results of 9 photos (granularity fine, tta)"
    assert lines[1].split() == ["1", "0", "cats/a.png"]


def test_plain_index_refuses_a_tta_reindex_and_tta_query(library, model, tmp_path, capsys):
    out = tmp_path / "photos.mgh"
    _index(library, model, out, capsys)
    assert not photos.index_tta(HammingIndex.load(out))  # no suffix: plain, as every older file
    before = out.read_bytes()
    assert main(["index", str(library), "--model", str(model), "--out", str(out), "--tta"]) == 2
    err = capsys.readouterr().err
    assert "(tta=False)" in err and "Received: tta=True" in err and "Drop --tta" in err
    assert out.read_bytes() == before
    assert _query(library / "cats/a.png", "--index", out, "--model", model, "--tta") == 2
    assert "Received: tta=True" in capsys.readouterr().err
    enc = TFLiteEncoder(model)
    index = photos.load_index_for(out, enc)
    with pytest.raises(ValueError, match="Received: tta=True"):
        photos.query_image(library / "cats/a.png", index, enc, 3, tta=True)


def test_query_finds_the_same_image_first_at_distance_zero(library, model, tmp_path, capsys):
    out = tmp_path / "photos.mgh"
    _index(library, model, out, capsys)
    enc = TFLiteEncoder(model)
    index = photos.load_index_for(out, enc)
    for name in GOOD:
        results = photos.query_image(library / name, index, enc, k=len(GOOD))
        # The test images are distinct enough that no other photo shares the query's code.
        assert results[0] == (name, 0) and all(d > 0 for _, d in results[1:])
        assert [d for _, d in results] == sorted(d for _, d in results)
    assert _query(library / "cats/b.jpg", "--index", out, "--model", model, "--k", 3) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"3 results of {len(GOOD)} photos (granularity fine)"
    assert lines[1].split() == ["1", "0", "cats/b.jpg"] and len(lines) == 5
    assert lines[4].startswith("decode ") and "encode " in lines[4] and "search " in lines[4]


def test_query_granularities_match_a_brute_force_reference(library, model, tmp_path, capsys):
    out = tmp_path / "photos.mgh"
    _index(library, model, out, capsys)
    enc = TFLiteEncoder(model)
    index = photos.load_index_for(out, enc)
    bits = np.stack([(enc.encode(photos.prepare_query(library / n, SIZE)[None])[0] > 0) for n in index.names])
    q = bits[index.names.index("dogs/c.png")]
    coarse = enc.layout.slice("coarse")
    cases = {"fine": np.sum(bits != q, axis=1),
             "coarse": np.sum(bits[:, coarse] != q[coarse], axis=1),
             "scales:coarse=2,fine=0.5": 2.0 * np.sum(bits[:, coarse] != q[coarse], axis=1)
             + 0.5 * np.sum(bits[:, coarse.stop:] != q[coarse.stop:], axis=1)}
    for spec, expected in cases.items():
        results = dict(photos.query_image(library / "dogs/c.png", index, enc, len(GOOD), spec))
        assert results == dict(zip(index.names, expected.tolist())), spec
    # A shortlist holding every item makes the cascade an exact full-code search.
    cascade = photos.query_image(library / "dogs/c.png", index, enc, 3, cascade=True, shortlist=8)
    assert [d for _, d in cascade] == sorted(cases["fine"].tolist())[:3]
    assert cascade[0] == ("dogs/c.png", 0)
    assert _query(library / "dogs/c.png", "--index", out, "--model", model, "--granularity",
                  "scales:coarse=1,fine=0.5", "--k", 8) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:9]]
    fine_part = np.sum(bits[:, coarse.stop:] != q[coarse.stop:], axis=1)
    expected = dict(zip(index.names, (cases["coarse"] + 0.5 * fine_part).tolist()))
    assert {name: float(d) for _, d, name in rows} == pytest.approx(expected, abs=0.01)


def test_granularity_args_each_form():
    mg = get_layout("mg64")
    assert granularity.search_args(mg, None) == {"granularity": None, "weights": None}
    assert granularity.search_args(mg, "fine") == {"granularity": None, "weights": None}
    assert granularity.search_args(mg, "full") == {"granularity": None, "weights": None}
    assert granularity.search_args(mg, "coarse") == {"granularity": "coarse", "weights": None, "ties": "code"}
    assert granularity.search_args(mg, "segment:fine") == {"granularity": "segment:fine", "weights": None, "ties": "code"}
    scales = get_layout("scales")
    assert granularity.search_args(scales, "mid") == {"granularity": "mid", "weights": None, "ties": "code"}
    assert granularity.search_args(scales, "scales:low=1,mid=0.5") == {
        "granularity": None, "weights": {"low": 1.0, "mid": 0.5}}
    two_coarse = get_layout({"segments": [{"name": "c1", "bits": 8, "label_level": "coarse"},
                                          {"name": "c2", "bits": 8, "label_level": "coarse"},
                                          {"name": "f", "bits": 16}]})
    assert granularity.search_args(two_coarse, "coarse") == {"granularity": ["c1", "c2"], "weights": None, "ties": "code"}


@pytest.mark.parametrize("layout, spec, message", [
    ("plain64", "coarse", "label_level='coarse'"),
    ("mg64", "medium", "Received: granularity='medium'"),
    ("mg64", "segment:nope", "segment:nope"),
    ("scales", "scales:low=1,bogus=2", "'bogus=2'"),
    ("scales", "scales:low=-1", "'low=-1'"),
    ("scales", "scales:low=x", "'low=x'"),
    ("scales", "scales:low", "'low'"),
    ("scales", "scales:low=1,low=2", "'low=2'"),
    ("scales", "scales:low=0,mid=0", "must be > 0"),
    ("scales", "scales:low=inf", "'low=inf'"),
    ("mg64", "", "non-empty"),
])
def test_granularity_args_errors(layout, spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        granularity.search_args(get_layout(layout), spec)


def test_query_errors_are_clean(library, model, tmp_path, capsys):
    out = tmp_path / "photos.mgh"
    _index(library, model, out, capsys)
    enc = TFLiteEncoder(model)
    HammingIndex(enc.bits, enc.layout, fingerprint="another-model/fp32").save(tmp_path / "other.mgh")
    cases = [(["--index", tmp_path / "other.mgh"], "built by another model"),
             (["--index", out, "--granularity", "medium"], "granularity='medium'"),
             (["--index", out, "--cascade", "--granularity", "coarse"], "--cascade"),
             (["--index", out, "--k", 0], "--k must be >= 1"),
             (["--index", out, "--grid", tmp_path / "g.png"], "--grid needs --root")]
    for extra, message in cases:
        assert _query(library / "cats/a.png", "--model", model, *extra) == 2
        assert message in capsys.readouterr().err, message
    assert _query(library / "bad/text.jpg", "--model", model, "--index", out) == 2
    assert "Cannot read the query image" in capsys.readouterr().err


def test_grid_png_has_the_expected_size_and_frames(library, model, tmp_path, capsys):
    out = tmp_path / "photos.mgh"
    _index(library, model, out, capsys)
    png = tmp_path / "grid.png"
    assert _query(library / "dogs/c.png", "--index", out, "--model", model, "--k", 7,
                  "--grid", png, "--root", library, "--thumb", 32) == 0
    # 8 tiles (query + 7) in rows of 6: 2 rows; tile = 32 + 2*4 wide, 32 + 2*4 + 16 tall.
    assert grid.grid_size(8, 32, 6) == (6 * 40, 2 * 56)
    with Image.open(png) as img:
        assert img.size == (240, 112) and img.mode == "RGB"
        pixels = np.asarray(img)
    assert "grid: " in capsys.readouterr().out
    # Tile 1 is the query itself (distance 0, folder dogs): a green frame at its top-left corner.
    assert tuple(pixels[1, 40 + 1]) == grid.COLOURS[True]
    assert tuple(pixels[1, 1]) == grid.BACKGROUND  # the query tile has no frame
    enc = TFLiteEncoder(model)
    results = photos.query_image(library / "dogs/c.png", photos.load_index_for(out, enc), enc, 7)
    for rank, (name, _) in enumerate(results, 1):
        x, y = (rank % 6) * 40, (rank // 6) * 56
        # Green only for the query's own folder: dogs/sub/d.bmp is in another folder (red).
        assert tuple(pixels[y + 1, x + 1]) == grid.COLOURS[name.rsplit("/", 1)[0] == "dogs"], name




def test_cli_runs_where_tensorflow_cannot_be_imported(library, model, tmp_path):
    env = no_tf_env(tmp_path, REPO)
    out = tmp_path / "photos.mgh"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "edge_demo", *map(str, args)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    probe = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert probe.returncode != 0 and "blocked" in probe.stderr
    indexed = run("index", library, "--model", model, "--out", out, "--no-progress")
    assert indexed.returncode == 0, indexed.stderr[-2000:]
    queried = run("query", library / "cats/a.png", "--index", out, "--model", model, "--k", 3,
                  "--granularity", "coarse", "--grid", tmp_path / "g.png", "--root", library)
    assert queried.returncode == 0, queried.stderr[-2000:]
    assert "3 results of 8 photos (granularity coarse)" in queried.stdout
    assert (tmp_path / "g.png").is_file()


def test_moved_folder_keeps_its_index(library, model, tmp_path, capsys, encode_counter):
    out = tmp_path / "photos.mgh"
    _index(library, model, out, capsys)
    moved = tmp_path / "moved"
    shutil.copytree(library, moved)  # copytree keeps mtimes (copy2), so nothing is re-encoded
    encode_counter.clear()
    assert "unchanged 8" in _index(moved, model, out, capsys).out
    assert sum(encode_counter) == 0


def test_links_leaving_the_folder_are_skipped_and_reported(library, model, tmp_path, capsys):
    """The server never serves a path outside the photo folder, so indexing skips such links
    (they would come back as results that cannot be shown); links inside the folder are kept."""
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(_noise(30)).save(outside)
    (library / "dogs" / "away.png").symlink_to(outside)
    (library / "dogs" / "again.png").symlink_to(library / "cats" / "a.png")
    out = tmp_path / "photos.mgh"
    captured = _index(library, model, out, capsys)
    assert "skipped dogs/away.png: a link to" in captured.out and "outside the photo folder" in captured.out
    names = HammingIndex.load(out).names
    assert "dogs/again.png" in names and "dogs/away.png" not in names
