"""Index a photo folder incrementally and query it. NumPy + Pillow + LiteRT; never TensorFlow.

Index contents: one code per readable photo; its name is the path relative to the photo root,
with ``/`` separators, so a folder and its index can move together to another machine. The
root itself is not stored: a query that needs the files (thumbnails, same-folder check) is
given the root again (``--root``). Extra columns ``size`` and ``mtime_ns`` (int64) record the
file as it was encoded; a later run re-encodes a file only when either changed.

The index fingerprint is the model's weight fingerprint plus its variant (:func:`index_fingerprint`):
an int8 and an fp32 export of the same weights disagree on a few bits, and an incremental run must
never mix their codes. Codes encoded with flip test-time augmentation (``tta``) differ from plain
ones the same way, so a TTA index's fingerprint ends in ``/tta``; an index without the suffix
(every file written before TTA existed) holds plain codes. Re-indexing or querying with the
other setting is refused, not rebuilt: the model is the same, so it is the flag that is wrong.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mghash_tf.core import granularity as granularity_lib
from mghash_tf.core.images import IMAGE_SUFFIXES, RESAMPLE, PixelBudgetError, decode_files, decode_image
from mghash_tf.core.index import HammingIndex

logger = logging.getLogger(__name__)

# Files decoded (in threads) and encoded per step: bounds memory and paces the progress callback.
CHUNK = 64


TTA_SUFFIX = "/tta"


def index_fingerprint(description: dict, *, tta: bool = False) -> str:
    base = f"{description['fingerprint']}/{description['variant']}"
    return base + TTA_SUFFIX if tta else base


def index_tta(index) -> bool:
    """Whether ``index`` holds flip-TTA codes (its fingerprint ends in ``/tta``)."""
    return (index.fingerprint or "").endswith(TTA_SUFFIX)


def _same_model(index, description: dict) -> bool:
    return index.fingerprint in (index_fingerprint(description), index_fingerprint(description, tta=True))


def check_tta(index, tta: bool, path) -> None:
    """ValueError unless ``tta`` is the setting ``index`` (read from ``path``) was built with."""
    built = index_tta(index)
    if tta != built:
        raise ValueError(
            f"`tta` must match the setting the index {path} was built with (tta={built}): one index "
            f"never mixes flip-TTA and plain codes. Received: tta={tta}. "
            f"{'Pass' if built else 'Drop'} --tta, or delete the index to rebuild it with tta={tta}.")


def scan_folder(root) -> tuple:
    """``({relative name: (size, mtime_ns)}, ignored count, outside)`` of image files under
    ``root``; ``outside`` lists ``(name, reason)`` of links that resolve outside ``root``.

    Hidden files and folders are skipped; files with other suffixes are only counted. A link
    leaving the folder is not indexed: the server never serves such a path, so it would come
    back as a result that cannot be shown.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"The photo root must be an existing folder. Received: {root}")
    real_root = root.resolve()
    found, ignored, outside = {}, 0, []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            path = Path(folder) / f
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                ignored += 1
                continue
            try:
                st = path.stat()
                real = path.resolve()
            except (OSError, RuntimeError) as e:  # deleted mid-scan, a dangling or looping link
                logger.warning("cannot stat %s: %s", path, e)
                continue
            name = path.relative_to(root).as_posix()
            if not real.is_relative_to(real_root):
                outside.append((name, f"a link to {real}, outside the photo folder"))
                continue
            found[name] = (st.st_size, st.st_mtime_ns)
    return found, ignored, outside


def _open_existing(out_path: Path, encoder, tta: bool):
    """The index at ``out_path`` to update, or None when there is none or another model built it;
    ValueError when this model built it with the other ``tta`` setting."""
    if not out_path.exists():
        return None
    try:
        index = HammingIndex.load(out_path)
    except ValueError as e:
        raise ValueError(f"--out {out_path} exists but is not a readable index ({e}); delete it or "
                         "choose another path") from None
    fingerprint = index_fingerprint(encoder.description, tta=tta)
    if index.layout == encoder.layout and _same_model(index, encoder.description):
        check_tta(index, tta, out_path)
    if index.fingerprint != fingerprint or index.layout != encoder.layout:
        logger.warning("%s was built by another model (fingerprint %r, this model %r): rebuilding it",
                       out_path, index.fingerprint, fingerprint)
        return None
    if index.names is None or set(index.extras) != {"size", "mtime_ns"}:
        raise ValueError(f"--out {out_path} is an index without photo metadata (names, size, "
                         "mtime_ns); delete it or choose another path")
    return index


def _plan(index, found: dict) -> tuple:
    """(names to encode, ids of stale entries, names of changed files) for an incremental run."""
    if index is None:
        return sorted(found), np.zeros(0, np.int64), set()
    known = {n: (i, (int(s), int(m))) for n, i, s, m in
             zip(index.names, index.ids, index.extras["size"], index.extras["mtime_ns"])}
    todo = sorted(n for n in found if n not in known or known[n][1] != found[n])
    changed = {n for n in todo if n in known}
    stale = [i for n, (i, _) in known.items() if n not in found or n in changed]
    return todo, np.asarray(stale, np.int64), changed


def _encode_files(root: Path, names: list, encoder, tta: bool, progress) -> tuple:
    """(packed codes, encoded names, skipped [(name, reason)]) for ``names`` under ``root``."""
    codes, done, skipped = [], [], []
    for start in range(0, len(names), CHUNK):
        chunk = names[start:start + CHUNK]
        arrays, failed = decode_files([root / n for n in chunk], encoder.input_size)
        reasons = dict(failed)
        skipped += [(n, reasons[str(root / n)]) for n, a in zip(chunk, arrays) if a is None]
        good = [(n, a) for n, a in zip(chunk, arrays) if a is not None]
        if good:
            codes.append(encoder.encode_bits(np.stack([a for _, a in good]), tta=tta))
            done += [n for n, _ in good]
        if progress:
            progress(min(start + CHUNK, len(names)), len(names))
    words = np.concatenate(codes) if codes else np.zeros((0, math.ceil(encoder.bits / 64)), np.uint64)
    return words, done, skipped


def index_folder(root, encoder, out_path, *, tta: bool = False, progress=None) -> dict:
    """Index the photos under ``root`` into ``out_path``, encoding only new or changed files.

    Args:
        root: photo folder, scanned recursively.
        encoder: a ``TFLiteEncoder`` (anything with ``description``, ``layout``, ``bits``,
            ``input_size`` and ``encode_bits``).
        out_path: index file; updated in place when it was built by the same model, rebuilt when
            another model built it. Written atomically, and only when something changed.
        tta: encode with flip test-time augmentation (``encoder.encode_bits(..., tta=True)``);
            recorded in the fingerprint. ValueError when ``out_path`` was built by this model
            with the other setting (:func:`check_tta`).
        progress: optional callable ``(done, total)`` called after each chunk of files.

    Returns a report: ``added``, ``updated``, ``removed`` (deleted files, and changed files that
    no longer decode), ``unchanged``, ``skipped`` (list of ``(name, reason)``: unreadable files,
    never fatal), ``ignored`` (files without an image suffix), ``total`` (items in the index),
    ``rebuilt``, ``seconds``, ``images_per_s`` (encoded files per second).
    """
    t0 = time.perf_counter()
    root, out_path = Path(root), Path(out_path)
    if not isinstance(tta, bool):
        raise TypeError(f"`tta` must be a bool. Received: tta={tta!r}")
    found, ignored, outside = scan_folder(root)
    index = _open_existing(out_path, encoder, tta)
    rebuilt = index is None and out_path.exists()
    todo, stale, changed = _plan(index, found)
    if index is None:
        index = HammingIndex(encoder.layout.bits, encoder.layout,
                             fingerprint=index_fingerprint(encoder.description, tta=tta))
    words, done, skipped = _encode_files(root, todo, encoder, tta, progress)
    skipped = outside + skipped
    removed = index.remove(stale) if len(stale) else 0
    if len(done):
        sizes = np.asarray([found[n][0] for n in done], np.int64)
        mtimes = np.asarray([found[n][1] for n in done], np.int64)
        index.add(words, names=done, extras={"size": sizes, "mtime_ns": mtimes})
    updated = sum(n in changed for n in done)
    if len(done) or removed or not out_path.exists() or rebuilt:
        index.save(out_path)
    seconds = time.perf_counter() - t0
    return {"added": len(done) - updated, "updated": updated, "removed": removed - updated,
            "unchanged": len(found) - len(todo), "skipped": skipped, "ignored": ignored,
            "total": len(index), "rebuilt": rebuilt, "seconds": seconds,
            "images_per_s": len(done) / seconds if seconds > 0 else 0.0}


def load_index_for(path, encoder, *, tta: bool | None = None) -> HammingIndex:
    """The index at ``path``, refused (ValueError) unless ``encoder``'s model built it, and
    unless with ``tta`` when that is given (None: either setting; :func:`index_tta` tells)."""
    index = HammingIndex.load(path)
    if not _same_model(index, encoder.description):
        raise ValueError(f"Index file {path} was built by another model: fingerprint "
                         f"{index.fingerprint!r}, expected {index_fingerprint(encoder.description)!r} "
                         f"(or with {TTA_SUFFIX!r}). Rebuild the index with the current model.")
    if tta is not None:
        check_tta(index, tta, path)
    return index


def prepare_query(source, input_size: int) -> np.ndarray:
    """A query path or uint8 (H, W, 3) array -> uint8 (input_size, input_size, 3), decoded and
    resized by the rules used at indexing time (``decode_image``). ValueError for an unreadable
    file; its subclass ``PixelBudgetError`` for one over the pixel budget."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise ValueError(f"A query array must be uint8 (H, W, 3). Received: dtype={source.dtype}, "
                             f"shape={source.shape}")
        if source.shape[:2] == (input_size, input_size):
            return source
        return np.asarray(Image.fromarray(source).resize((input_size, input_size), RESAMPLE))
    try:
        return decode_image(source, input_size)
    except PixelBudgetError as e:  # its own type: the server answers it with 413, not 400
        raise PixelBudgetError(f"Cannot read the query image {source}: {e}", pixels=e.pixels,
                               limit=e.limit) from None
    except Exception as e:  # Pillow raises many types on malformed data; name the file instead.
        raise ValueError(f"Cannot read the query image {source}: {type(e).__name__}: {e}") from None


def search_image(source, index, encoder, k: int, args: dict, *, tta: bool | None = None,
                 cascade: bool = False, shortlist: int | None = None,
                 timings: dict | None = None) -> tuple:
    """``(D, I)`` of the one query ``source`` (path, file object or array): decoded by the
    indexing rules, encoded, searched with ``args`` (:func:`~mghash_tf.core.granularity.search_args`).
    ``tta``: None encodes the query as the index was (:func:`index_tta`); a bool must match it.
    ``cascade``: shortlist by the coarse segment, re-rank by the whole code (``args`` must then be
    the whole code). ``timings``, when given, receives ``decode_ms``, ``encode_ms``, ``search_ms``.
    """
    if tta is None:
        tta = index_tta(index)
    check_tta(index, tta, "being searched")
    t0 = time.perf_counter()
    image = prepare_query(source, encoder.input_size)
    t1 = time.perf_counter()
    code = encoder.encode_bits(image[None], tta=tta)
    t2 = time.perf_counter()
    if cascade:
        if args["granularity"] is not None or args["weights"] is not None:
            raise ValueError("--cascade ranks by the whole code; it takes no other granularity. "
                             f"Received: granularity={args['granularity']!r}, weights={args['weights']!r}")
        coarse = "coarse" if granularity_lib.coarse_segments(index.layout) else None
        D, I = index.cascade(code, k, coarse=coarse, shortlist=shortlist)
    else:
        D, I = index.search(code, k, **args)
    t3 = time.perf_counter()
    if timings is not None:
        timings.update(decode_ms=(t1 - t0) * 1e3, encode_ms=(t2 - t1) * 1e3, search_ms=(t3 - t2) * 1e3)
    return D[0], I[0]


def query_image(source, index, encoder, k: int = 10, granularity=None, *, tta: bool | None = None,
                cascade: bool = False, shortlist: int | None = None,
                timings: dict | None = None) -> list:
    """``[(name, distance), ...]`` of the ``k`` nearest photos to ``source`` (path or array);
    ``granularity`` is a spec for :func:`mghash_tf.core.granularity.search_args`, the rest as
    in :func:`search_image`."""
    args = granularity_lib.search_args(index.layout, granularity)
    D, I = search_image(source, index, encoder, k, args, tta=tta, cascade=cascade,
                        shortlist=shortlist, timings=timings)
    keep = I >= 0
    return list(zip(index.names_of(I[keep]), D[keep].tolist()))
