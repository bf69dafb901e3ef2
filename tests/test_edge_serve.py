"""``edge_demo serve`` over real HTTP: a server on port 0 in a thread, a tiny photo folder and
a tiny .tflite model (the fixtures of test_edge_cli). Every bad-request case answers 4xx with a
short JSON message; searches stay consistent while the index file is replaced underneath."""

import contextlib
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
from PIL import Image

from edge_demo import photos, server
from mghash_tf.core.encoder import TFLiteEncoder
from mghash_tf.core.index import HammingIndex
from no_tf import no_tf_env
from test_edge_cli import GOOD, REPO, _bomb_png, _jpeg_bytes, _noise, make_photos, model  # noqa: F401

MAX_UPLOAD = 200_000


@contextlib.contextmanager
def running_server(index_path, model_path, root, **kwargs):
    """A served ``make_server`` on a free port; yields it, shuts it down afterwards."""
    httpd = server.make_server(index_path, model_path, root, port=0, **kwargs)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def request(httpd, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one request on a fresh connection; ``path`` sent verbatim."""
    host, port = httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def get_json(httpd, path, method="GET", body=None, headers=None):
    status, head, data = request(httpd, method, path, body, headers)
    assert head["Content-Type"].startswith("application/json"), (path, head)
    return status, json.loads(data)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("served") / "photos"
    make_photos(root)
    return root


@pytest.fixture(scope="module")
def index_file(library, model):
    out = library.parent / "photos.mgh"
    photos.index_folder(library, TFLiteEncoder(model), out)
    return out


@pytest.fixture(scope="module")
def httpd(index_file, model, library):
    with running_server(index_file, model, library, max_upload=MAX_UPLOAD) as s:
        yield s


@pytest.fixture(scope="module")
def ids(index_file):
    index = HammingIndex.load(index_file)
    return dict(zip(index.names, index.ids.tolist()))


def _multipart(fields):
    """A multipart/form-data body from ``[(name, filename or None, content type, bytes)]``."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, filename, content_type, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                     f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_stats_describe_index_and_model(httpd, model):
    status, stats = get_json(httpd, "/api/stats")
    enc = TFLiteEncoder(model)
    assert status == 200
    assert stats["items"] == len(GOOD) and stats["bits"] == enc.bits == 32
    assert stats["fingerprint"] == photos.index_fingerprint(enc.description)
    assert stats["tta"] is False
    assert stats["model"]["fingerprint"] == enc.description["fingerprint"]
    assert [s["name"] for s in stats["layout"]["segments"]] == list(enc.layout.names)
    assert stats["granularities"][:2] == ["fine", "coarse"]
    assert stats["max_upload_bytes"] == MAX_UPLOAD


def test_items_pages_cover_the_index_once(httpd, ids):
    seen = []
    for offset in range(0, 9, 3):
        status, page = get_json(httpd, f"/api/items?offset={offset}&limit=3")
        assert status == 200 and page["total"] == len(GOOD)
        seen += page["items"]
    assert {i["name"]: i["id"] for i in seen} == ids and len(seen) == len(GOOD)
    assert get_json(httpd, "/api/items?offset=100")[1]["items"] == []


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "offset=-1", "offset=1.5",
                                   "limit=1&limit=2"])
def test_items_bad_parameters_are_400(httpd, query):
    status, body = get_json(httpd, f"/api/items?{query}")
    assert status == 400 and body["error"] and len(body["error"]) < 300


def test_image_by_id_is_a_jpeg_thumbnail_of_that_photo(httpd, ids, library):
    for name, item_id in ids.items():
        status, head, data = request(httpd, "GET", f"/image/{item_id}?size=32")
        assert status == 200 and head["Content-Type"] == "image/jpeg"
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG" and max(img.size) <= 32
            thumb = np.asarray(img.convert("RGB").resize((8, 8)), np.float32)
        with Image.open(library / name) as original:
            expected = np.asarray(original.convert("RGB").resize((8, 8)), np.float32)
        if name in ("cats/a.png", "dogs/c.png", "dogs/sub/d.bmp"):  # plain RGB sources
            assert np.abs(thumb - expected).mean() < 20, name


@pytest.mark.parametrize("path, status", [
    ("/image/999999", 404), ("/image/abc", 404), ("/image/-1", 404), ("/image/1.0", 404),
    ("/image/", 404), ("/image/0?size=5", 400), ("/image/0?size=big", 400),
])
def test_image_bad_ids_and_sizes(httpd, path, status):
    got, body = get_json(httpd, path)
    assert got == status and body["error"]


@pytest.mark.parametrize("path", [
    "/image/../../etc/passwd", "/image/%2e%2e/%2e%2e/etc/passwd", "/image/..%2f..%2fetc%2fpasswd",
    "/image/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/image/0/../../../etc/passwd", "/image/0%2f..%2f..",
    "/image/..%5c..%5cwindows", "/image/0%00", "//etc/passwd", "/../../etc/passwd",
    "/static/../server.py", "/static/%2e%2e%2fserver.py", "/static/..%2f..%2fphotos.py",
    "/static/%2e%2e/__init__.py", "/image/%252e%252e%252fetc%252fpasswd",
])
def test_traversal_attempts_are_refused(httpd, path):
    status, head, data = request(httpd, "GET", path)
    assert 400 <= status < 500, (path, status)
    assert b"root:" not in data and b"import" not in data
    assert "error" in json.loads(data)


def test_index_names_leaving_the_root_are_never_served(model, library, tmp_path):
    """A tampered index (a ``..`` name) or a symlink inside the folder must not reach outside."""
    secret = tmp_path / "secret.png"
    Image.fromarray(_noise(50)).save(secret)
    root = tmp_path / "root"
    root.mkdir()
    Image.fromarray(_noise(51)).save(root / "ok.png")
    (root / "link.png").symlink_to(secret)
    enc = TFLiteEncoder(model)
    index = HammingIndex(enc.bits, enc.layout, fingerprint=photos.index_fingerprint(enc.description))
    names = ["ok.png", "../secret.png", str(secret), "link.png"]
    index.add(np.zeros((len(names), 1), np.uint64), names=names)
    index.save(tmp_path / "tampered.mgh")
    with running_server(tmp_path / "tampered.mgh", model, root) as s:
        assert request(s, "GET", "/image/0")[0] == 200
        for item_id in (1, 2, 3):
            status, _, data = request(s, "GET", f"/image/{item_id}")
            assert status == 404 and json.loads(data)["error"] == "photo not available"


def test_search_by_id_matches_the_cli_query_at_each_granularity(httpd, ids, library, model, index_file):
    enc = TFLiteEncoder(model)
    index = photos.load_index_for(index_file, enc)
    for spec in ("fine", "coarse", "scales:coarse=1,fine=0.5", "segment:fine"):
        for name, item_id in ids.items():
            status, answer = get_json(httpd, f"/api/search?id={item_id}&k=5&granularity={spec}")
            assert status == 200, answer
            got = [(r["name"], r["distance"]) for r in answer["results"]]
            expected = photos.query_image(library / name, index, enc, 5, spec)
            assert got == [(n, pytest.approx(d)) for n, d in expected], (spec, name)
            assert answer["query"] == {"id": item_id, "name": name}
            # Part of a code can tie (the 8-bit coarse segment of an untrained model); the whole
            # code cannot (test_edge_cli checks the photos are distinct).
            assert answer["results"][0]["distance"] == 0
            assert item_id in [r["id"] for r in answer["results"] if r["distance"] == 0]
            if spec == "fine":
                assert answer["results"][0]["id"] == item_id
            assert [r["rank"] for r in answer["results"]] == [1, 2, 3, 4, 5]
            assert answer["query_ms"] >= 0 and "search_ms" in answer["timings"]
    _, answer = get_json(httpd, f"/api/search?id={ids['cats/a.png']}&k=1000")
    assert len(answer["results"]) == len(GOOD)


def test_upload_search_returns_the_same_image_first(httpd, library):
    for name in ("cats/b.jpg", "dogs/c.png", "dogs/sub/d.bmp"):
        data = (library / name).read_bytes()
        status, answer = get_json(httpd, "/api/search?k=3", "POST", data,
                                  {"Content-Type": "application/octet-stream"})
        assert status == 200, answer
        assert (answer["results"][0]["name"], answer["results"][0]["distance"]) == (name, 0)
        assert answer["results"][1]["distance"] > 0 and answer["query"] is None
        assert set(answer["timings"]) == {"decode_ms", "encode_ms", "search_ms"}
    # Multipart, with a lying file name and content type: only the bytes count.
    body, headers = _multipart([("note", None, "text/plain", b"a text field comes first"),
                                ("image", "notes.txt", "text/plain", (library / "dogs/c.png").read_bytes())])
    spec = "scales:coarse=1,fine=1"  # the whole code, by another route: no ties at distance 0
    status, answer = get_json(httpd, f"/api/search?granularity={spec}", "POST", body, headers)
    assert status == 200 and answer["results"][0]["name"] == "dogs/c.png"
    assert answer["granularity"] == spec and answer["results"][1]["distance"] > 0


def test_uploads_to_a_tta_index_are_encoded_with_tta(library, model, tmp_path, monkeypatch):
    out = tmp_path / "tta.mgh"
    photos.index_folder(library, TFLiteEncoder(model), out, tta=True)
    seen = []
    original = TFLiteEncoder.encode_bits

    def recording(self, images, *, tta=False):
        seen.append(tta)
        return original(self, images, tta=tta)

    monkeypatch.setattr(TFLiteEncoder, "encode_bits", recording)
    enc = TFLiteEncoder(model)
    index = photos.load_index_for(out, enc, tta=True)
    with running_server(out, model, library) as s:
        assert get_json(s, "/api/stats")[1]["tta"] is True
        for name in ("cats/b.jpg", "dogs/sub/d.bmp"):
            seen.clear()
            status, answer = get_json(s, "/api/search?k=4", "POST", (library / name).read_bytes(),
                                      {"Content-Type": "application/octet-stream"})
            assert status == 200 and seen == [True], answer
            got = [(r["name"], r["distance"]) for r in answer["results"]]
            assert got[0] == (name, 0)
            assert got == photos.query_image(library / name, index, enc, 4, tta=True)


def test_oversize_upload_is_413(httpd, library):
    big = os.urandom(MAX_UPLOAD + 1)
    status, body = get_json(httpd, "/api/search", "POST", big, {"Content-Type": "image/jpeg"})
    assert status == 413 and "too large" in body["error"]
    # A huge declared length is refused before any body is read.
    host, port = httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest("POST", "/api/search")
    conn.putheader("Content-Length", str(10 ** 10))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "too large" in json.loads(response.read())["error"]
    conn.close()
    assert get_json(httpd, "/api/stats")[0] == 200  # the server keeps serving


def test_upload_over_the_pixel_budget_is_413(httpd, library, monkeypatch):
    from mghash_tf.core import images
    from mghash_tf.core.budget import Budget

    monkeypatch.setattr(images, "DECODE_BUDGET", Budget(1000))
    data = (library / "cats/a.png").read_bytes()  # 40 x 40
    status, body = get_json(httpd, "/api/search", "POST", data, {"Content-Type": "image/png"})
    assert status == 413 and body["error"] == "the upload decodes to 1600 pixels; the limit is 1000"


def test_uploads_beyond_the_decode_cap_wait_then_get_503(httpd, library, monkeypatch):
    from edge_demo import app as app_module

    release, entered = threading.Event(), threading.Semaphore(0)
    original = photos.prepare_query

    def slow(source, input_size):
        entered.release()
        release.wait(20)
        return original(source, input_size)

    monkeypatch.setattr(photos, "prepare_query", slow)
    monkeypatch.setattr(app_module, "UPLOAD_WAIT_S", 0.2)
    data = (library / "cats/b.jpg").read_bytes()
    results = []

    def upload():
        results.append(get_json(httpd, "/api/search?k=1", "POST", data, {"Content-Type": "image/jpeg"}))

    decoding = [threading.Thread(target=upload) for _ in range(app_module.UPLOAD_DECODES)]
    for t in decoding:
        t.start()
    for _ in decoding:  # every slot is taken by a decode that cannot finish yet
        assert entered.acquire(timeout=20)
    status, body = get_json(httpd, "/api/search?k=1", "POST", data, {"Content-Type": "image/jpeg"})
    assert status == 503 and "2 uploads are being decoded" in body["error"]
    release.set()
    for t in decoding:
        t.join(20)
    assert [(s, b["results"][0]["name"]) for s, b in results] == [(200, "cats/b.jpg")] * 2
    status, body = get_json(httpd, "/api/search?k=1", "POST", data, {"Content-Type": "image/jpeg"})
    assert status == 200  # the slots are free again


@pytest.mark.parametrize("data", [b"not a picture\n", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
                                  _jpeg_bytes(_noise(10, 64))[:600], _bomb_png(), b"GIF89a"])
def test_non_image_upload_is_400(httpd, data):
    status, body = get_json(httpd, "/api/search", "POST", data, {"Content-Type": "image/png"})
    assert status == 400 and body["error"] == "the upload is not a readable image"


def test_upload_format_errors_are_4xx(httpd, library):
    assert get_json(httpd, "/api/search", "POST", b"")[0] == 400
    body, headers = _multipart([("other", None, "text/plain", b"x")])
    status, answer = get_json(httpd, "/api/search", "POST", body, headers)
    assert status == 400 and "image" in answer["error"]
    status, answer = get_json(httpd, "/api/search", "POST", b"--x--",
                              {"Content-Type": "multipart/form-data; boundary=zzz"})
    assert status == 400
    host, port = httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest("POST", "/api/search")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411
    conn.close()


@pytest.mark.parametrize("query, status, message", [
    ("k=0", 400, "'k'"), ("k=-1", 400, "'k'"), ("k=abc", 400, "'k'"), ("k=1001", 400, "'k'"),
    ("k=1e3", 400, "'k'"), ("granularity=medium", 400, "medium"),
    ("granularity=scales:coarse=-1", 400, "coarse=-1"), ("granularity=scales:fine=x", 400, "fine=x"),
    ("", 400, "'id' is required"), ("id=abc", 400, "'id'"), ("id=1&id=2", 400, "2 times"),
    ("id=424242", 404, "424242"),
])
def test_bad_search_parameters(httpd, ids, query, status, message):
    if query.startswith(("k=", "granularity=")):
        query += f"&id={ids['cats/a.png']}"
    got, body = get_json(httpd, f"/api/search?{query}")
    assert got == status and message in body["error"], body


@pytest.mark.parametrize("query, message", [
    ("k=0", "'k'"), ("k=x", "'k'"), ("granularity=medium", "medium"), ("granularity=scales:", "scales"),
])
def test_bad_upload_search_parameters_are_400_before_decoding(httpd, query, message):
    status, body = get_json(httpd, f"/api/search?{query}", "POST", b"not even an image")
    assert status == 400 and message in body["error"], body


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/api/nope", 404), ("GET", "/nope", 404), ("POST", "/api/stats", 405),
    ("PUT", "/api/search", 405), ("DELETE", "/", 405), ("GET", "/static/missing.js", 404),
])
def test_unknown_routes_and_methods(httpd, method, path, status):
    got, body = get_json(httpd, path, method, b"" if method != "GET" else None)
    assert got == status and body["error"]


def test_page_and_assets_are_served_locally(httpd):
    status, head, page = request(httpd, "GET", "/")
    assert status == 200 and head["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in head["Content-Security-Policy"]
    html = page.decode()
    assert "/static/app.js" in html and "/static/style.css" in html
    assert "http://" not in html and "https://" not in html  # no CDN
    for asset in ("app.js", "style.css"):
        status, _, data = request(httpd, "GET", f"/static/{asset}")
        assert status == 200 and data and b"http://" not in data and b"https://" not in data


def test_foreign_host_header_is_refused(httpd):
    status, body = get_json(httpd, "/api/stats", headers={"Host": "attacker.example:8080"})
    assert status == 403 and "localhost" in body["error"]
    assert get_json(httpd, "/api/stats", headers={"Host": "localhost"})[0] == 200


def test_internal_errors_are_a_generic_500_and_logged(httpd, monkeypatch, caplog):
    def broken(self):
        raise RuntimeError("secret detail /home/someone")

    monkeypatch.setattr(server.App, "stats", broken)
    with caplog.at_level("ERROR", logger="edge_demo.server"):
        status, head, data = request(httpd, "GET", "/api/stats")
    assert status == 500 and json.loads(data) == {"error": "internal server error"}
    assert b"secret" not in data and b"Traceback" not in data
    assert any("secret detail" in r.getMessage() or (r.exc_info and "secret detail" in str(r.exc_info[1]))
               for r in caplog.records)


def test_concurrent_searches_stay_consistent_while_the_index_is_replaced(library, model, index_file,
                                                                         ids, tmp_path):
    """Threads search by id and by upload while the served file flips between the full index,
    a 5-photo index and an unreadable file; every answer must come from one whole index."""
    served = tmp_path / "served.mgh"
    shutil.copy(index_file, served)
    full = HammingIndex.load(index_file)
    dropped = {"cats/cmyk.jpg", "dogs/gray.png", "dogs/rgba.png"}
    half = HammingIndex.load(index_file)
    half.remove([ids[n] for n in dropped])
    half.save(tmp_path / "half.mgh")
    versions = [index_file, tmp_path / "half.mgh"]
    (tmp_path / "junk.mgh").write_bytes(b"not an index")
    query_name = "cats/b.jpg"
    upload = (library / query_name).read_bytes()
    errors, answers = [], []
    stop = threading.Event()

    def worker(n):
        try:
            while not stop.is_set():
                if n % 2:
                    status, a = get_json(httpd, f"/api/search?id={ids[query_name]}&k=6")
                else:
                    status, a = get_json(httpd, "/api/search?k=6", "POST", upload)
                assert status == 200, a
                answers.append(a)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    with running_server(served, model, library) as httpd:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            for step in range(24):
                source = versions[step % 2] if step % 6 != 5 else tmp_path / "junk.mgh"
                tmp = served.with_suffix(".tmp")
                shutil.copy(source, tmp)
                os.replace(tmp, served)  # as `index` does: an atomic rename
                # Let a few requests see this version.
                for _ in range(2):
                    answers_before = len(answers)
                    while len(answers) == answers_before and not errors and all(t.is_alive() for t in threads):
                        stop.wait(0.005)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        final = get_json(httpd, "/api/stats")[1]["items"]
    assert not errors, errors[:3]
    sizes = {a["items"] for a in answers}
    assert sizes == {len(full), len(half)}, sizes
    name_of = dict(zip(full.ids.tolist(), full.names))
    for a in answers:
        results = a["results"]
        names = [r["name"] for r in results]
        assert len(results) == min(6, a["items"]) and names[0] == query_name and results[0]["distance"] == 0
        assert [r["distance"] for r in results] == sorted(r["distance"] for r in results)
        assert all(name_of[r["id"]] == r["name"] for r in results)
        if a["items"] == len(half):
            assert not dropped & set(names), names
    # Step 23 wrote junk, so the server kept step 22's file: the full index.
    assert final == len(full)


def test_searches_during_a_real_reindex_see_each_version_whole(library, model, tmp_path):
    """``index`` run on the served folder while photos are added: answers grow 8 -> 11 items,
    and every answer is a valid ranking over one version."""
    root = tmp_path / "photos"
    shutil.copytree(library, root)
    enc = TFLiteEncoder(model)
    served = tmp_path / "photos.mgh"
    photos.index_folder(root, enc, served)
    upload = (root / "cats/b.jpg").read_bytes()
    answers, errors = [], []
    stop = threading.Event()

    def worker():
        try:
            while not stop.is_set():
                status, a = get_json(httpd, "/api/search?k=20", "POST", upload)
                assert status == 200, a
                answers.append(a)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    # The server gets its own interpreter (a path): `index` runs in another process in real use,
    # and one TFLite interpreter must not be driven from two threads.
    with running_server(served, model, root) as httpd:
        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for n in range(3):
                Image.fromarray(_noise(60 + n)).save(root / f"new{n}.png")
                photos.index_folder(root, enc, served)
                seen = len(answers)
                while len(answers) < seen + 3 and not errors:
                    stop.wait(0.005)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        final = get_json(httpd, "/api/stats")[1]
    assert not errors, errors[:3]
    index = HammingIndex.load(served)
    name_of = dict(zip(index.ids.tolist(), index.names))
    assert final["items"] == len(GOOD) + 3 == len(index)
    assert {a["items"] for a in answers} == {8, 9, 10, 11}
    for a in answers:
        results = a["results"]
        assert len(results) == a["items"] and results[0]["name"] == "cats/b.jpg"
        assert results[0]["distance"] == 0
        assert [r["distance"] for r in results] == sorted(r["distance"] for r in results)
        assert all(name_of[r["id"]] == r["name"] for r in results)  # ids are never reused
        # k covers every item, so an answer lists exactly the photos of one version.
        added = a["items"] - len(GOOD)
        assert {r["name"] for r in results} == set(GOOD) | {f"new{n}.png" for n in range(added)}


def test_serve_command_runs_where_tensorflow_cannot_be_imported(index_file, model, library, tmp_path):
    env = no_tf_env(tmp_path, REPO)
    proc = subprocess.Popen([sys.executable, "-m", "edge_demo", "serve", "--index", str(index_file),
                             "--model", str(model), "--root", str(library), "--port", "0"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, proc.stderr.read() if proc.poll() is not None else line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/stats")
        assert json.loads(conn.getresponse().read())["items"] == len(GOOD)
        conn.close()
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("argv, message", [
    (["--root", "missing-folder"], "--root must be the indexed photo folder"),
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be > 0"),
])
def test_serve_command_bad_arguments(index_file, model, library, capsys, argv, message):
    from edge_demo.cli import main

    base = {"--index": str(index_file), "--model": str(model), "--root": str(library)}
    base.update(dict(zip(argv[::2], argv[1::2])))
    assert main(["serve", *[x for kv in base.items() for x in kv]]) == 2
    assert message in capsys.readouterr().err


def test_a_burst_of_connections_waits_in_the_backlog_instead_of_being_reset(index_file, model, library):
    """60 clients connect before the server accepts anything (a page asking for 60 thumbnails):
    all are queued by the listen backlog, then all are answered."""
    import socket

    httpd = server.make_server(index_file, model, library, port=0)
    host, port = httpd.server_address[:2]
    clients, thread = [], None
    try:
        for _ in range(60):
            clients.append(socket.create_connection((host, port), timeout=2))  # times out past the backlog
        for c in clients:
            c.sendall(f"GET /api/stats HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        for c in clients:
            c.settimeout(30)
            status_line = c.recv(12)
            assert status_line.startswith(b"HTTP/") and status_line.endswith(b" 200"), status_line
    finally:
        for c in clients:
            c.close()
        if thread is not None:
            httpd.shutdown()
        httpd.server_close()


# --- slow clients ------------------------------------------------------------------------------

HEADER_S, BODY_S = 0.6, 0.6


@pytest.fixture
def quick_timeouts(index_file, model, library):
    """A server whose read bounds are 0.6 s, so a stalled client is answered within a second."""
    with running_server(index_file, model, library, max_upload=MAX_UPLOAD, header_timeout_s=HEADER_S,
                        body_timeout_s=BODY_S) as s:
        yield s


def _raw(httpd, chunks, pause=0.0):
    """Send ``chunks`` on a raw socket (``pause`` s apart) until the server answers, then read
    until it closes; returns (everything received, seconds from the last chunk to the close)."""
    import select
    import socket
    import time

    with socket.create_connection(httpd.server_address[:2], timeout=10) as sock:
        for i, chunk in enumerate(chunks):
            if i and pause:
                time.sleep(pause)
            if select.select([sock], [], [], 0)[0]:
                break  # answered already: more bytes would only meet a closed socket
            sock.sendall(chunk)
        t0 = time.monotonic()
        received = b""
        while True:
            got = sock.recv(65536)
            if not got:
                return received, time.monotonic() - t0
            received += got


def _status_and_json(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.decode("latin-1"), json.loads(body)


def _server_warnings(caplog):
    return [r for r in caplog.records if r.name.startswith("edge_demo") and r.levelno >= 30]


def test_a_body_shorter_than_its_content_length_is_408_without_a_traceback(quick_timeouts, caplog, capfd):
    host, port = quick_timeouts.server_address[:2]
    head = (f"POST /api/search HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: 100000\r\n\r\n").encode()
    with caplog.at_level("INFO", logger="edge_demo"):
        raw, waited = _raw(quick_timeouts, [head + b"\x89PNG\r\n\x1a\n" + b"\x00" * 100])
    status, text, body = _status_and_json(raw)
    assert status == 408 and "request body" in body["error"], raw[:300]
    assert "Connection: close" in text
    assert BODY_S * 0.8 < waited < BODY_S + 5  # answered at the bound, not at a 30 s socket timeout
    warnings = _server_warnings(caplog)
    assert len(warnings) == 1 and "408" in warnings[0].getMessage(), [r.getMessage() for r in warnings]
    assert not any(r.exc_info for r in caplog.records) and "Traceback" not in capfd.readouterr().err
    assert get_json(quick_timeouts, "/api/stats")[0] == 200  # the server keeps serving


@pytest.mark.parametrize("chunks, pause", [
    ([b"GET /api/stats HTTP/1.1\r\nHost: localhost\r\n"], 0.0),  # headers never end
    ([b"GET /api/st"], 0.0),                                      # the request line never ends
    # A byte every 0.1 s: each wait is short, the whole read is not. A per-wait timeout never fires.
    ([bytes([c]) for c in b"GET /api/stats HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaa"], 0.1),
])
def test_stalled_or_trickled_headers_are_408(quick_timeouts, caplog, capfd, chunks, pause):
    with caplog.at_level("INFO", logger="edge_demo"):
        raw, _ = _raw(quick_timeouts, chunks, pause)
    status, text, body = _status_and_json(raw)
    assert status == 408 and "request line and headers" in body["error"], raw[:300]
    assert len(_server_warnings(caplog)) == 1
    assert not any(r.exc_info for r in caplog.records) and "Traceback" not in capfd.readouterr().err


def test_a_silent_connection_is_closed_after_the_header_bound(quick_timeouts, caplog):
    host, port = quick_timeouts.server_address[:2]
    with caplog.at_level("INFO", logger="edge_demo"):
        raw, waited = _raw(quick_timeouts, [b""])
        # An idle keep-alive connection too: one full answer, then the close.
        kept, idle = _raw(quick_timeouts, [f"GET /api/stats HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()])
    assert raw == b"" and HEADER_S * 0.8 < waited < HEADER_S + 5
    assert kept.startswith(b"HTTP/1.1 200 ") and kept.count(b"HTTP/1.1") == 1
    assert HEADER_S * 0.8 < idle < HEADER_S + 5
    assert _server_warnings(caplog) == []  # closing an idle connection is routine


def test_a_slow_upload_within_the_bound_is_answered(quick_timeouts, library):
    host, port = quick_timeouts.server_address[:2]
    data = (library / "cats/b.jpg").read_bytes()
    head = (f"POST /api/search?k=1 HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    raw, _ = _raw(quick_timeouts, [head, data[:100], data[100:]], pause=BODY_S / 4)
    status, _, body = _status_and_json(raw)
    assert status == 200 and body["results"][0]["name"] == "cats/b.jpg"


@pytest.mark.parametrize("kwargs", [{"header_timeout_s": 0}, {"body_timeout_s": -1},
                                    {"header_timeout_s": "5"}, {"body_timeout_s": True}])
def test_read_bounds_must_be_positive_seconds(index_file, model, library, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        server.make_server(index_file, model, library, port=0, **kwargs)


# --- thumbnails --------------------------------------------------------------------------------

def test_thumbnails_are_cached_until_the_photo_changes(index_file, model, library, ids, tmp_path,
                                                       monkeypatch):
    from edge_demo import app as app_module

    root = tmp_path / "photos"
    shutil.copytree(library, root)
    made = []
    original = app_module.encode_thumbnail

    def counting(path, size):
        made.append((path.name, size))
        return original(path, size)

    monkeypatch.setattr(app_module, "encode_thumbnail", counting)
    item = ids["cats/b.jpg"]
    with running_server(index_file, model, root) as s:
        first = request(s, "GET", f"/image/{item}?size=32")
        again = request(s, "GET", f"/image/{item}?size=32")
        assert first[0] == again[0] == 200 and first[2] == again[2]
        assert made == [("b.jpg", 32)]  # the second answer came from the cache
        # The photo is edited in place: a new thumbnail, of the new picture.
        (root / "cats/b.jpg").write_bytes(_jpeg_bytes(np.full((40, 40, 3), (250, 10, 10), np.uint8)))
        st = (root / "cats/b.jpg").stat()
        os.utime(root / "cats/b.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        status, _, edited = request(s, "GET", f"/image/{item}?size=32")
        assert status == 200 and edited != first[2] and made == [("b.jpg", 32)] * 2
        with Image.open(io.BytesIO(edited)) as img:
            assert np.abs(np.asarray(img.convert("RGB"), np.float32) - (250, 10, 10)).mean() < 10
        assert s.app.thumbs.nbytes == len(edited) and len(s.app.thumbs) == 1


def test_fifty_concurrent_mixed_requests_are_all_answered(httpd, ids):
    """The bounded version of benchmarks/edge_load.py: 50 requests released at once (thumbnails,
    searches by id, uploads, page parts), each on its own connection: all 200 with valid answers."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import edge_load

    upload_name = "cats/b.jpg"
    library = httpd.app.root
    requests = edge_load.plan(50, sorted(ids.values()), (library / upload_name).read_bytes(), 48)
    records = edge_load.fire(*httpd.server_address[:2], requests, timeout=60)
    for r in records:
        edge_load.check_answer(r, upload_name)
    assert [r["outcome"] for r in records] == ["ok"] * 50, [(r["path"], r["outcome"], r.get("error"))
                                                            for r in records if r["outcome"] != "ok"]
    assert {r["kind"] for r in records} == set(edge_load.KINDS)
    summary = edge_load.summarise(records)
    assert summary["outcomes"] == {"ok": 50} and summary["latency_ms"]["n"] == 50
