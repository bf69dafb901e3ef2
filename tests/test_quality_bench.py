"""benchmarks/quality.py: its report files, its refusal without data, and a real smoke run (slow)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402


def _records():
    base = {"dataset": "toy", "layout": "plain16", "protocol": "p", "granularity": "fine", "features": "model", "seconds": 1.0}
    rows = [dict(base, bits=b, method=m, map=0.1 * i + b / 1000, map_tie_aware=0.1 * i + b / 1000 + 0.001)
            for i, m in enumerate(("mghash", "itq", "lsh")) for b in (16, 32)]
    rows.append(dict(base, bits=None, method="float_cosine", map=0.5, map_tie_aware=0.5))
    return rows


def _runs():
    return [{"dataset": "toy", "layout": "plain16", "epochs": 3, "best_epoch": 2, "best_val_map_fine": 0.4,
             "train_seconds": 60.0, "cache_seconds": 30.0, "train_items_per_second": 900.0,
             "full_model_agreement": 0.999},
            {"dataset": "toy", "command": "python benchmarks/quality.py --quick", "date": "d", "machine": "m",
             "wall_seconds": 120.0}]


def test_markdown_lists_every_record_and_run():
    text = quality.markdown(_records(), _runs())
    table = [line for line in text.splitlines() if line.startswith("| toy |")]
    assert len(table) == len(_records())
    assert "| toy | fine | plain16 | – | float_cosine | model | 0.5000 | 0.5000 |" in text
    assert "`python benchmarks/quality.py --quick`" in text and "wall time 2.0 min" in text
    assert "best epoch 2 (val mAP 0.400)" in text and "99.90 %" in text
    # Rows of one panel are ordered by bits, ours first.
    assert table[0].startswith("| toy | fine | plain16 | 16 | mghash |")


def test_a_variant_run_replaces_only_its_own_records():
    rows = [{"dataset": "cifar10", "suite": "fast", "layout": "plain64"},
            {"dataset": "cifar10", "suite": "fast", "layout": "plain64", "variant": "30min"},
            {"dataset": "cifar10", "suite": "fast", "layout": "mg64"}]
    main = quality.parse_args(["--suite", "fast", "--dataset", "cifar10", "--layouts", "plain64"])
    assert quality._replaced(rows, main) == rows[1:]
    variant = quality.parse_args(["--suite", "fast", "--dataset", "cifar10", "--layouts", "plain64", "--variant", "30min"])
    assert quality._replaced(rows, variant) == [rows[0], rows[2]]
    text = quality.markdown([dict(_records()[0], suite="fast", variant="30min")], [])
    assert "| toy | fine | plain16 [30min] | 16 | mghash |" in text


def test_fast_set_overrides_reach_the_config():
    import quality_fast

    assert quality_fast.parse_set(["val_every=5", "tta=false", "augmentation=alternating_flip_translate"]) == \
        {"val_every": 5, "tta": False, "augmentation": "alternating_flip_translate"}
    args = quality.parse_args(["--suite", "fast", "--fast-epochs", "3", "--fast-set", "bias_lr_scale=64"])
    config = quality_fast.config_for(args, "npz:x", "plain16")
    assert config.bias_lr_scale == 64.0 and config.frozen_epochs == 3 and config.recipe == "fast"
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        quality_fast.parse_set(["val_every"])


def test_best_epoch_skips_epochs_that_were_not_validated():
    import quality_fast

    nan = float("nan")
    # val_every=2 counted back from the last of 5 epochs: epochs 1, 3 and 5 validated.
    assert quality_fast.best_epoch({"val_map_fine": [0.3, nan, 0.6, nan, 0.5]}) == (3, 0.6)
    assert quality_fast.best_epoch({"val_map_fine": [nan, nan]}) == (None, None)
    assert quality_fast.best_epoch({}) == (None, None)


def test_plot_writes_a_png(tmp_path):
    path = quality.plot(_records(), tmp_path / "q.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_data_is_refused_with_the_reason(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setattr(quality, "SHARED", tmp_path)
    with pytest.raises(SystemExit, match="absent.*nothing was measured"):
        quality.load("cifar10", quality.parse_args(["--quick"]), np.random.default_rng(0))


@pytest.mark.slow
def test_quick_run_on_the_shared_data(tmp_path, shared_dir):
    if not (shared_dir / "data" / "tinyimagenet200_hier32.npz").is_file() or not quality.WEIGHTS.is_file():
        pytest.skip("needs ../shared/data and ../shared/weights")
    quality.main(["--quick", "--dataset", "tinyimagenet200", "--out", str(tmp_path), "--models",
                  str(tmp_path / "models")])
    records = json.loads((tmp_path / "quality.json").read_text())
    methods = {(r["granularity"], r["method"], r["features"]) for r in records}
    for gran in ("fine", "coarse"):
        for method in ("mghash", "mghash_float", "itq", "lsh", "pca", "float_cosine"):
            assert (gran, method, "model") in methods
    assert all(0 <= r["map"] <= 1 and 0 <= r["map_tie_aware"] <= 1 for r in records)
    assert {(gran, m, "imagenet") for gran in ("fine", "coarse") for m in ("itq", "lsh", "pca", "float_cosine")} <= methods
    runs = json.loads((tmp_path / "quality_runs.json").read_text())
    assert runs[0]["train_seconds"] > 0 and runs[0]["best_epoch"] >= 1 and runs[0]["suite"] == "mobilenet"
    assert (tmp_path / "quality.png").is_file() and (tmp_path / "models" / "tinyimagenet200_mg64" / "model.keras").is_file()


def test_unsupervised_suite_rows_and_runs_are_reported():
    rows = [dict(r, suite="unsupervised", method="mghash_unsupervised" if r["method"] == "mghash" else r["method"])
            for r in _records()]
    runs = [{"dataset": "toy", "suite": "unsupervised", "layout": "plain16", "epochs": 3, "best_epoch": None,
             "best_val_map_fine": None, "train_seconds": 60.0, "train_images_per_second": 500.0},
            {"dataset": "toy", "suite": "unsupervised", "command": "python benchmarks/quality.py --suite unsupervised",
             "date": "d", "machine": "m", "wall_seconds": 60.0}]
    text = quality.markdown(rows, runs)
    assert "## Label-free codes" in text and "last epoch kept (no labels)" in text
    assert "| toy | fine | plain16 | 16 | mghash_unsupervised | model |" in text
    args = quality.parse_args(["--suite", "unsupervised", "--train-stages", "0", "--fit-max", "100"])
    import quality_unsupervised

    config = quality_unsupervised.config_for(args, "plain64")
    assert config.labels == "none" and config.stage1_cache == "heads" and config.finetune_epochs == 0


def test_run_records_name_the_shared_folder_relatively():
    data = f"npz:{quality.SHARED / 'data' / 'cifar10.npz'}"
    runs = [{"config": {"data": data, "seed": 1}, "command": "python benchmarks/quality.py --suite fast"}]
    out = quality.portable(runs)
    assert out == [{"config": {"data": "npz:../shared/data/cifar10.npz", "seed": 1},
                    "command": "python benchmarks/quality.py --suite fast"}]
    assert runs[0]["config"]["data"] == data


def test_each_label_free_command_lists_only_its_own_layout_runs():
    def layout_run(command, seconds):
        return {"dataset": "toy", "suite": "unsupervised", "layout": "plain16", "command": command, "epochs": 3,
                "best_epoch": None, "best_val_map_fine": None, "train_seconds": seconds,
                "train_images_per_second": 500.0}

    def head(command):
        return {"dataset": "toy", "suite": "unsupervised", "command": command, "date": "d", "machine": "m",
                "wall_seconds": 60.0}

    rows = [dict(r, suite="unsupervised") for r in _records()]
    runs = [layout_run("a", 60.0), head("a"), layout_run("b", 120.0), head("b")]
    lines = quality.markdown(rows, runs).splitlines()
    first, second = lines.index(next(x for x in lines if "`a`" in x)), lines.index(next(x for x in lines if "`b`" in x))
    assert "training 1.0 min" in lines[first + 1] and lines[first + 2] == lines[second]
    assert "training 2.0 min" in lines[second + 1]
