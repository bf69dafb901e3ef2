"""Loopback load on ``edge_demo serve``: bursts of N requests sent at once, counted and timed.

    python benchmarks/edge_load.py --concurrency 50 200 --rounds 3 \\
        --json benchmarks/results/edge_load.json --md benchmarks/results/edge_load.md

Setup (no training): ``--photos`` synthetic JPEG photos in a temporary folder, an untrained
``small_cnn`` / ``mg32`` model at 32 px exported to fp32 TFLite (the model of the serve tests),
indexed with :func:`edge_demo.photos.index_folder`. ``python -m edge_demo serve`` then runs in
its own process on 127.0.0.1, so the client threads here do not share its interpreter lock
(they do share the machine's cores).

A burst: N threads, each with its own connection, wait on a barrier and send one request each.
Out of every 10: 6 thumbnails (``/image/<id>?size=S`` of distinct photos), 2 searches by an
indexed id, 1 upload search (the bytes of an indexed photo, whose top result is checked) and 1
part of the page (``/``, its two assets, ``/api/stats``, ``/api/items``, in turn). The first
burst at each N asks for a thumbnail size never asked before (the cache is cold: every
thumbnail is decoded), later bursts repeat it (warm). Outcomes: ``ok`` (200 and a valid
answer), ``http_<status>``, ``reset`` (connection reset, refused or closed without an answer),
``timeout``, ``error`` (anything else, named in the JSON). Latencies (connect to last byte) of
the ok requests: NumPy linear-interpolated percentiles.

Peer, measured in the same run: the same kinds of requests sent one at a time (sequential);
``ratio`` = a burst's p50 of a kind / that kind's sequential p50.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from edge_thumbnails import synthetic_photo  # noqa: E402
from export.report import provenance, write_json  # noqa: E402

KINDS = ("thumb", "search", "upload", "page")
MIX = ("thumb",) * 6 + ("search",) * 2 + ("upload", "page")
PAGE_PATHS = ("/", "/static/app.js", "/static/style.css", "/api/stats", "/api/items?limit=60")
IMAGE_SIZE = 32
RESETS = (ConnectionResetError, ConnectionRefusedError, ConnectionAbortedError, BrokenPipeError,
          http.client.RemoteDisconnected)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[50, 200])
    p.add_argument("--rounds", type=int, default=3, help="bursts per concurrency (the first is cold)")
    p.add_argument("--photos", type=int, default=120)
    p.add_argument("--photo-size", type=int, nargs=2, default=[1600, 1200], metavar=("W", "H"))
    p.add_argument("--sequential", type=int, default=20, help="requests per kind, one at a time")
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True)
    p.add_argument("--md")
    return p.parse_args(argv)


# -- the requests ------------------------------------------------------------------------------

def plan(n: int, ids: list, upload: bytes, thumb_size: int, offset: int = 0) -> list:
    """``n`` requests ``(kind, method, path, body, headers)`` in the mix of the module docstring;
    the i-th thumbnail is of ``ids[(offset + i) % len(ids)]``."""
    requests, thumbs, searches, pages = [], 0, 0, 0
    for i in range(n):
        kind = MIX[i % len(MIX)]
        if kind == "thumb":
            path, thumbs = f"/image/{ids[(offset + thumbs) % len(ids)]}?size={thumb_size}", thumbs + 1
        elif kind == "search":
            path, searches = f"/api/search?id={ids[(offset + searches) % len(ids)]}&k=10", searches + 1
        elif kind == "upload":
            path = "/api/search?k=10"
        else:
            path, pages = PAGE_PATHS[pages % len(PAGE_PATHS)], pages + 1
        if kind == "upload":
            requests.append((kind, "POST", path, upload, {"Content-Type": "application/octet-stream"}))
        else:
            requests.append((kind, "GET", path, None, {}))
    return requests


def send(host: str, port: int, request: tuple, timeout: float) -> dict:
    """One request on a fresh connection: ``{kind, path, outcome, status, ms, body}``."""
    kind, method, path, body, headers = request
    record = {"kind": kind, "path": path, "status": None, "body": None}
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        record["body"] = response.read()
        record["status"] = response.status
        record["outcome"] = "ok" if response.status == 200 else f"http_{response.status}"
    except RESETS:
        record["outcome"] = "reset"
    except (TimeoutError, socket.timeout):
        record["outcome"] = "timeout"
    except Exception as e:  # counted and named, never fatal: a load test reports failures
        record["outcome"], record["error"] = "error", f"{type(e).__name__}: {e}"[:200]
    finally:
        conn.close()
    record["ms"] = (time.perf_counter() - t0) * 1e3
    return record


def fire(host: str, port: int, requests: list, timeout: float = 60.0) -> list:
    """All ``requests`` at once, one thread and connection each, released together by a barrier;
    the records of :func:`send` in request order."""
    records = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def worker(i):
        barrier.wait()
        records[i] = send(host, port, requests[i], timeout)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def check_answer(record: dict, upload_name: str) -> None:
    """Turn an ``ok`` whose body is not a valid answer into ``error``: a thumbnail must be a
    JPEG, a search must find its query photo (an upload: ``upload_name``) at distance 0."""
    if record["outcome"] != "ok":
        return
    body, kind = record["body"], record["kind"]
    if kind == "thumb":
        valid = body[:3] == b"\xff\xd8\xff"
    elif kind in ("search", "upload"):
        # The query photo is among the distance-0 results, unless other photos with its code
        # fill all k places.
        results = json.loads(body)["results"]
        exact = [r for r in results if r["distance"] == 0]
        if kind == "search":
            query = int(parse_qs(urlsplit(record["path"]).query)["id"][0])
            found = query in [r["id"] for r in exact]
        else:
            found = upload_name in [r["name"] for r in exact]
        valid = bool(exact) and (found or len(exact) == len(results))
    else:
        valid = len(body) > 0
    if not valid:
        record["outcome"], record["error"] = "error", f"invalid answer to {record['path']}"


# -- statistics --------------------------------------------------------------------------------

def latency_stats(ms: list) -> dict:
    if not ms:
        return {"n": 0}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"n": len(ms), "p50": round(float(p50), 2), "p90": round(float(p90), 2),
            "p99": round(float(p99), 2), "max": round(float(max(ms)), 2)}


def summarise(records: list) -> dict:
    outcomes = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    ok = [r for r in records if r["outcome"] == "ok"]
    by_kind = {k: latency_stats([r["ms"] for r in ok if r["kind"] == k]) for k in KINDS}
    errors = sorted({r["error"] for r in records if "error" in r})[:10]
    return {"requests": len(records), "outcomes": outcomes, "latency_ms": latency_stats([r["ms"] for r in ok]),
            "by_kind": by_kind, "errors": errors}


# -- setup -------------------------------------------------------------------------------------

def make_photos(root: Path, count: int, size: tuple, seed: int) -> None:
    root.mkdir(parents=True)
    for i in range(count):
        synthetic_photo(size[0], size[1], 3.0, seed + i).save(root / f"p{i:04d}.jpg", "JPEG", quality=90)


def make_model(out_dir: Path, sample: np.ndarray) -> Path:
    """The serve tests' model: untrained, each bit centred and scaled on ``sample`` (uint8
    (N, 32, 32, 3)) so that the photos' codes differ instead of sharing the biases' signs."""
    from export import convert
    from mghash_tf.model import build_model, encode

    model = build_model(backbone="small_cnn", layout="mg32", image_size=IMAGE_SIZE)
    h = encode(model, sample)
    mean, std = h.mean(axis=0), h.std(axis=0) + 1e-12
    start = 0
    for dense in model.get_layer("hash_head").projections:
        kernel, bias = dense.get_weights()
        cols = slice(start, start + kernel.shape[1])
        dense.set_weights([kernel / std[cols], (bias - mean[cols]) / std[cols]])
        start = cols.stop
    return convert.convert_model(model, out_dir, variants="fp32")["fp32"]


def start_server(index: Path, model: Path, root: Path, log_path: Path) -> tuple:
    """``(process, port)`` of ``python -m edge_demo serve`` on 127.0.0.1 and a free port."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "edge_demo", "serve", "--index", str(index),
                             "--model", str(model), "--root", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=log, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    log.close()
    line = proc.stdout.readline()
    if "http://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"serve did not start: {line!r}; see {log_path}")
    return proc, int(line.split("http://127.0.0.1:")[1].split("/")[0])


# -- the run -----------------------------------------------------------------------------------

def sequential(port: int, ids: list, upload: bytes, upload_name: str, n: int, warm_size: int,
               cold_size: int, timeout: float) -> dict:
    """Per kind: ``n`` requests one at a time (thumbnails both from the warm cache and cold)."""
    out = {}
    for kind, size in (("thumb", warm_size), ("thumb_cold", cold_size), ("search", warm_size),
                       ("upload", warm_size), ("page", warm_size)):
        base = "thumb" if kind == "thumb_cold" else kind
        requests = [r for r in plan(n * len(MIX), ids, upload, size)
                    if r[0] == base][:n]
        records = [send("127.0.0.1", port, r, timeout) for r in requests]
        for r in records:
            check_answer(r, upload_name)
        out[kind] = {**summarise(records)["latency_ms"],
                     "failed": sum(r["outcome"] != "ok" for r in records)}
    return out


def run(args, tmp: Path) -> dict:
    from edge_demo import photos
    from mghash_tf.core.encoder import TFLiteEncoder
    from mghash_tf.core.images import decode_files
    from mghash_tf.core.index import HammingIndex

    t0 = time.perf_counter()
    root = tmp / "photos"
    make_photos(root, args.photos, tuple(args.photo_size), args.seed)
    arrays, _ = decode_files(sorted(root.iterdir()), IMAGE_SIZE)
    model = make_model(tmp / "model", np.stack(arrays))
    photos.index_folder(root, TFLiteEncoder(model), tmp / "photos.mgh")
    index = HammingIndex.load(tmp / "photos.mgh")
    ids, names = index.ids.tolist(), list(index.names)
    upload_name = names[0]
    upload = (root / upload_name).read_bytes()
    setup_s = time.perf_counter() - t0
    proc, port = start_server(tmp / "photos.mgh", model, root, tmp / "serve.log")
    bursts = []
    try:
        # First touches (imports, the interpreter's first run) are not load: one of each kind,
        # thumbnails at a size the bursts never ask for.
        for request in plan(len(MIX), ids, upload, 64):
            send("127.0.0.1", port, request, args.timeout)
        for c, n in enumerate(args.concurrency):
            size = 256 - c  # a size no earlier burst asked for: the first burst is cold
            for r in range(args.rounds):
                t1 = time.perf_counter()
                records = fire("127.0.0.1", port, plan(n, ids, upload, size), args.timeout)
                wall = time.perf_counter() - t1
                for rec in records:
                    check_answer(rec, upload_name)
                bursts.append({"concurrency": n, "round": r + 1, "thumb_size": size,
                               "thumbnails": "cold" if r == 0 else "warm", "wall_s": round(wall, 3),
                               **summarise(records)})
                print(json.dumps({k: v for k, v in bursts[-1].items() if k != "by_kind"}), flush=True)
        seq = sequential(port, ids, upload, upload_name, args.sequential, 256, 200, args.timeout)
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
    log = (tmp / "serve.log").read_text()
    for b in bursts:
        for kind, stats in b["by_kind"].items():
            base = seq["thumb_cold" if kind == "thumb" and b["thumbnails"] == "cold" else kind]
            if stats.get("n") and base.get("n"):
                stats["ratio_p50_vs_sequential"] = round(stats["p50"] / base["p50"], 2)
    from edge_demo.server import Server

    return {"settings": {"photos": args.photos, "listen_backlog": Server.request_queue_size, "photo_size": args.photo_size, "model":
                         f"small_cnn mg32 {IMAGE_SIZE} px fp32 TFLite (untrained)",
                         "timeout_s": args.timeout, "setup_s": round(setup_s, 1),
                         "upload_bytes": len(upload)},
            "bursts": bursts, "sequential": seq,
            "server_log": {"warnings": log.count("WARNING"), "errors": log.count("ERROR"),
                           "tracebacks": log.count("Traceback")}}


def backlog_note(report: dict) -> list:
    backlog = report["settings"]["listen_backlog"]
    if max(b["concurrency"] for b in report["bursts"]) <= backlog:
        return []
    return [f"Bursts larger than the server's listen backlog ({backlog}): Linux drops the connection "
            "requests that do not fit and the client resends them after its 1 s SYN timeout, which "
            "is the ~1 s tail of those bursts (slow, not reset).", ""]


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = ["# Loopback load on `edge_demo serve`", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}  ",
             f"Machine: {report['machine']}  ",
             f"Load average (1/5/15 min) before: {report['load_before']}, after: {report['load_after']} "
             "(the 2 cores were shared with other processes, and the client threads run on them too)", "",
             f"{s['photos']} synthetic {s['photo_size'][0]}x{s['photo_size'][1]} JPEG photos, "
             f"{s['model']}; upload = {s['upload_bytes']:,} bytes. Each burst sends N requests at "
             "once (6/10 thumbnails, 2/10 searches by id, 1/10 upload searches, 1/10 page parts); "
             "the first burst at each N decodes every thumbnail (cold cache). Latency = connect "
             "to last byte of the answered requests, ms. Server log: "
             f"{report['server_log']['warnings']} warnings, {report['server_log']['errors']} errors, "
             f"{report['server_log']['tracebacks']} tracebacks.", "",
             *backlog_note(report),
             "| N | round | thumbnails | ok | reset | other | wall s | p50 | p90 | p99 | max |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in report["bursts"]:
        o, lat = b["outcomes"], b["latency_ms"]
        other = b["requests"] - o.get("ok", 0) - o.get("reset", 0)
        lines.append(f"| {b['concurrency']} | {b['round']} | {b['thumbnails']} | {o.get('ok', 0)} | "
                     f"{o.get('reset', 0)} | {other} | {b['wall_s']} | {lat.get('p50', '-')} | "
                     f"{lat.get('p90', '-')} | {lat.get('p99', '-')} | {lat.get('max', '-')} |")
    lines += ["", "Per kind: p50 / p99 ms under load, and p50 against the same kind sent one at a "
              "time (sequential, same run; cold bursts against cold sequential thumbnails).", "",
              "| N | round | kind | n | p50 | p99 | max | p50 / sequential p50 |", "|---|---|---|---|---|---|---|---|"]
    for b in report["bursts"]:
        for kind, st in b["by_kind"].items():
            if st.get("n"):
                lines.append(f"| {b['concurrency']} | {b['round']} | {kind} | {st['n']} | {st['p50']} | "
                             f"{st['p99']} | {st['max']} | {st.get('ratio_p50_vs_sequential', '-')} |")
    lines += ["", "| sequential kind | n | p50 | p90 | max | failed |", "|---|---|---|---|---|---|"]
    for kind, st in report["sequential"].items():
        lines.append(f"| {kind} | {st.get('n', 0)} | {st.get('p50', '-')} | {st.get('p90', '-')} | "
                     f"{st.get('max', '-')} | {st['failed']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    report = provenance("python benchmarks/edge_load.py " + " ".join(sys.argv[1:] if argv is None else argv))
    report["python"] = platform.python_version()
    report["load_before"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        report.update(run(args, Path(tmp)))
    report["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    write_json(args.json, report)
    if args.md:
        Path(args.md).write_text(markdown(report))


if __name__ == "__main__":
    main()
