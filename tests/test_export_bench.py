"""Model-size benchmark helpers (fast) and one tiny end-to-end bench run (slow)."""

import json

import numpy as np
import pytest

from export import bench, report
from export.latency import measure_interleaved, measure_latency


def _record(model, backbone, variant, p50, bits=16, size=1000):
    return {"model": model, "backbone": backbone, "variant": variant, "bits": bits, "bytes": size,
            "latency_ms_p50_1t": p50}


def test_head_overhead_is_relative_to_the_same_variant():
    records = [_record("full", "a", "fp32", 2.1), _record("full", "a", "int8", 1.0),
               _record("backbone_only", "a", "fp32", 2.0), _record("backbone_only", "a", "int8", 0.8),
               _record("full", "b", "fp32", 5.0)]
    bench.add_head_overhead(records)
    assert records[0]["head_overhead_pct"] == 5.0    # 2.1 / 2.0 - 1
    assert records[1]["head_overhead_pct"] == 25.0   # 1.0 / 0.8 - 1
    assert "head_overhead_pct" not in records[4]     # no bare backbone measured for "b"
    assert "head_overhead_pct" not in records[2]


def test_head_overhead_matches_backbones_of_the_same_size():
    old = {**_record("full", "a", "fp32", 3.0), "backbone_params": 100}
    new = {**_record("full", "a", "fp32", 1.1), "backbone_params": 50}
    bare_old = {**_record("backbone_only", "a", "fp32", 2.5), "backbone_params": 100}
    bare_new = {**_record("backbone_only", "a", "fp32", 1.0), "backbone_params": 50}
    bench.add_head_overhead([old, new, bare_old, bare_new])
    assert old["head_overhead_pct"] == 20.0 and new["head_overhead_pct"] == 10.0


def test_summary_reports_size_ratio_and_overhead():
    records = [_record("full", "a", "fp32", 2.0, size=4000), _record("full", "a", "int8", 1.0, size=1000),
               _record("full", "a", "fp32", 2.0, bits=32, size=5000),
               _record("full", "a", "int8", 1.0, bits=32, size=1500),
               _record("backbone_only", "a", "fp32", 1.6, bits=None)]
    bench.add_head_overhead(records)
    lines = report.bench_summary(records)
    assert "int8 file / fp32 file: 0.250 to 0.300 over 2 models" in lines[0]
    assert "fp32 16 bits +25.0 %" in lines[1]


def test_summary_reports_parity_of_trained_models_only():
    def parity(variant, agreement, map_, trained=True):
        return {**_record("full", "a", variant, 1.0), "trained": trained, "bit_agreement": agreement,
                "map": map_, "map_keras": 0.5}

    records = [parity("fp32", 1.0, 0.5), parity("int8", 0.999, 0.498), parity("int8", 0.99, 0.51),
               parity("int8", 0.4, 0.2, trained=False), parity("dynamic", 0.997, 0.49)]
    lines = [line for line in report.bench_summary(records) if "trained models" in line]
    # int8: agreements 0.999 and 0.99; mAP changes -0.2 and +1.0 points; only the first meets both.
    assert lines == [
        "dynamic, trained models: bit agreement 0.9970 to 0.9970, mAP - Keras mAP -1.00 to -1.00 points; "
        "both targets (agreement >= 0.995, mAP loss <= 0.5 point) met by 0 of 1",
        "int8, trained models: bit agreement 0.9900 to 0.9990, mAP - Keras mAP -0.20 to +1.00 points; "
        "both targets (agreement >= 0.995, mAP loss <= 0.5 point) met by 1 of 2"]


def test_bench_cli_defaults_to_every_default_row():
    from export.__main__ import build_parser
    from mghash_tf.model.backbones import backbone_names

    assert build_parser().parse_args(["bench"]).backbones == [r.backbone for r in bench.DEFAULT_ROWS]
    assert {r.backbone for r in bench.DEFAULT_ROWS} <= set(backbone_names())
    assert bench.Row("fast_cnn", 32, 32) in bench.DEFAULT_ROWS


def test_latency_measures_every_model(tmp_path):
    from export import convert
    import keras

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.Flatten()])
    saved = convert.export_saved_model(model, tmp_path / "s")
    tflite = convert.convert_saved_model(saved, "fp32")
    result = measure_interleaved({"a": tflite, "b": tflite}, repeats=7, warmup=1)
    assert set(result) == {"a", "b"}
    for summary in result.values():
        assert summary["repeats"] == 7 and 0 < summary["p50_ms"] <= summary["p90_ms"]
    assert measure_latency(tflite, repeats=3)["threads"] == 1
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(tflite, repeats=0)


@pytest.mark.slow
def test_tiny_bench_run_writes_all_outputs(tmp_path):
    from mghash_tf.data import demo_data_path, load_source

    image_set = load_source(f"npz:{demo_data_path()}")
    settings = bench.BenchSettings(rows=(bench.Row("small_cnn", 32, 32),), bits=(16,),
                                   variants=("fp32", "int8"), n_query=20, n_db=60, rep_count=10, repeats=5)
    records = bench.run_bench(image_set, settings)
    assert [(r["model"], r["variant"]) for r in records] == [
        ("full", "fp32"), ("full", "int8"), ("backbone_only", "fp32"), ("backbone_only", "int8")]
    assert records[0]["backbone_params"] == records[2]["backbone_params"] > 0
    for key in ("backbone", "image_size", "bits", "variant", "params", "bytes", "latency_ms_p50_1t",
                "latency_ms_p90_1t", "latency_ms_p50_2t", "bit_agreement", "map", "trained"):
        assert all(key in r for r in records), key
    assert records[0]["bit_agreement"] == 1.0 and records[0]["trained"] is False
    assert np.isfinite(records[0]["head_overhead_pct"])
    report.write_json(tmp_path / "b.json", records)
    meta = report.provenance("test")
    report.write_bench_markdown(tmp_path / "b.md", records, meta, ["note"])
    report.plot_bench(tmp_path / "b.png", records)
    assert json.loads((tmp_path / "b.json").read_text()) == records
    assert (tmp_path / "b.png").stat().st_size > 1000 and "small_cnn" in (tmp_path / "b.md").read_text()
