"""Readers behind ``data.load_source``: npz files (read, write, pixel cache), image folders and
tfds. Each reader returns a dict of ``ImageSet`` fields. Images are decoded by the rules in
:mod:`mghash_tf.core.images`, the ones the device uses too.

NumPy and Pillow only (the tfds reader imports ``tensorflow_datasets`` itself).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from mghash_tf.core.files import atomic_open
from mghash_tf.core.images import IMAGE_SUFFIXES, decode_files, decode_image, resize_images

logger = logging.getLogger(__name__)

# Below this many decompressed bytes, reading ``x`` from the npz costs under a second: no cache.
CACHE_MIN_BYTES = 8 * 2**20
_MAX_LISTED = 10


def _warn_skipped(where, skipped, total, empty_classes=()):
    parts = []
    if skipped:
        listed = "; ".join(f"{p} ({why})" for p, why in skipped[:_MAX_LISTED])
        more = f"; and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
        parts.append(f"skipped {len(skipped)} of {total} files (all listed in ImageSet.skipped): {listed}{more}")
    if empty_classes:
        parts.append(f"dropped class folders with no readable image: {sorted(empty_classes)}")
    if parts:
        logger.warning("%s: %s", where, "; ".join(parts))


# --- npz ------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$MGHASH_TF_CACHE``, else ``cache/`` in a source checkout (git-ignored), else ~/.cache."""
    if os.environ.get("MGHASH_TF_CACHE"):
        return Path(os.environ["MGHASH_TF_CACHE"])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "cache"
    return Path.home() / ".cache" / "mghash_tf"


def read_npz(path, *, cache_dir=None) -> dict:
    """The ../shared/data format: ``x`` (or JPEG bytes, see ``write_npz``) and ``y_fine``; optional
    ``y_coarse``, ``split``, ``class_names_fine``, ``class_names_coarse``, ``src_path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz source not found: {path}")
    if not zipfile.is_zipfile(path):  # else np.load guesses "pickled data", which misleads
        raise ValueError(f"npz source must be a .npz (zip) file. Received: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "y_fine" not in keys or not ("x" in keys or {"jpeg", "jpeg_offsets", "x_shape"} <= keys):
                raise ValueError("npz source must hold `x` (or `jpeg`, `jpeg_offsets`, `x_shape`) and `y_fine`. "
                                 f"Received keys: {sorted(keys)}")
            fields = {k: npz[k] for k in ("y_fine", "y_coarse", "split", "class_names_fine",
                                          "class_names_coarse", "src_path") if k in keys}
            fields["x"] = _npz_pixels(npz, path, cache_dir)
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npz file: {e}") from e
    fields["paths"] = fields.pop("src_path", None)
    return fields


def _npz_pixels(npz, path, cache_dir):
    if "jpeg" in npz.files:
        data, offsets, shape = npz["jpeg"], npz["jpeg_offsets"], tuple(npz["x_shape"])
        x = np.empty(shape, np.uint8)
        for i in range(shape[0]):
            x[i] = decode_image(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes()))
        return x
    info = npz.zip.getinfo("x.npy")
    if cache_dir is False or info.compress_type == zipfile.ZIP_STORED or info.file_size < CACHE_MIN_BYTES:
        return npz["x"]
    return _cached(npz, path, Path(cache_dir) if cache_dir else default_cache_dir())


def _cached(npz, path, cache_dir):
    st = path.stat()
    stem = f"{path.stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    target = cache_dir / f"{stem}-{st.st_size}-{st.st_mtime_ns}.x.npy"
    if target.is_file():
        try:
            return np.load(target, allow_pickle=False)
        except (OSError, ValueError) as e:  # damaged outside this code (writes are atomic): rebuild
            logger.warning("ignoring unreadable cache entry %s: %s", target, e)
    x = npz["x"]
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(f"{stem}-*.x.npy"):
            stale.unlink(missing_ok=True)
        with atomic_open(target) as f:  # a crash never leaves a half-written cache entry
            np.save(f, x)
        logger.info("cached the pixels of %s in %s", path, target)
    except OSError as e:
        logger.warning("could not cache %s in %s: %s", path, cache_dir, e)
    return x


def write_npz(path, fields: dict, *, jpeg_quality: int | None = None) -> None:
    """Write ImageSet fields in the npz format ``read_npz`` reads; pixels raw, or as JPEG when
    ``jpeg_quality`` is given (lossy; CIFAR-10 at quality 75: ~0.3 KB per image against ~2.7 KB raw)."""
    arrays = {k: np.asarray(v) for k, v in fields.items()
              if k not in ("x", "skipped", "labelled") and v is not None}
    x = fields["x"]
    if jpeg_quality is None:
        arrays["x"] = x
    else:
        if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 95:
            raise ValueError("`jpeg_quality` must be an int in [1, 95] or None. "
                             f"Received: jpeg_quality={jpeg_quality!r}")
        blobs = []
        for im in x:
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, "JPEG", quality=jpeg_quality)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        arrays["jpeg"] = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)
        arrays["jpeg_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        arrays["x_shape"] = np.asarray(x.shape, np.int64)
    if "paths" in arrays:
        arrays["src_path"] = arrays.pop("paths")
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


# --- folders --------------------------------------------------------------------------------

def _visible(entries):
    return sorted(e for e in entries if not e.name.startswith("."))


def _files_under(folder: Path):
    return _visible(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


# Split folders as ``keras.utils.image_dataset_from_directory`` / tfds ``ImageFolder`` users lay
# them out: ROOT/<split>/<class>/... or ROOT/<split>/<coarse>/<fine>/...
SPLIT_FOLDERS = {"train": 0, "test": 1, "val": 2, "validation": 2}
LAYOUTS_HELP = ("root/<class>/*.jpg, root/<coarse>/<fine>/*.jpg, or either one under split folders "
                "root/train/..., root/test/..., root/val/...; photos without classes: train with --labels none "
                "(every image under root, at any depth)")


def _subdirs(folder: Path):
    return _visible(d for d in folder.iterdir() if d.is_dir())


def _scan(root: Path):
    """-> [(coarse name or None, fine name, files)], plus files lying outside class folders."""
    top = _subdirs(root)
    nested = {d: bool(_subdirs(d)) for d in top}
    if any(nested.values()) and not all(nested.values()):
        raise ValueError(f"folder source {root} mixes layouts: {[d.name for d in top if nested[d]]} hold "
                         f"subfolders, {[d.name for d in top if not nested[d]]} do not. Use {LAYOUTS_HELP} "
                         "throughout")
    if not any(nested.values()):
        return [(None, d.name, _files_under(d)) for d in top], []
    if len(top) < 2:
        raise ValueError(f"folder source {root} has one coarse folder ({top[0].name!r}): a nested layout needs "
                         "at least two; point the source at that folder for a one-level layout")
    deeper = [str(sub) for coarse in top for fine in _subdirs(coarse) for sub in _subdirs(fine)]
    if deeper:
        raise ValueError(f"folder source {root} is deeper than root/<coarse>/<fine>/*.jpg: "
                         f"{deeper[:5]}{' ...' if len(deeper) > 5 else ''} ({len(deeper)} folder(s)) lie below "
                         f"a fine-class folder. Accepted layouts: {LAYOUTS_HELP}")
    classes, loose = [], []
    for coarse in top:
        loose += _visible(p for p in coarse.iterdir() if p.is_file())
        classes += [(coarse.name, d.name, _files_under(d)) for d in _subdirs(coarse)]
    return classes, loose


def _split_folders(root: Path) -> list:
    """``[(split code, folder)]`` when ``root`` holds split folders (a ``train`` one among them),
    else ``[]``; a mix of split and other folders is an error."""
    top = _subdirs(root)
    named = [d for d in top if d.name.lower() in SPLIT_FOLDERS]
    if not any(d.name.lower() == "train" for d in named):
        return []
    others = [d.name for d in top if d not in named]
    if others:
        raise ValueError(f"folder source {root} mixes split folders {[d.name for d in named]} with other "
                         f"folders {others}. Accepted layouts: {LAYOUTS_HELP}")
    codes = [SPLIT_FOLDERS[d.name.lower()] for d in named]
    if len(set(codes)) < len(codes):
        raise ValueError(f"folder source {root} has two folders for one split: {[d.name for d in named]}")
    return list(zip(codes, named))


FOLDER_LABELS = ("auto", "none")
UNLABELLED_RULE = ("image files lie directly in the folder, so it is read as unlabelled photos: every image "
                   "under it, at any depth, without labels (class folders would hold them all)")


def read_folder(root, *, image_size: int, labels: str = "auto") -> dict:
    """``root/<class>/*`` (one level) or ``root/<coarse>/<fine>/*`` (two levels), either one
    directly or under split folders ``train`` / ``test`` / ``val`` (``validation``): split 0, 1, 2.

    Without labels (``labels="none"``, or ``"auto"`` when image files lie directly in ``root``,
    which no class layout has): every image file under ``root`` at any depth, all with label 0
    and ``labelled=False``; the automatic switch is logged as a warning that states the rule."""
    root = Path(root)
    if labels not in FOLDER_LABELS:
        raise ValueError(f"`labels` must be one of {FOLDER_LABELS}. Received: labels={labels!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"folder source not found: {root}")
    if labels == "none":
        return read_unlabelled_folder(root, image_size=image_size)
    loose = _image_files(_visible(p for p in root.iterdir() if p.is_file()))
    if loose:
        logger.warning("folder source %s: %s (e.g. %s); training then needs no labels", root, UNLABELLED_RULE,
                       loose[0].name)
        return read_unlabelled_folder(root, image_size=image_size)
    splits = _split_folders(root) or [(None, root)]
    groups, skipped, total = [], [], 0
    for code, folder in splits:
        classes, loose = _scan(folder)
        files = [f for _, _, fs in classes for f in fs]
        arrays, bad = decode_files(files, image_size)
        skipped += [(str(p), "not inside a fine-class folder") for p in loose] + bad
        total += len(files) + len(loose)
        starts = np.cumsum([0] + [len(fs) for _, _, fs in classes])
        groups += [(c, f, [(str(p), a) for p, a in zip(fs, arrays[i:i + len(fs)]) if a is not None], code)
                   for (c, f, fs), i in zip(classes, starts)]
    if len({c is None for c, _, _, _ in groups}) > 1:
        raise ValueError(f"folder source {root}: the split folders differ in layout (one level in some, "
                         f"coarse/fine in others). Accepted layouts: {LAYOUTS_HELP}")
    empty = sorted({f if c is None else f"{c}/{f}" for c, f, _, _ in groups} -
                   {f if c is None else f"{c}/{f}" for c, f, items, _ in groups if items})
    groups = [g for g in groups if g[2]]
    _warn_skipped(f"folder source {root}", skipped, total, empty)
    if len({(c, f) for c, f, _, _ in groups}) < 2:
        raise ValueError(f"folder source {root} needs at least two class folders with readable images. "
                         f"Received: {sorted({f for _, f, _, _ in groups})}; accepted layouts: {LAYOUTS_HELP}")
    return _folder_fields(groups, skipped, has_split=splits[0][0] is not None)


def _image_files(paths) -> list:
    return [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]


def read_unlabelled_folder(root, *, image_size: int) -> dict:
    """Every image file (by suffix) under ``root`` at any depth, in path order, label 0 each."""
    root = Path(root)
    files = _image_files(_files_under(root))
    arrays, bad = decode_files(files, image_size)
    _warn_skipped(f"folder source {root}", bad, len(files))
    kept = [(str(p), a) for p, a in zip(files, arrays) if a is not None]
    if not kept:
        raise ValueError(f"folder source {root} holds no readable image file (suffixes {sorted(IMAGE_SUFFIXES)}) "
                         "at any depth")
    return {"x": np.stack([a for _, a in kept]), "y_fine": np.zeros(len(kept), np.int32),
            "class_names_fine": ("unlabelled",), "paths": tuple(p for p, _ in kept), "skipped": tuple(bad),
            "labelled": False}


def _folder_fields(groups, skipped, *, has_split: bool):
    classes = sorted({(c or "", f) for c, f, _, _ in groups})
    fine = [f for _, f in classes]
    if len(set(fine)) < len(fine):  # same fine name under two coarse folders
        fine = [f"{c}/{f}" for c, f in classes]
    coarse_names = sorted({c for c, _, _, _ in groups if c is not None})
    rows = [(classes.index((c or "", f)), c, code, p, a) for c, f, items, code in groups for p, a in items]
    fields = {
        "x": np.stack([r[4] for r in rows]),
        "y_fine": np.array([r[0] for r in rows]),
        "class_names_fine": tuple(fine),
        "paths": tuple(r[3] for r in rows),
        "skipped": tuple(skipped),
    }
    if has_split:
        fields["split"] = np.array([r[2] for r in rows], np.uint8)
    if coarse_names:
        fields["y_coarse"] = np.array([coarse_names.index(r[1]) for r in rows])
        fields["class_names_coarse"] = tuple(coarse_names)
    return fields


# --- tfds -----------------------------------------------------------------------------------

_SPLIT_CODES = {"train": 0, "test": 1}


def read_tfds(name_split: str, *, image_size=None, download=False, data_dir=None) -> dict:
    """``NAME[:SPLIT]``; without SPLIT, the ``train`` and ``test`` splits that exist."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("tfds sources need tensorflow-datasets: pip install tensorflow-datasets") from e
    name, _, split = name_split.partition(":")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"tfds has no dataset named {name!r}. Received: spec='tfds:{name_split}'") from e
    # Checked locally first: tfds.load with download allowed takes minutes to fail offline.
    if not builder.is_prepared():
        if not download:
            raise FileNotFoundError(
                f"tfds dataset {name!r} is not prepared in {builder.data_dir}, and nothing is downloaded "
                "unless asked: pass download=True once (needs network), or data_dir= a folder that holds it")
        builder.download_and_prepare()
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(f"tfds dataset {name!r} needs 'image' and 'label' features. Received: {list(features)}")
    splits = [split] if split else [s for s in _SPLIT_CODES if s in builder.info.splits]
    if not splits:
        raise ValueError(f"tfds dataset {name!r} has no 'train' or 'test' split: name one, e.g. "
                         f"'tfds:{name}:{next(iter(builder.info.splits), 'SPLIT')}'")
    parts = [_tfds_split(builder, s, "coarse_label" in features, image_size) for s in splits]
    fields = {"x": np.concatenate([p[0] for p in parts]), "y_fine": np.concatenate([p[1] for p in parts]),
              "class_names_fine": tuple(features["label"].names)}
    if "coarse_label" in features:
        fields["y_coarse"] = np.concatenate([p[2] for p in parts])
        fields["class_names_coarse"] = tuple(features["coarse_label"].names)
    codes = [_SPLIT_CODES.get(s.split("[")[0]) for s in splits]
    if None not in codes:
        fields["split"] = np.concatenate([np.full(len(p[1]), c) for p, c in zip(parts, codes)])
    return fields


def _tfds_split(builder, split, has_coarse, image_size):
    import tensorflow_datasets as tfds

    fixed = None not in builder.info.features["image"].shape
    if not fixed and image_size is None:
        raise ValueError(f"tfds dataset {builder.name!r} has images of several sizes: pass image_size")
    images, fine, coarse = [], [], []
    # Batches when every image has one size: ~10x faster than one example at a time.
    for ex in tfds.as_numpy(builder.as_dataset(split=split, batch_size=1024 if fixed else None)):
        batch = ex["image"] if fixed else ex["image"][None]
        batch = np.repeat(batch, 3, axis=-1) if batch.shape[-1] == 1 else batch[..., :3]
        if image_size and batch.shape[1:3] != (image_size, image_size):
            batch = resize_images(batch, image_size)
        images.append(batch.astype(np.uint8))
        fine.append(np.atleast_1d(ex["label"]))
        coarse.append(np.atleast_1d(ex["coarse_label" if has_coarse else "label"]))
    if not images:
        raise ValueError(f"tfds split {split!r} of {builder.name!r} is empty")
    return np.concatenate(images), np.concatenate(fine), np.concatenate(coarse)
