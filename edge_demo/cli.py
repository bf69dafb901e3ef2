"""``python -m edge_demo index|query``: index a photo folder, query it. No TensorFlow.

    python -m edge_demo index PHOTOS --model M.tflite --out photos.mgh [--tta]
    python -m edge_demo query IMG --index photos.mgh --model M.tflite --k 10 [--tta] \\
        --granularity coarse|fine|scales:low=1,mid=0.5|SEGMENT [--cascade] [--grid out.png --root PHOTOS]
    python -m edge_demo serve --index photos.mgh --model M.tflite --root PHOTOS [--host 127.0.0.1 --port 8080]

Index names are paths relative to PHOTOS (see ``edge_demo.photos``); ``--root`` gives that folder
back to ``query`` for thumbnails and for the same-folder frame colours of the grid. ``--tta``
(flip test-time augmentation) is recorded in the index: ``index`` and ``query`` refuse the other
setting, and ``serve`` encodes uploads as the index was built.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path, PurePosixPath

from edge_demo import grid, photos
from mghash_tf.core import native_logs
from mghash_tf.core.commands import add_verbose_flag, run_command
from mghash_tf.core.encoder import TFLiteEncoder

logger = logging.getLogger(__name__)


class ProgressBar:
    """``[#####.....] 50/100`` rewritten in place on a stream (stderr: stdout stays parseable)."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = sys.stderr if stream is None else stream
        self.width, self.start = width, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        filled = self.width * done // max(total, 1)
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
                          f"{rate:.1f} files/s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_demo", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ix = sub.add_parser("index", help="index (or update the index of) a photo folder")
    ix.add_argument("photos", help="photo folder, scanned recursively")
    ix.add_argument("--model", required=True, help="exported .tflite model")
    ix.add_argument("--out", required=True, help="index file to create or update")
    ix.add_argument("--tta", action="store_true",
                    help="encode each photo and its mirror, average before the sign (2x slower)")
    ix.add_argument("--threads", type=int, default=None, help="interpreter threads")
    ix.add_argument("--no-progress", action="store_true",
                    help="no progress bar (shown only when stderr is a terminal)")
    q = sub.add_parser("query", help="find the photos nearest to an image")
    q.add_argument("image", help="query image file")
    q.add_argument("--index", required=True, help="index file written by `index`")
    q.add_argument("--model", required=True, help="the .tflite model that built the index")
    q.add_argument("--k", type=int, default=10, help="results to return (default 10)")
    q.add_argument("--granularity", default="fine",
                   help="fine (whole code), coarse, a segment name, segment:NAME, or scales:NAME=W,...")
    q.add_argument("--cascade", action="store_true", help="coarse shortlist, whole-code re-rank")
    q.add_argument("--tta", action="store_true",
                   help="encode the query with flip TTA (must match how the index was built)")
    q.add_argument("--shortlist", type=int, default=None, help="cascade shortlist (default 10*k)")
    q.add_argument("--grid", default=None, help="write a result grid PNG here")
    q.add_argument("--root", default=None, help="the indexed photo folder (needed by --grid)")
    q.add_argument("--thumb", type=int, default=96, help="grid thumbnail side in pixels")
    q.add_argument("--threads", type=int, default=None, help="interpreter threads")
    s = sub.add_parser("serve", help="a local web page to search the indexed photos")
    s.add_argument("--index", required=True, help="index file written by `index` (reloaded when it changes)")
    s.add_argument("--model", required=True, help="the .tflite model that built the index")
    s.add_argument("--root", required=True, help="the indexed photo folder")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="largest query upload (default 10)")
    s.add_argument("--threads", type=int, default=None, help="interpreter threads")
    add_verbose_flag(p, (ix, q, s), help="show INFO messages and LiteRT's own log lines")
    return p


def _run_index(args) -> int:
    encoder = TFLiteEncoder(args.model, num_threads=args.threads)
    # A bar redrawn with \r is noise in a log file or a pipe; the summary below says it all there.
    progress = None if args.no_progress or not sys.stderr.isatty() else ProgressBar()
    r = photos.index_folder(args.photos, encoder, args.out, tta=args.tta, progress=progress)
    tta = " (flip TTA)" if args.tta else ""
    print(f"{args.out}: {r['total']} photos{tta}; added {r['added']}, updated {r['updated']}, "
          f"removed {r['removed']}, unchanged {r['unchanged']}, skipped {len(r['skipped'])}, "
          f"ignored {r['ignored']} non-image files{' (rebuilt: new model)' if r['rebuilt'] else ''}; "
          f"{r['seconds']:.2f} s, {r['images_per_s']:.1f} images/s")
    for name, reason in r["skipped"]:
        print(f"  skipped {name}: {reason}")
    return 0


def _folder_label(image, root):
    """The query's folder relative to ``root`` (its label), or None when it lies outside."""
    if root is None:
        return None
    try:
        rel = Path(image).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return None
    return rel.parent.as_posix() if rel.parent != Path(".") else None


def _write_grid(args, results) -> None:
    if args.root is None:
        raise ValueError("--grid needs --root: the photo folder the index was built from "
                         "(index names are relative to it)")
    label = _folder_label(args.image, args.root)
    tiles = [(Path(args.root) / name, f"#{rank} d={_fmt(d)}",
              None if label is None else str(PurePosixPath(name).parent) == label)
             for rank, (name, d) in enumerate(results, 1)]
    width, height = grid.write_grid(args.grid, args.image, tiles, thumb=args.thumb)
    print(f"grid: {args.grid} ({width}x{height})")


def _fmt(distance) -> str:
    return str(int(distance)) if float(distance).is_integer() else f"{distance:.2f}"


def _run_query(args) -> int:
    if args.k < 1:
        raise ValueError(f"--k must be >= 1. Received: k={args.k}")
    encoder = TFLiteEncoder(args.model, num_threads=args.threads)
    index = photos.load_index_for(args.index, encoder, tta=args.tta)
    timings = {}
    results = photos.query_image(args.image, index, encoder, args.k, args.granularity, tta=args.tta,
                                 cascade=args.cascade, shortlist=args.shortlist, timings=timings)
    print(f"{len(results)} results of {len(index)} photos (granularity {args.granularity}"
          f"{', cascade' if args.cascade else ''}{', tta' if args.tta else ''})")
    for rank, (name, distance) in enumerate(results, 1):
        print(f"{rank:3d}  {_fmt(distance):>6}  {name}")
    print(f"decode {timings['decode_ms']:.2f} ms, encode {timings['encode_ms']:.2f} ms, "
          f"search {timings['search_ms']:.2f} ms")
    if args.grid:
        _write_grid(args, results)
    return 0


def _run_serve(args) -> int:
    from edge_demo import server

    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be > 0. Received: {args.max_upload_mb}")
    httpd = server.make_server(args.index, args.model, args.root, host=args.host, port=args.port,
                               max_upload=int(args.max_upload_mb * 1024 * 1024),
                               num_threads=args.threads)
    host, port = httpd.server_address[:2]
    print(f"serving {args.index} ({len(httpd.app.holder.current().index)} photos) on "
          f"http://{'[' + host + ']' if ':' in host else host}:{port}/  (Ctrl+C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        httpd.server_close()
    return 0


def main(argv=None) -> int:
    """Run the CLI; returns the exit status (2 with a message on stderr for bad input)."""
    args = _parser().parse_args(argv)
    native_logs.configure(args.verbose)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    runs = {"index": _run_index, "query": _run_query, "serve": _run_serve}
    return run_command(runs[args.command], args)
