"""``ImageSet``, ``load_source`` (npz / folder / tfds; never downloads unless asked) and a
seeded stratified validation split. NumPy only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from mghash_tf.data import sources as data_sources
from mghash_tf.core.images import check_image_size

logger = logging.getLogger(__name__)

DEMO_FILE = "cifar10_demo.npz"


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSet:
    """Images with a fine and a coarse label each.

    ``y_coarse`` defaults to ``y_fine`` (a one-level source); ``split`` is 0 = train, 1 = test,
    or None; ``paths`` names each image's file when known; ``skipped`` holds ``(path, reason)``
    for the files a folder source could not read. ``labelled`` False: the source has no labels
    (an unlabelled folder); ``y_fine`` is then all 0 and means nothing.
    """

    x: np.ndarray
    y_fine: np.ndarray
    y_coarse: np.ndarray | None = None
    split: np.ndarray | None = None
    class_names_fine: tuple = ()
    class_names_coarse: tuple = ()
    paths: tuple | None = None
    skipped: tuple = ()
    labelled: bool = True

    def __post_init__(self):
        x = np.asarray(self.x)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError("`x` must be a uint8 array of shape (N, H, W, 3). "
                             f"Received: x.dtype={x.dtype}, x.shape={x.shape}")
        y_fine = _label_array("y_fine", self.y_fine, len(x))
        one_level = self.y_coarse is None
        y_coarse = y_fine if one_level else _label_array("y_coarse", self.y_coarse, len(x))
        names_fine = _class_names("class_names_fine", self.class_names_fine, y_fine)
        names_coarse = (names_fine if one_level and len(self.class_names_coarse) == 0
                        else _class_names("class_names_coarse", self.class_names_coarse, y_coarse))
        fields = {"x": x, "y_fine": y_fine, "y_coarse": y_coarse, "split": _split_array(self.split, len(x)),
                  "class_names_fine": names_fine, "class_names_coarse": names_coarse,
                  "paths": _paths(self.paths, len(x)), "skipped": tuple(tuple(s) for s in self.skipped),
                  "labelled": bool(self.labelled)}
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labels(self) -> np.ndarray:
        """(N, 2) int32: column 0 fine, column 1 coarse (what the losses consume)."""
        return np.stack([self.y_fine, self.y_coarse], axis=1)

    @property
    def has_coarse(self) -> bool:
        """True when the coarse level differs from the fine one (the source has two levels)."""
        return (self.class_names_coarse != self.class_names_fine
                or not np.array_equal(self.y_coarse, self.y_fine))

    def subset(self, idx) -> ImageSet:
        """Rows ``idx`` (integer indices or a boolean mask), class names unchanged."""
        idx = np.asarray(idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        return dataclasses.replace(
            self, x=self.x[idx], y_fine=self.y_fine[idx], y_coarse=self.y_coarse[idx],
            split=None if self.split is None else self.split[idx],
            paths=None if self.paths is None else tuple(self.paths[i] for i in idx))


def _label_array(name, values, n):
    y = np.asarray(values)
    if y.shape != (n,) or not (np.issubdtype(y.dtype, np.integer) or n == 0):
        raise ValueError(f"`{name}` must be integers of shape ({n},). Received: {name}.dtype={y.dtype}, "
                         f"{name}.shape={y.shape}")
    if n and y.min() < 0:
        raise ValueError(f"`{name}` must be >= 0. Received: min({name})={y.min()}")
    return y.astype(np.int32)


def _class_names(name, names, y):
    count = int(y.max()) + 1 if len(y) else 0
    if names is None or len(names) == 0:
        return tuple(str(i) for i in range(count))
    names = tuple(str(s) for s in names)
    if count > len(names):
        raise ValueError(f"`{name}` must name every label. "
                         f"Received: {len(names)} names, largest label {count - 1}")
    return names


SPLITS = (0, 1, 2)  # train, test, validation (given, e.g. a val/ folder)


def _split_array(split, n):
    if split is None:
        return None
    split = np.asarray(split)
    if split.shape != (n,) or (n and not np.isin(split, SPLITS).all()):
        raise ValueError(f"`split` must be None or ({n},) values in {{0, 1, 2}} (train, test, validation). "
                         f"Received: split.shape={split.shape}, values {np.unique(split)[:5].tolist()}")
    return split.astype(np.uint8)


def _paths(paths, n):
    if paths is None:
        return None
    paths = tuple(str(p) for p in paths)
    if len(paths) != n:
        raise ValueError(f"`paths` must have one entry per image. Received: {len(paths)} paths for {n} images")
    return paths


def demo_data_path() -> Path:
    """The embedded CIFAR-10 sample (source, terms and counts: ``mghash_tf/demo_data/README.md``)."""
    return Path(__file__).resolve().parents[1] / "demo_data" / DEMO_FILE


def load_source(spec, *, image_size: int | None = None, download: bool = False,
                data_dir=None, cache_dir=None, labels: str = "auto") -> ImageSet:
    """Load ``npz:PATH``, ``folder:PATH`` or ``tfds:NAME[:SPLIT]`` as an ``ImageSet``.

    Args:
        spec: the source; a bare path to an existing ``.npz`` file or folder also works.
        image_size: side in pixels to resize to. Required for folders (their images differ in
            size); for npz and tfds, None keeps the stored size.
        download: tfds only: allow downloading a dataset that is not prepared locally.
        data_dir: tfds only: where prepared datasets live (tfds' own default when None).
        cache_dir: npz only: where decoded pixels of large LZMA/deflate files are cached as
            ``.npy`` (``data_sources.default_cache_dir()`` when None; False: no cache).
        labels: folders only: ``"auto"`` reads class folders as labels, unless image files lie
            directly in the folder (``data_sources.read_folder``'s rule); ``"none"`` reads every
            image under it, at any depth, without labels.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"`spec` must be a str such as 'npz:PATH'. Received: spec={spec!r}")
    spec = os.fspath(spec)
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("npz", "folder", "tfds"):
        kind, rest = _infer_kind(spec), spec
    image_size = check_image_size(image_size, required=(kind == "folder"))
    if kind == "folder":
        return ImageSet(**data_sources.read_folder(rest, image_size=image_size, labels=labels))
    if kind == "tfds":
        return ImageSet(**data_sources.read_tfds(rest, image_size=image_size, download=download,
                                                 data_dir=data_dir))
    image_set = ImageSet(**data_sources.read_npz(rest, cache_dir=cache_dir))
    if image_size is None or image_set.x.shape[1:3] == (image_size, image_size):
        return image_set
    logger.info("resizing %d images to %d px", len(image_set), image_size)
    return dataclasses.replace(image_set, x=data_sources.resize_images(image_set.x, image_size))


def _infer_kind(spec: str) -> str:
    path = Path(spec)
    if path.is_file() and path.suffix == ".npz":
        return "npz"
    if path.is_dir():
        return "folder"
    raise ValueError("`spec` must start with 'npz:', 'folder:' or 'tfds:', or be an existing .npz file "
                     f"or folder. Received: spec={spec!r}")


def save_npz(image_set: ImageSet, path, *, jpeg_quality: int | None = None) -> None:
    """Write ``image_set`` so that ``load_source('npz:PATH')`` returns it: pixels raw (lossless)
    or, with ``jpeg_quality``, as JPEG (lossy; several times smaller, see ``data_sources.write_npz``)."""
    fields = {f.name: getattr(image_set, f.name) for f in dataclasses.fields(image_set)}
    if not image_set.has_coarse:
        fields.pop("y_coarse")
        fields.pop("class_names_coarse")
    data_sources.write_npz(path, fields, jpeg_quality=jpeg_quality)


def with_test_split(image_set: ImageSet, test_fraction: float, *, seed: int = 0) -> ImageSet:
    """``image_set`` with a seeded test split stratified by fine label (split 1), the rest train
    (split 0): the same seed gives the same split on every machine. For sources without one."""
    if image_set.split is not None:
        raise ValueError("`test_fraction` is for data without a split, and this data has one "
                         f"(values {np.unique(image_set.split).tolist()}). Received: test_fraction={test_fraction!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1). Received: test_fraction={test_fraction!r}")
    _, test = train_val_split(image_set, val_fraction=test_fraction, seed=seed)
    split = np.zeros(len(image_set), np.uint8)
    split[test] = 1
    return dataclasses.replace(image_set, split=split)


def train_val_split(image_set_or_labels, *, val_fraction: float = 0.1, seed: int = 0):
    """Seeded split stratified by fine label -> sorted ``(train_idx, val_idx)``.

    Each class gives ``round(n_c * val_fraction)`` images to validation but keeps at least one
    for training. Pass the training part only: the test split must never select models.
    """
    source = image_set_or_labels
    y = source.y_fine if isinstance(source, ImageSet) else np.asarray(source)
    y = y[:, 0] if y.ndim == 2 else y
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (N,) or (N, 2). Received: shape={np.shape(source)}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ValueError(f"`val_fraction` must be in [0, 1). Received: val_fraction={val_fraction!r}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n_val = min(int(np.floor(len(members) * val_fraction + 0.5)), len(members) - 1)
        val.append(rng.permutation(members)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    if val_fraction > 0 and len(val_idx) == 0:
        logger.warning("validation split is empty: %d images are too few for val_fraction=%s",
                       len(y), val_fraction)
    return np.setdiff1d(np.arange(len(y)), val_idx), val_idx
