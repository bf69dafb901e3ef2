"""Thumbnail speed of ``edge_demo serve``: a 12 MP JPEG decoded in full vs at a reduced DCT scale
(draft) vs served from the thumbnail cache, in one process and run.

    python benchmarks/edge_thumbnails.py --json benchmarks/results/edge_thumbnails.json \\
        --md benchmarks/results/edge_thumbnails.md

The photos are synthetic (smooth colour fields and edges, plus Gaussian sensor-like noise of each
``--noise`` level: noise makes the file larger and its entropy decoding, which a reduced decode
cannot skip, slower), written to a temporary folder. Methods, each making the JPEG bytes the server sends:
  full:   decode at full resolution (``decode_image``), then ``Image.thumbnail`` (the server
          before draft decoding)
  draft:  ``encode_thumbnail`` (``decode_thumbnail``: the smallest JPEG scale covering the size)
  cached: the server's path on a hit: stat the file, look the thumbnail up in ``ThumbCache``
The methods run in rotating order (load from other processes hits all alike); ms is the
median over repeats, ratio = full ms / method ms. mean |diff| compares the draft thumbnail's
pixels with the full-decode one (0..255 scale).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image  # noqa: E402

from edge_demo.thumbs import JPEG_QUALITY, ThumbCache, encode_thumbnail  # noqa: E402
from export.report import provenance, write_json  # noqa: E402
from mghash_tf.core.images import RESAMPLE, decode_image  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--sizes", type=int, nargs="+", default=[256], help="thumbnail sides (the page asks 256)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 5.0],
                   help="noise standard deviations (0-255 scale), one photo each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True)
    p.add_argument("--md")
    return p.parse_args(argv)


def synthetic_photo(width: int, height: int, noise: float, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 200 + 2, width // 200 + 2, 3), np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), RESAMPLE), np.int16)
    edges = rng.integers(-40, 41, (height // 40 + 1, width // 40 + 1, 1), np.int16)
    base += np.repeat(np.repeat(edges, 40, axis=0), 40, axis=1)[:height, :width]
    if noise:
        base += np.rint(rng.normal(0, noise, (height, width, 1))).astype(np.int16)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def full_thumbnail(path, size: int) -> bytes:
    img = Image.fromarray(decode_image(path))
    img.thumbnail((size, size), RESAMPLE)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def cached_lookup(cache: ThumbCache, path: Path, size: int) -> bytes:
    st = path.stat()
    return cache.get(str(path), size, (st.st_size, st.st_mtime_ns))


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), np.float32)


def measure(path: Path, size: int, repeats: int, photo: dict) -> list:
    cache = ThumbCache()
    st = path.stat()
    cache.put(str(path), size, (st.st_size, st.st_mtime_ns), encode_thumbnail(path, size))
    methods = {"full": lambda: full_thumbnail(path, size), "draft": lambda: encode_thumbnail(path, size),
               "cached": lambda: cached_lookup(cache, path, size)}
    times = {m: [] for m in methods}
    outputs = {}
    names = list(methods)
    for r in range(repeats):
        for m in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            outputs[m] = methods[m]()
            times[m].append((time.perf_counter() - t0) * 1e3)
    if outputs["cached"] != outputs["draft"]:
        raise SystemExit("the cache returned other bytes than it was given: the benchmark is invalid")
    full_ms = statistics.median(times["full"])
    diff = np.abs(pixels(outputs["draft"]) - pixels(outputs["full"]))
    return [{**photo, "method": m, "size": size, "ms": round(statistics.median(ts), 3),
             "ms_min": round(min(ts), 3), "ms_max": round(max(ts), 3), "repeats": len(ts),
             "ratio_full_over_method": round(full_ms / statistics.median(ts), 1),
             "thumbnail": list(pixels(outputs[m]).shape[1::-1]),
             "mean_abs_diff_vs_full": None if m == "full" else round(float(diff.mean()), 3)}
            for m, ts in times.items()]


def markdown(report: dict) -> str:
    lines = ["# Thumbnails of `edge_demo serve`: full decode vs draft decode vs cache", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}  ",
             f"Machine: {report['machine']}  ",
             f"Pillow {report['pillow']}; load average (1/5/15 min) before: {report['load_before']}, "
             f"after: {report['load_after']} (the 2 cores were shared with other processes)", "",
             f"Photos: synthetic {report['width']}x{report['height']} JPEGs "
             f"({report['width'] * report['height'] / 1e6:.1f} MP, quality 92), one per noise level. "
             "ms = median of rotating-order repeats; ratio = full ms / method ms in the same run; "
             "mean |diff| = draft vs full thumbnail pixels (0-255).", "",
             "| noise | JPEG bytes | size | method | ms (median) | min | max | full / method | "
             "thumbnail | mean abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["records"]:
        diff = "-" if r["mean_abs_diff_vs_full"] is None else f"{r['mean_abs_diff_vs_full']:.2f}"
        lines.append(f"| {r['noise']:g} | {r['jpeg_bytes']:,} | {r['size']} | {r['method']} | "
                     f"{r['ms']:.3f} | {r['ms_min']:.3f} | "
                     f"{r['ms_max']:.3f} | {r['ratio_full_over_method']:g} | "
                     f"{r['thumbnail'][0]}x{r['thumbnail'][1]} | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    report = provenance("python benchmarks/edge_thumbnails.py " + " ".join(sys.argv[1:] if argv is None else argv))
    report["load_before"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report.update(width=args.width, height=args.height, records=[])
    with tempfile.TemporaryDirectory() as tmp:
        for n, noise in enumerate(args.noise):
            path = Path(tmp) / f"photo{n}.jpg"
            synthetic_photo(args.width, args.height, noise, args.seed).save(path, "JPEG", quality=92)
            photo = {"noise": noise, "jpeg_bytes": path.stat().st_size}
            report["records"] += [r for size in args.sizes for r in measure(path, size, args.repeats, photo)]
    report["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report["pillow"] = PIL.__version__
    for r in report["records"]:
        print(r, flush=True)
    write_json(args.json, report)
    if args.md:
        Path(args.md).write_text(markdown(report))


if __name__ == "__main__":
    main()
