"""Peak memory of the device commands on a bad-photo folder: this code against an older commit.

    python benchmarks/edge_memory.py [--before main] \\
        --json benchmarks/results/edge_memory.json --md benchmarks/results/edge_memory.md

Every case runs ``python -m edge_demo ...`` as a child process and reads its peak resident set
size from the kernel (``os.wait4``'s ``ru_maxrss``; no sampling, nothing missed). "before" is the
same command on a ``git archive`` of ``--before`` unpacked into a temporary folder, "after" this
working tree; both run in the same benchmark run, one after the other, on the same files.

Files (written by the benchmark, seeded): 24 ordinary photos (12-MP JPEGs and 1-MP PNGs), 30
bad files (truncated, zero-byte, text or random bytes under image names, header-only bombs, and
images under the wrong extension), and large, highly compressible PNGs: 81 MP (9000 x 9000,
under Pillow's 89.5-MP bomb limit, over this project's 64-MP decoding budget) and 60 MP (under
both). Cases: ``index`` on the folder alone, plus two 81-MP PNGs, plus two 60-MP PNGs; ``serve``
answering one ordinary upload, and four concurrent uploads of an 81-MP or a 60-MP PNG. The
model is an untrained ``small_cnn`` at 32 px exported to fp32 (the model only adds a constant).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INPUT_SIZE = 32
BIG = {"81mp": (9000, 9000), "60mp": (8944, 6708)}
UPLOADS = 4


# -- files -------------------------------------------------------------------------------------

# The files are made in a child process (--prepare): this one imports neither NumPy nor Pillow,
# so that it stays small (see floor_mb).

def _photo(width, height, seed):
    """Smooth light, shapes and sensor noise: compresses like a photo, not like a test card."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x, y, r = (int(v) for v in rng.integers(0, [width, height, width // 6]))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.int16)
    return Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))


def _flat_png(path: Path, size, seed) -> None:
    """A large image of flat shapes: a few MB as PNG, hundreds of MB decoded."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, (200, 220, 240))
    draw = ImageDraw.Draw(img)
    for _ in range(300):
        x, y, r = (int(v) for v in rng.integers(0, [size[0], size[1], 1500]))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    img.save(path, compress_level=1)


def _bomb_png() -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def write_photos(root: Path) -> dict:
    """The ordinary photos and the bad files under ``root``; returns counts by kind."""
    import numpy as np
    from PIL import Image

    (root / "camera").mkdir(parents=True)
    (root / "bad").mkdir()
    jpegs = []
    for i in range(4):
        photo = _photo(4000, 3000, i)
        for j in range(4):  # 16 distinct files from 4 renders: crops and mirror
            view = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if j % 2 else photo
            path = root / "camera" / f"IMG_{i}{j}.jpg"
            view.crop((j * 8, 0, 4000 - j * 8, 3000)).save(path, quality=88 + j)
            jpegs.append(path)
    for i in range(8):
        _photo(1280, 800, 10 + i).save(root / "camera" / f"screen_{i}.png")
    data = jpegs[0].read_bytes()
    png = (root / "camera" / "screen_0.png").read_bytes()
    bad = {f"truncated_{i}.jpg": data[:len(data) * (i + 1) // 10] for i in range(8)}
    bad |= {f"truncated_{i}.png": png[:len(png) * (i + 1) // 5] for i in range(4)}
    bad |= {f"empty_{i}{ext}": b"" for i, ext in enumerate([".jpg", ".png", ".jpeg", ".webp", ".gif", ".bmp"])}
    bad |= {f"notes_{i}{ext}": b"not a picture\n" * 40 for i, ext in enumerate([".jpg", ".png", ".tif"])}
    bad |= {f"random_{i}.jpg": np.random.default_rng(i).bytes(50_000) for i in range(3)}
    bad |= {f"bomb_{i}.png": _bomb_png() for i in range(2)}
    bad |= {"really_png.jpg": png, "really_jpeg.png": data, "really_jpeg.webp": data,
            "header_only.jpg": data[:400]}
    for name, content in bad.items():
        (root / "bad" / name).write_bytes(content)
    return {"ordinary": len(jpegs) + 8, "bad_or_odd": len(bad)}


def folder_with(base: Path, extra: list, dest: Path) -> Path:
    """``base`` plus ``extra`` files, as hard links (no copies of the large files)."""
    for path in base.rglob("*"):
        target = dest / path.relative_to(base)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    for path in extra:
        os.link(path, dest / path.name)
    return dest


def build_model(out: Path) -> Path:
    from export.convert import convert_model
    from mghash_tf.model import build_model as build

    model = build(backbone="small_cnn", layout="mg64", image_size=INPUT_SIZE)
    return convert_model(model, out, variants="fp32")["fp32"]


# -- measuring ---------------------------------------------------------------------------------

def _finish(proc, timeout) -> tuple:
    """(exit status, peak RSS in MB) of a child, reaped here so its rusage is its own."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss / 1024  # Linux: KiB
        if time.monotonic() > deadline:
            proc.kill()
            timeout = 10**9
        time.sleep(0.05)


def run_index(code: Path, model: Path, folder: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: nothing can block the child
        proc = subprocess.Popen([sys.executable, "-m", "edge_demo", "index", str(folder), "--model",
                                 str(model), "--out", str(out), "--no-progress"], cwd=code, env=_env(code),
                                stdout=subprocess.PIPE, stderr=err)
        stdout = proc.stdout.read().decode()
        status, peak = _finish(proc, 900)
        err.seek(0)
        stderr = err.read().decode()
    summary = (stdout.splitlines()[0] if stdout else stderr[-300:]).replace(f"{out.parent}{os.sep}", "")
    skipped = re.findall(r"^  skipped (\S+): (\w+)", stdout, re.M)
    return {"status": status, "peak_rss_mb": round(peak, 1), "seconds": round(time.perf_counter() - t0, 1),
            "summary": summary, "big_files": {n: r for n, r in skipped if "mp_" in n}}


def _upload(port, data, results, i):
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/api/search?k=5", body=data, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        response.read()
        results[i] = (response.status, round(time.perf_counter() - t0, 2))
    except OSError as e:
        results[i] = (f"{type(e).__name__}", round(time.perf_counter() - t0, 2))
    finally:
        conn.close()


def run_serve(code: Path, model: Path, index: Path, root: Path, upload: bytes, count: int) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "edge_demo", "serve", "--index", str(index),
                             "--model", str(model), "--root", str(root), "--port", "0"], cwd=code,
                            env=_env(code), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
    results = [None] * count
    threads = [threading.Thread(target=_upload, args=(port, upload, results, i)) for i in range(count)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    proc.send_signal(signal.SIGINT)
    status, peak = _finish(proc, 60)
    return {"status": status, "peak_rss_mb": round(peak, 1), "seconds": round(seconds, 1),
            "responses": [r[0] for r in results], "response_seconds": [r[1] for r in results]}


def _env(code: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(code)}


def checkout(ref: str, dest: Path) -> str:
    """``ref`` unpacked into ``dest`` (git archive: no worktree, no stash); returns its commit."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], check=True, capture_output=True,
                            text=True).stdout.strip()
    dest.mkdir(parents=True)
    git = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=git.stdout, check=True)  # streamed
    git.stdout.close()
    if git.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return commit


# -- report ------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    lines = ["# Peak memory of `edge_demo index` and `serve` on a bad-photo folder", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}  ",
             f"Machine: {report['machine']}, {report['memory_gb']} GB RAM  ",
             f"Load average (1/5/15 min) before: {report['load_before']}, after: {report['load_after']} "
             "(shared machine: times are indicative, peak RSS is not affected)  ",
             f"Before: `{report['before_ref']}` = {report['before_commit'][:10]}; after: this tree "
             f"({report['after_commit'][:10]}{' + changes' if report['after_dirty'] else ''}).", "",
             report["files_note"], "",
             "Peak RSS = the child's `ru_maxrss` (Python, NumPy, Pillow, LiteRT, the model and the "
             "decodes). after/before < 1 is less memory.", "",
             "| case | before MB | after MB | after/before | before: s, outcome | after: s, outcome |",
             "|---|---|---|---|---|---|"]
    for case in report["cases"]:
        b, a = case["before"], case["after"]
        lines.append(f"| {case['name']} | {b['peak_rss_mb']:.0f} | {a['peak_rss_mb']:.0f} | "
                     f"{a['peak_rss_mb'] / b['peak_rss_mb']:.2f} | {b['seconds']}, {_outcome(b)} | "
                     f"{a['seconds']}, {_outcome(a)} |")
    lines += ["", *report["notes"]]
    return "\n".join(lines) + "\n"


def _outcome(result: dict) -> str:
    if "responses" in result:
        return "responses " + " ".join(map(str, result["responses"]))
    big = ", ".join(f"{n.split('/')[-1]}: {r}" for n, r in sorted(result["big_files"].items()))
    counts = re.search(r"added (\d+).*skipped (\d+)", result["summary"])
    text = f"added {counts.group(1)}, skipped {counts.group(2)}" if counts else result["summary"][:80]
    return text + (f" ({big})" if big else "")


# -- main --------------------------------------------------------------------------------------

def prepare(work: Path) -> dict:
    """Model and files under ``work`` (run in a child: see :func:`main`); returns the manifest."""
    model = build_model(work / "model")
    base = work / "photos"
    counts = write_photos(base)
    big = {}
    for i, (name, size) in enumerate(BIG.items()):
        big[name] = [work / "big" / f"{name}_{j}.png" for j in range(2)]
        big[name][0].parent.mkdir(exist_ok=True)
        for j, path in enumerate(big[name]):
            _flat_png(path, size, 100 + 10 * i + j)
    for name in BIG:
        folder_with(base, big[name], work / f"photos_{name}")
    sizes = {name: f"{paths[0].stat().st_size / 1e6:.1f} MB" for name, paths in big.items()}
    return {"model": str(model), "counts": counts, "sizes": sizes}


def cases(work: Path) -> tuple:
    """({index case: folder}, {serve case: (upload bytes, concurrent uploads)})."""
    base = work / "photos"
    folders = {"index: photos + bad files": base}
    uploads = {"serve: 1 upload, 12-MP JPEG": ((base / "camera" / "IMG_00.jpg").read_bytes(), 1)}
    for name in BIG:
        folders[f"index: + two {name[:2]}-MP PNGs"] = work / f"photos_{name}"
        uploads[f"serve: {UPLOADS} concurrent uploads, {name[:2]}-MP PNG"] = (
            (work / "big" / f"{name}_0.png").read_bytes(), UPLOADS)
    return folders, uploads


def measure(code: Path, model: Path, work: Path, tag: str) -> dict:
    folders, uploads = cases(work)
    results = {}
    for i, (name, folder) in enumerate(folders.items()):
        results[name] = run_index(code, model, folder, work / f"{tag}_{i}.mgh")
        print(f"{tag:6s} {name}: {results[name]['peak_rss_mb']:.0f} MB", flush=True)
    for name, (data, count) in uploads.items():
        results[name] = run_serve(code, model, work / f"{tag}_0.mgh", work / "photos", data, count)
        print(f"{tag:6s} {name}: {results[name]['peak_rss_mb']:.0f} MB {results[name]['responses']}", flush=True)
    return results


def floor_mb() -> float:
    """Peak RSS a child that does nothing reports: the kernel counts a child started by vfork at
    no less than the parent's own peak, so this process stays small (model and files are made
    by a child of their own) and says how small."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    return round(_finish(proc, 60)[1], 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="main", help="git ref of the code to compare with")
    p.add_argument("--json")
    p.add_argument("--md")
    p.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # the child that writes the files
    args = p.parse_args(argv)
    if args.prepare:
        (args.prepare / "manifest.json").write_text(json.dumps(prepare(args.prepare)))
        return 0
    if not (args.json and args.md):
        p.error("--json and --md are required")
    return run(args, argv)


def run(args, argv) -> int:
    command = "python benchmarks/edge_memory.py " + " ".join(map(shlex.quote, argv or sys.argv[1:]))
    report = {"command": command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()} {platform.platform()}, {os.cpu_count()} CPUs, "
                         f"Python {sys.version.split()[0]}"}
    report["load_before"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="edge_memory_") as tmp:
        work = Path(tmp)
        before = work / "before"
        report |= {"before_ref": args.before, "before_commit": checkout(args.before, before),
                   "after_commit": _git("rev-parse", "HEAD"), "after_dirty": _dirty(args.json, args.md)}
        quiet = {"TF_CPP_MIN_LOG_LEVEL": "2", **_env(ROOT)}
        subprocess.run([sys.executable, __file__, "--prepare", str(work)], check=True, cwd=ROOT, env=quiet)
        setup = json.loads((work / "manifest.json").read_text())
        model = Path(setup["model"])
        report["child_floor_mb"] = floor_mb()
        runs = {"before": measure(before, model, work, "before"), "after": measure(ROOT, model, work, "after")}
    report["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    report["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    report["files_note"] = (
        f"Folder: {setup['counts']['ordinary']} ordinary photos (16 JPEGs of 12 MP, 8 PNGs of 1 MP) and "
        f"{setup['counts']['bad_or_odd']} bad or odd files (12 truncated, 6 empty, 3 text and 3 random "
        "bytes under image names, 2 header-only 900-MP bombs, 4 under the wrong extension, of which 3 "
        f"decode). Large PNGs: 81 MP ({BIG['81mp'][0]}x{BIG['81mp'][1]}, {setup['sizes']['81mp']}) and "
        f"60 MP ({BIG['60mp'][0]}x{BIG['60mp'][1]}, {setup['sizes']['60mp']}), RGB. Model: small_cnn, "
        f"{INPUT_SIZE} px, fp32, untrained.")
    report["cases"] = [{"name": name, "before": runs["before"][name], "after": runs["after"][name]}
                       for name in runs["after"]]
    report["notes"] = [
        f"A child that does nothing reports {report['child_floor_mb']:.0f} MB here (the floor of "
        "every number above: see `floor_mb`).",
        "After: MAX_DECODE_PIXELS = 64,000,000 decoded pixels per file and per process at once "
        "(mghash_tf/core/images.py); non-JPEG images are box-reduced strip by strip while converting; "
        "the server decodes at most 2 uploads at once (a third waits up to 10 s, then 503), and "
        "answers an image over the budget with 413."]
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    Path(args.md).write_text(markdown(report))
    print(markdown(report))
    return 0


def _dirty(*outputs) -> bool:
    """Whether the tree differs from HEAD, this run's own output files aside."""
    excluded = [f":(exclude){Path(p).resolve().relative_to(ROOT)}" for p in outputs
                if Path(p).resolve().is_relative_to(ROOT)]
    return bool(_git("status", "--porcelain", "--", ".", *excluded))


def _git(*args) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
