"""Data sources (npz / folder / tfds), the npz format, the split and the tf.data pipeline."""

import io
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mghash_tf.data import sources as data_sources
from mghash_tf.data import (ImageSet, build_augmenter, decode_image, demo_data_path, load_source,
                            make_dataset, save_npz, train_val_split)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _solid(path, color, size=(8, 8), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, fmt)
    return path


def _tiny_set(n_per_class=6, classes=3, size=16, seed=0):
    rng = np.random.default_rng(seed)
    n = n_per_class * classes
    y = np.repeat(np.arange(classes), n_per_class)
    return ImageSet(x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y_fine=y, y_coarse=y // 2,
                    split=(np.arange(n) % 3 == 0).astype(np.uint8), class_names_fine=("a", "b", "c")[:classes],
                    class_names_coarse=("low", "high"), paths=tuple(f"img{i}.png" for i in range(n)))


# --- ImageSet ---------------------------------------------------------------------------------

def test_image_set_defaults_labels_and_subset():
    one = ImageSet(x=np.zeros((4, 8, 8, 3), np.uint8), y_fine=np.array([0, 1, 1, 2]))
    assert one.class_names_fine == ("0", "1", "2") and one.class_names_coarse == one.class_names_fine
    assert not one.has_coarse and one.split is None and one.y_coarse.dtype == np.int32
    two = _tiny_set()
    assert two.has_coarse and two.labels.shape == (18, 2) and two.labels.dtype == np.int32
    np.testing.assert_array_equal(two.labels[:, 1], two.y_fine // 2)
    sub = two.subset([17, 0])
    np.testing.assert_array_equal(sub.x, two.x[[17, 0]])
    assert sub.paths == ("img17.png", "img0.png") and list(sub.y_fine) == [2, 0] and list(sub.split) == [0, 1]
    assert len(two.subset(two.y_fine == 1)) == 6 and sub.class_names_fine == ("a", "b", "c")


@pytest.mark.parametrize("kwargs, message", [
    ({"x": np.zeros((2, 8, 8, 3), np.float32)}, "`x` must be a uint8"),
    ({"y_fine": np.array([0])}, "`y_fine` must be integers of shape (2,)"),
    ({"y_fine": np.array([0, -1])}, "`y_fine` must be >= 0"),
    ({"class_names_fine": ("a",)}, "`class_names_fine` must name every label"),
    ({"split": np.array([0, 3])}, "`split` must be None"),
    ({"paths": ("a",)}, "`paths` must have one entry per image"),
])
def test_image_set_rejects_bad_fields(kwargs, message):
    fields = {"x": np.zeros((2, 8, 8, 3), np.uint8), "y_fine": np.array([0, 1])} | kwargs
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ImageSet(**fields)


# --- npz --------------------------------------------------------------------------------------

def test_npz_source_with_all_and_with_missing_optional_keys(tmp_path):
    s = _tiny_set()
    np.savez(tmp_path / "full.npz", x=s.x, y_fine=s.y_fine, y_coarse=s.y_coarse, split=s.split,
             class_names_fine=np.array(s.class_names_fine), class_names_coarse=np.array(s.class_names_coarse))
    full = load_source(f"npz:{tmp_path / 'full.npz'}")
    np.testing.assert_array_equal(full.x, s.x)
    np.testing.assert_array_equal(full.labels, s.labels)
    assert full.has_coarse and full.class_names_coarse == ("low", "high") and list(full.split) == list(s.split)
    np.savez(tmp_path / "bare.npz", x=s.x, y_fine=s.y_fine)
    bare = load_source(str(tmp_path / "bare.npz"))  # a bare .npz path is inferred
    assert bare.split is None and not bare.has_coarse and bare.class_names_fine == ("0", "1", "2")
    np.testing.assert_array_equal(bare.labels[:, 1], s.y_fine)
    assert load_source(f"npz:{tmp_path / 'full.npz'}", image_size=8).x.shape == (18, 8, 8, 3)


def test_npz_source_errors(tmp_path):
    np.savez(tmp_path / "nox.npz", y_fine=np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="must hold `x`"):
        load_source(f"npz:{tmp_path / 'nox.npz'}")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="must be a .npz"):
        load_source(f"npz:{tmp_path / 'text.npz'}")
    np.savez(tmp_path / "obj.npz", x=np.zeros((1, 4, 4, 3), np.uint8), y_fine=np.zeros(1, np.int32),
             class_names_fine=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_source(f"npz:{tmp_path / 'obj.npz'}")
    with pytest.raises(FileNotFoundError):
        load_source(f"npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(ValueError, match="must start with 'npz:'"):
        load_source("hdf5:whatever")
    with pytest.raises(TypeError, match="`spec` must be a str"):
        load_source(3)


def test_save_npz_round_trip_raw_is_exact(tmp_path):
    s = _tiny_set()
    save_npz(s, tmp_path / "s.npz")
    back = load_source(f"npz:{tmp_path / 's.npz'}")
    for field in ("x", "y_fine", "y_coarse", "split"):
        np.testing.assert_array_equal(getattr(back, field), getattr(s, field))
    for field in ("class_names_fine", "class_names_coarse", "paths"):
        assert getattr(back, field) == getattr(s, field)
    one = ImageSet(x=s.x, y_fine=s.y_fine)
    save_npz(one, tmp_path / "one.npz")
    back_one = load_source(f"npz:{tmp_path / 'one.npz'}")
    assert not back_one.has_coarse and back_one.split is None and back_one.paths is None


def test_save_npz_round_trip_jpeg_is_close(tmp_path):
    ramp = np.linspace(0, 255, 16).astype(np.uint8)
    x = np.stack([np.stack([ramp[None, :].repeat(16, 0), ramp[:, None].repeat(16, 1),
                            np.full((16, 16), 40 * i, np.uint8)], -1) for i in range(6)])
    s = ImageSet(x=x, y_fine=np.arange(6) % 2, y_coarse=np.zeros(6, int), split=np.arange(6) % 2)
    save_npz(s, tmp_path / "j.npz", jpeg_quality=90)
    back = load_source(f"npz:{tmp_path / 'j.npz'}")
    np.testing.assert_array_equal(back.labels, s.labels)
    assert back.x.shape == x.shape and np.abs(back.x.astype(int) - x).mean() < 4
    with pytest.raises(ValueError, match="`jpeg_quality` must be an int"):
        save_npz(s, tmp_path / "bad.npz", jpeg_quality=100)


def test_npz_pixel_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(data_sources, "CACHE_MIN_BYTES", 0)
    s = _tiny_set()
    src, cache = tmp_path / "c.npz", tmp_path / "cache"
    np.savez_compressed(src, x=s.x, y_fine=s.y_fine)
    first = load_source(f"npz:{src}", cache_dir=cache)
    entries = list(cache.glob("*.x.npy"))
    assert len(entries) == 1
    np.testing.assert_array_equal(np.load(entries[0], allow_pickle=False), s.x)
    np.testing.assert_array_equal(load_source(f"npz:{src}", cache_dir=cache).x, first.x)
    np.savez_compressed(src, x=s.x[::-1].copy(), y_fine=s.y_fine)  # new size/mtime -> new key
    np.testing.assert_array_equal(load_source(f"npz:{src}", cache_dir=cache).x, s.x[::-1])
    assert len(list(cache.glob("*.x.npy"))) == 1
    load_source(f"npz:{src}", cache_dir=False)
    assert len(list(cache.glob("*"))) == 1


# --- folders ----------------------------------------------------------------------------------

@pytest.fixture
def messy_folder(tmp_path):
    root = tmp_path / "photos"
    _solid(root / "cat" / "red.png", RED, size=(20, 12))
    _solid(root / "cat" / "gray.png", 100, mode="L")
    _solid(root / "cat" / "clear.png", (0, 255, 0, 0), mode="RGBA")
    _solid(root / "cat" / "opaque.png", (0, 0, 255, 255), mode="RGBA")
    _solid(root / "dog" / "cmyk.jpg", (0, 255, 255, 0), mode="CMYK")  # cyan 0 + ... = red
    _solid(root / "dog" / "green.jpg", GREEN, size=(40, 30))
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(root / "dog" / "deep.png")  # 16-bit grey
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.jpg").write_text("not an image")
    (root / "cat" / "noise.png").write_bytes(np.random.default_rng(0).bytes(300))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), BLUE).save(buf, "JPEG")
    (root / "dog" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "dog" / ".hidden.jpg").write_text("ignored")
    return root


def test_folder_flat_decodes_converts_and_reports_skips(messy_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="mghash_tf"):
        s = load_source(f"folder:{messy_folder}", image_size=16)
    assert s.class_names_fine == ("cat", "dog") and not s.has_coarse and s.split is None
    assert s.x.shape == (7, 16, 16, 3) and s.x.dtype == np.uint8
    pixel = {p.split("/")[-1]: s.x[i, 8, 8] for i, p in enumerate(s.paths)}
    assert list(pixel["red.png"]) == list(RED) and list(pixel["gray.png"]) == [100] * 3
    assert list(pixel["clear.png"]) == list(WHITE) and list(pixel["opaque.png"]) == list(BLUE)
    assert list(pixel["deep.png"]) == [128] * 3  # 32896 / 257
    assert np.abs(pixel["cmyk.jpg"].astype(int) - RED).max() <= 8
    assert np.abs(pixel["green.jpg"].astype(int) - GREEN).max() <= 8
    assert list(s.y_fine) == [0, 0, 0, 0, 1, 1, 1]
    reasons = {p.split("/")[-1]: why for p, why in s.skipped}
    assert set(reasons) == {"empty.jpg", "notes.jpg", "noise.png", "cut.jpg"}
    assert reasons["empty.jpg"] == "empty file" and "truncated" in reasons["cut.jpg"].lower()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4 of 11 files" in warnings[0].getMessage()


def test_folder_nested_gives_two_levels(tmp_path):
    root = tmp_path / "nested"
    for coarse, fines in {"vehicle": ["truck", "car"], "animal": ["dog", "cat"]}.items():
        for j, fine in enumerate(fines):
            for k in range(2 + j):
                _solid(root / coarse / fine / f"{k}.png", (10 * k, 0, 0))
    _solid(root / "animal" / "loose.png", RED)
    s = load_source(f"folder:{root}", image_size=8)
    assert s.class_names_coarse == ("animal", "vehicle") and s.class_names_fine == ("cat", "dog", "car", "truck")
    assert s.has_coarse and len(s) == 10
    assert list(s.y_fine) == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3] and list(s.y_coarse) == [0] * 5 + [1] * 5
    assert s.skipped == ((str(root / "animal" / "loose.png"), "not inside a fine-class folder"),)


def test_folder_deeper_than_coarse_fine_is_refused_with_the_paths(tmp_path):
    for fine in ("cat", "dog"):
        _solid(tmp_path / "animal" / fine / "0.png", RED)
        _solid(tmp_path / "other" / fine / "0.png", RED)
    _solid(tmp_path / "animal" / "dog" / "puppies" / "1.png", RED)
    with pytest.raises(ValueError, match=r"deeper than root/<coarse>/<fine>.*puppies.*Accepted layouts"):
        load_source(f"folder:{tmp_path}", image_size=8)


@pytest.mark.parametrize("nested", [False, True])
def test_folder_split_subfolders_become_splits(tmp_path, nested):
    classes = {"animal": ["cat", "dog"], "vehicle": ["car"]}
    counts = {"train": 3, "test": 2, "val": 1}
    for split, n in counts.items():
        for coarse, fines in classes.items():
            for fine in fines:
                folder = tmp_path / split / coarse / fine if nested else tmp_path / split / fine
                for k in range(n):
                    _solid(folder / f"{k}.png", (10 * k, 0, 0))
    s = load_source(f"folder:{tmp_path}", image_size=8)
    assert s.class_names_fine == (("cat", "dog", "car") if nested else ("car", "cat", "dog"))
    assert s.has_coarse == nested and len(s) == 3 * 6
    for split, code in (("train", 0), ("test", 1), ("val", 2)):
        mine = [p for p, c in zip(s.paths, s.split) if c == code]
        assert len(mine) == 3 * counts[split] and all(f"/{split}/" in p for p in mine)
    # labels do not depend on the split: the same class folder gives the same label everywhere
    by_class = {}
    for path, y in zip(s.paths, s.y_fine):
        by_class.setdefault(Path(path).parent.name, set()).add(int(y))
    assert all(len(v) == 1 for v in by_class.values()) and len(by_class) == 3


def test_folder_split_errors(tmp_path):
    _solid(tmp_path / "a" / "train" / "cat" / "0.png", RED)
    _solid(tmp_path / "a" / "train" / "dog" / "0.png", RED)
    _solid(tmp_path / "a" / "cats" / "0.png", RED)
    with pytest.raises(ValueError, match=r"mixes split folders \['train'\] with other folders \['cats'\]"):
        load_source(f"folder:{tmp_path / 'a'}", image_size=8)
    for split in ("train", "val", "validation"):
        for fine in ("cat", "dog"):
            _solid(tmp_path / "b" / split / fine / "0.png", RED)
    with pytest.raises(ValueError, match="two folders for one split"):
        load_source(f"folder:{tmp_path / 'b'}", image_size=8)
    for fine in ("cat", "dog"):
        _solid(tmp_path / "c" / "train" / fine / "0.png", RED)
        _solid(tmp_path / "c" / "test" / "pets" / fine / "0.png", RED)
    _solid(tmp_path / "c" / "test" / "wild" / "fox" / "0.png", RED)
    with pytest.raises(ValueError, match="split folders differ in layout"):
        load_source(f"folder:{tmp_path / 'c'}", image_size=8)


def test_folder_nested_repeated_fine_names_are_qualified(tmp_path):
    for coarse in ("a", "b"):
        for fine in ("x", "other"):
            _solid(tmp_path / coarse / fine / "0.png", RED)
    s = load_source(f"folder:{tmp_path}", image_size=8)
    assert s.class_names_fine == ("a/other", "a/x", "b/other", "b/x")


def test_folder_errors(tmp_path):
    _solid(tmp_path / "one" / "only" / "fine" / "0.png", RED)
    _solid(tmp_path / "one" / "only" / "other" / "0.png", RED)
    with pytest.raises(ValueError, match="one coarse folder"):
        load_source(f"folder:{tmp_path / 'one'}", image_size=8)
    _solid(tmp_path / "single" / "cat" / "0.png", RED)
    (tmp_path / "single" / "dog").mkdir()
    (tmp_path / "single" / "dog" / "bad.jpg").write_text("x")
    with pytest.raises(ValueError, match="at least two class folders"):
        load_source(f"folder:{tmp_path / 'single'}", image_size=8)
    _solid(tmp_path / "mixed" / "flat" / "0.png", RED)
    _solid(tmp_path / "mixed" / "deep" / "sub" / "0.png", RED)
    with pytest.raises(ValueError, match="mixes layouts"):
        load_source(f"folder:{tmp_path / 'mixed'}", image_size=8)
    with pytest.raises(ValueError, match="`image_size` must be a positive int. Received: image_size=None"):
        load_source(f"folder:{tmp_path / 'single'}")
    with pytest.raises(ValueError, match="Received: image_size=-3"):
        load_source(f"folder:{tmp_path / 'single'}", image_size=-3)
    with pytest.raises(FileNotFoundError):
        load_source(f"folder:{tmp_path / 'absent'}", image_size=8)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_folder_skips_decompression_bombs(tmp_path, monkeypatch):
    _solid(tmp_path / "a" / "small.png", RED)
    _solid(tmp_path / "a" / "huge.png", RED, size=(16, 16))
    _solid(tmp_path / "b" / "small.png", BLUE)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 16x16 = 256 > 200 >= 8x8
    s = load_source(f"folder:{tmp_path}", image_size=8)
    assert len(s) == 2 and [p.split("/")[-1] for p, _ in s.skipped] == ["huge.png"]
    assert "DecompressionBomb" in s.skipped[0][1]


def test_decode_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (16, 16), RED)
    img.paste(BLUE, (8, 0, 16, 16))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180 degrees on display
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "o.jpg", 8)
    assert out.shape == (8, 8, 3) and out[4, 1, 2] > 200 and out[4, 6, 0] > 200


# --- tfds -------------------------------------------------------------------------------------

def test_tfds_missing_dataset_fails_fast_and_says_how(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="not prepared.*download=True"):
        load_source("tfds:cifar10", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no dataset named 'no_such_set_xyz'"):
        load_source("tfds:no_such_set_xyz", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 20  # a download attempt offline takes minutes
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")

    class MghashTinyHier(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                "coarse_label": tfds.features.ClassLabel(names=["x", "y"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6, 0), "test": self._generate_examples(3, 100)}

        def _generate_examples(self, n, offset):
            for i in range(n):
                yield i, {"image": np.full((8, 8, 3), offset + i, np.uint8), "label": i % 3,
                          "coarse_label": int(i % 3 == 2)}

    class MghashTinyGrey(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 1)),
                "label": tfds.features.ClassLabel(names=["small", "large"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(4):
                yield i, {"image": np.full((4 + 4 * (i % 2), 6, 1), 10 * i, np.uint8), "label": i % 2}

    data_dir = tmp_path_factory.mktemp("tfds")
    for builder in (MghashTinyHier, MghashTinyGrey):
        builder(data_dir=str(data_dir)).download_and_prepare()
    return str(data_dir)


def test_tfds_source_reads_both_levels_and_splits(tiny_tfds_dir):
    s = load_source("tfds:mghash_tiny_hier", data_dir=tiny_tfds_dir)
    assert len(s) == 9 and list(np.bincount(s.split)) == [6, 3] and s.has_coarse
    assert s.class_names_fine == ("a", "b", "c") and s.class_names_coarse == ("x", "y")
    index = s.x[:, 0, 0, 0].astype(int) - 100 * s.split  # generation index, whatever tfds' order
    np.testing.assert_array_equal(s.y_fine, index % 3)
    np.testing.assert_array_equal(s.y_coarse, (index % 3 == 2).astype(int))
    train = load_source("tfds:mghash_tiny_hier:train", data_dir=tiny_tfds_dir, image_size=4)
    assert train.x.shape == (6, 4, 4, 3) and set(train.split) == {0}


def test_tfds_source_with_mixed_sizes_and_grey_images(tiny_tfds_dir):
    with pytest.raises(ValueError, match="several sizes: pass image_size"):
        load_source("tfds:mghash_tiny_grey", data_dir=tiny_tfds_dir)
    s = load_source("tfds:mghash_tiny_grey", data_dir=tiny_tfds_dir, image_size=5)
    assert s.x.shape == (4, 5, 5, 3) and not s.has_coarse and s.class_names_fine == ("small", "large")
    np.testing.assert_array_equal(s.x[:, 2, 2, 0], s.x[:, 2, 2, 2])  # grey copied to R, G, B
    np.testing.assert_array_equal(s.y_fine, (s.x[:, 2, 2, 0] // 10) % 2)


# --- split ------------------------------------------------------------------------------------

def test_train_val_split_is_seeded_stratified_and_disjoint():
    y = np.repeat(np.arange(4), [10, 20, 5, 1])
    train, val = train_val_split(y, val_fraction=0.2, seed=3)
    assert len(np.intersect1d(train, val)) == 0 and np.array_equal(np.union1d(train, val), np.arange(36))
    assert list(np.bincount(y[val], minlength=4)) == [2, 4, 1, 0]  # round(n * 0.2), 1 kept in train
    again = train_val_split(np.stack([y, y // 2], 1), val_fraction=0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again))
    assert not np.array_equal(train_val_split(y, val_fraction=0.2, seed=4)[1], val)
    s = ImageSet(x=np.zeros((36, 4, 4, 3), np.uint8), y_fine=y)
    np.testing.assert_array_equal(train_val_split(s, val_fraction=0.2, seed=3)[1], val)
    with pytest.raises(ValueError, match="`val_fraction` must be in"):
        train_val_split(y, val_fraction=1.0)


# --- tf.data ----------------------------------------------------------------------------------

def _epoch(ds):
    batches = [(im.numpy(), lab.numpy()) for im, lab in ds]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), batches


def test_make_dataset_shapes_order_and_seeded_shuffle():
    s = _tiny_set(n_per_class=5, classes=2)
    labels = np.stack([np.arange(10), np.arange(10) // 5], 1)  # column 0 doubles as an id
    images, ids, batches = _epoch(make_dataset(s.x, labels, batch_size=4))
    assert [b[0].shape for b in batches] == [(4, 16, 16, 3)] * 2 + [(2, 16, 16, 3)]
    assert images.dtype == np.float32 and ids.dtype == np.int32 and ids.shape == (10, 2)
    np.testing.assert_array_equal(images, s.x.astype(np.float32))
    assert len(_epoch(make_dataset(s.x, labels, batch_size=4, drop_remainder=True))[2]) == 2
    ds = make_dataset(s.x, labels, batch_size=4, shuffle=True, seed=7)
    first, second = _epoch(ds)[1][:, 0], _epoch(ds)[1][:, 0]
    assert sorted(first) == list(range(10)) and not np.array_equal(first, second)
    rebuilt_images, rebuilt_ids, _ = _epoch(make_dataset(s.x, labels, batch_size=4, shuffle=True, seed=7))
    np.testing.assert_array_equal(rebuilt_ids[:, 0], first)
    np.testing.assert_array_equal(rebuilt_images, s.x[first].astype(np.float32))
    with pytest.raises(ValueError, match="`batch_size` must be a positive int. Received: batch_size=0"):
        make_dataset(s.x, labels, batch_size=0)
    with pytest.raises(ValueError, match="`labels` must have shape"):
        make_dataset(s.x, labels[:3], batch_size=2)


def test_augmented_batches_keep_shape_dtype_range_and_labels():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros((4, 16, 16, 3), np.uint8), np.full((4, 16, 16, 3), 255, np.uint8),
                        rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)])
    labels = np.stack([np.arange(16), np.zeros(16, int)], 1)
    ds = make_dataset(x, labels, batch_size=8, augment=True)
    images, ids, _ = _epoch(ds)
    again, _, _ = _epoch(ds)
    assert images.shape == x.shape and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255
    np.testing.assert_array_equal(ids[:, 0], np.arange(16))
    assert np.abs(images[8:] - x[8:]).mean() > 5  # it did transform the noise images
    assert not np.allclose(images, again)  # fresh randomness each epoch
    out = build_augmenter(seed=1)(x.astype(np.float32)).numpy()
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 255


def _half_images(n):
    """Images dark on the left half and white on the right: a 2-px shift keeps the outer
    columns, a mirror swaps them."""
    x = np.zeros((n, 8, 8, 3), np.uint8)
    x[:, :, 4:] = 255
    return x


def _mirrored(images):
    return images[:, :, -1, 0].mean(axis=1) < images[:, :, 0, 0].mean(axis=1)


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    from mghash_tf.data.pipeline import epoch_counter

    x = _half_images(12)
    labels = np.stack([np.arange(12), np.zeros(12, int)], 1)
    epoch = epoch_counter()
    ds = make_dataset(x, labels, batch_size=5, shuffle=True, seed=3, augment=True,
                      augmentation="alternating_flip_translate", epoch=epoch)
    seen = []
    for e in range(3):
        epoch.assign(e)
        images, ids, _ = _epoch(ds)
        seen.append(_mirrored(images)[np.argsort(ids[:, 0])])
    assert 0 < seen[0].sum() < 12  # the first epoch mirrors a random part
    np.testing.assert_array_equal(seen[1], ~seen[0])
    np.testing.assert_array_equal(seen[2], seen[0])
    epoch.assign(0)
    again = make_dataset(x, labels, batch_size=5, shuffle=True, seed=3, augment=True,
                         augmentation="alternating_flip_translate", epoch=epoch)
    images, ids, _ = _epoch(again)
    np.testing.assert_array_equal(_mirrored(images)[np.argsort(ids[:, 0])], seen[0])  # seeded
    with pytest.raises(ValueError, match="epoch=None"):
        make_dataset(x, labels, batch_size=4, augment=True, augmentation="alternating_flip_translate")


def test_set_epoch_callback_reaches_the_data_keras_fit_reads():
    # The model outputs (right column - left column) of its input, so each epoch's mean loss is
    # 255 * (1 - 2 * fraction mirrored): alternating flips make consecutive epochs sum to 0.
    import keras

    from mghash_tf.data.pipeline import epoch_counter
    from mghash_tf.training.callbacks import SetEpoch

    x = _half_images(10)
    labels = np.stack([np.arange(10), np.zeros(10, int)], 1)
    epoch = epoch_counter()
    ds = make_dataset(x, labels, batch_size=10, augment=True, augmentation="alternating_flip_translate",
                      epoch=epoch, seed=5)
    inputs = keras.Input((8, 8, 3))
    contrast = keras.layers.Lambda(lambda t: t[:, :, -1, 0] - t[:, :, 0, 0])(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer="zeros")(contrast) +
                        keras.ops.mean(contrast, axis=1, keepdims=True))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=lambda y_true, y_pred: keras.ops.mean(y_pred))
    history = model.fit(ds, epochs=3, verbose=0, callbacks=[SetEpoch(epoch)]).history["loss"]
    assert abs(history[0]) >= 51  # seed 5 mirrors 9 of 10 in the first epoch, not half by chance
    assert history[1] == pytest.approx(-history[0]) and history[2] == pytest.approx(history[0])


# --- embedded demo sample ---------------------------------------------------------------------

def test_demo_sample_has_both_levels_and_both_splits():
    path = demo_data_path()
    assert path.is_file() and path.stat().st_size <= 5e6
    s = load_source(f"npz:{path}")
    assert len(s) >= 2000 and s.has_coarse and s.x.shape[1:] == (32, 32, 3)
    assert s.class_names_fine[:2] == ("airplane", "automobile") and s.class_names_coarse == ("vehicle", "animal")
    vehicles = {s.class_names_fine.index(n) for n in ("airplane", "automobile", "ship", "truck")}
    np.testing.assert_array_equal(s.y_coarse, np.isin(s.y_fine, list(vehicles), invert=True))
    for split in (0, 1):
        counts = np.bincount(s.y_fine[s.split == split], minlength=10)
        assert counts.min() == counts.max() > 0
