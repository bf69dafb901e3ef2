"""benchmarks/edge_load.py and benchmarks/edge_thumbnails.py: the request mix, the answer check,
the statistics, and a small thumbnail benchmark run (no TensorFlow, ~1 s)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import edge_load  # noqa: E402
import edge_thumbnails  # noqa: E402


def test_plan_follows_the_mix_and_spreads_thumbnails_over_photos():
    requests = edge_load.plan(200, [7, 8, 9, 10], b"jpeg", 100)
    kinds = [r[0] for r in requests]
    assert {k: kinds.count(k) for k in edge_load.KINDS} == {"thumb": 120, "search": 40, "upload": 20, "page": 20}
    thumbs = [r[2] for r in requests if r[0] == "thumb"]
    assert thumbs[:5] == ["/image/7?size=100", "/image/8?size=100", "/image/9?size=100",
                          "/image/10?size=100", "/image/7?size=100"]
    uploads = [r for r in requests if r[0] == "upload"]
    assert all(r[1] == "POST" and r[3] == b"jpeg" for r in uploads)
    assert [r[2] for r in requests if r[0] == "page"][:6] == list(edge_load.PAGE_PATHS) + ["/"]


def test_latency_percentiles_are_numpy_linear():
    # Ranks 0..3 of [1, 2, 3, 4]: p50 at 1.5 -> 2.5, p90 at 2.7 -> 3.7, p99 at 2.97 -> 3.97.
    assert edge_load.latency_stats([4, 1, 3, 2]) == {"n": 4, "p50": 2.5, "p90": 3.7, "p99": 3.97, "max": 4}
    assert edge_load.latency_stats([]) == {"n": 0}


def _record(kind, path, body, outcome="ok"):
    return {"kind": kind, "path": path, "outcome": outcome, "body": body}


@pytest.mark.parametrize("record, valid", [
    (_record("thumb", "/image/1", b"\xff\xd8\xff\xe0rest"), True),
    (_record("thumb", "/image/1", b"{\"error\": 1}"), False),
    (_record("search", "/api/search?id=5&k=10",
             json.dumps({"results": [{"id": 6, "distance": 0}, {"id": 5, "distance": 0}]}).encode()), True),
    (_record("search", "/api/search?id=5&k=10",
             json.dumps({"results": [{"id": 6, "distance": 0}, {"id": 5, "distance": 1}]}).encode()), False),
    # k photos share the query's code and fill the answer: the query may be cut, legitimately.
    (_record("search", "/api/search?id=5&k=2",
             json.dumps({"results": [{"id": 6, "distance": 0}, {"id": 7, "distance": 0}]}).encode()), True),
    (_record("search", "/api/search?id=5&k=2", json.dumps({"results": []}).encode()), False),
    (_record("upload", "/api/search?k=10", json.dumps({"results": [{"name": "q.jpg", "distance": 0}]}).encode()), True),
    (_record("upload", "/api/search?k=10", json.dumps({"results": []}).encode()), False),
    (_record("page", "/", b""), False),
])
def test_answers_are_checked(record, valid):
    edge_load.check_answer(record, "q.jpg")
    assert (record["outcome"] == "ok") == valid


def test_summary_counts_outcomes_and_times_only_answered_requests():
    records = [{"kind": "thumb", "outcome": "ok", "ms": 10.0}, {"kind": "thumb", "outcome": "reset", "ms": 1.0},
               {"kind": "page", "outcome": "ok", "ms": 30.0},
               {"kind": "search", "outcome": "error", "ms": 5.0, "error": "ValueError: x"}]
    s = edge_load.summarise(records)
    assert s["outcomes"] == {"ok": 2, "reset": 1, "error": 1} and s["errors"] == ["ValueError: x"]
    assert s["latency_ms"] == {"n": 2, "p50": 20.0, "p90": 28.0, "p99": 29.8, "max": 30.0}
    assert s["by_kind"]["thumb"]["n"] == 1 and s["by_kind"]["upload"] == {"n": 0}


def test_thumbnail_benchmark_writes_its_reports(tmp_path):
    out = tmp_path / "t.json"
    edge_thumbnails.main(["--width", "800", "--height", "600", "--sizes", "64", "--repeats", "2",
                          "--noise", "0", "--json", str(out), "--md", str(tmp_path / "t.md")])
    report = json.loads(out.read_text())
    assert [r["method"] for r in report["records"]] == ["full", "draft", "cached"]
    assert all(r["thumbnail"] == [64, 48] and r["repeats"] == 2 for r in report["records"])
    assert report["records"][0]["ratio_full_over_method"] == 1.0
    assert report["records"][1]["mean_abs_diff_vs_full"] < 8
    md = (tmp_path / "t.md").read_text()
    assert "| 0 |" in md and "draft" in md and report["command"] in md
