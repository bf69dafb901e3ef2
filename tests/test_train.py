import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mghash_tf.cli import build_parser, config_from_args
from mghash_tf.training.config import TrainConfig
from mghash_tf.data import ImageSet

CHANCE_FINE = 0.25  # 4 balanced fine classes: a random ranking has mAP ~ 1/4


def toy_set(n_per_class=24, size=16, seed=0):
    """4 fine classes (colour patterns) in 2 coarse groups, train/test split 3:1."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 30, 30], [240, 120, 20], [30, 30, 220], [20, 160, 220]])
    x, fine, split = [], [], []
    for c, colour in enumerate(colours):
        for i in range(n_per_class):
            img = np.clip(colour + rng.normal(0, 25, (size, size, 3)), 0, 255)
            x.append(img.astype(np.uint8))
            fine.append(c)
            split.append(1 if i % 4 == 0 else 0)
    fine = np.array(fine, np.int32)
    return ImageSet(
        x=np.stack(x), y_fine=fine, y_coarse=fine // 2, split=np.array(split, np.uint8),
        class_names_fine=("red", "orange", "blue", "cyan"), class_names_coarse=("warm", "cold"),
    )


def tiny_config(**kw):
    base = dict(data="toy", image_size=16, layout="mg32", frozen_epochs=6, batch_size=16,
                learning_rate=3e-3, val_fraction=0.2, val_database_size=64, augment=False)
    base.update(kw)
    return TrainConfig(**base)


def test_short_fit_beats_chance(tmp_path):
    from mghash_tf.training.train import train

    result = train(tiny_config(), tmp_path, image_set=toy_set(), verbose=0)
    assert result.metrics["test"]["map_fine"] > CHANCE_FINE + 0.3
    assert result.metrics["test"]["map_coarse"] > 0.5 + 0.2
    for name in ("model.keras", "config.json", "metrics.json", "log.csv", "best.weights.h5"):
        assert (tmp_path / name).exists(), name
    assert TrainConfig.from_json(tmp_path / "config.json") == tiny_config()
    assert json.loads((tmp_path / "metrics.json").read_text())["train_images_per_second"] > 0


def test_resume_skips_completed_stage(tmp_path):
    from mghash_tf.training.train import train

    train(tiny_config(frozen_epochs=2), tmp_path, image_set=toy_set(), verbose=0)
    train(tiny_config(frozen_epochs=2, finetune_epochs=1), tmp_path, image_set=toy_set(), verbose=0)
    with open(tmp_path / "log.csv") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    # stage 1 ran once (epochs 0, 1); the second run only added the fine-tuning epoch 2
    assert epochs == [0, 1, 2]


def test_config_validation_and_json(tmp_path):
    with pytest.raises(ValueError, match="backbone"):
        TrainConfig(backbone="vgg")
    with pytest.raises(ValueError, match="frozen_epochs \\+ finetune_epochs"):
        TrainConfig(frozen_epochs=0, finetune_epochs=0)
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=0.7)
    with pytest.raises(ValueError, match="Unknown config keys \\['epochs'\\]"):
        TrainConfig.from_dict({"epochs": 3})
    cfg = TrainConfig(layout={"segments": [{"name": "a", "bits": 24}]}, batch_size=8)
    cfg.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json").code_layout == cfg.code_layout


def test_cli_flags_override_json(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"batch_size": 8, "layout": "scales"}))
    args = build_parser().parse_args(
        ["train", "--out", "x", "--config", str(tmp_path / "c.json"), "--layout", "32",
         "--no-augment", "--learning-rate", "0.01", "--finetune-epochs", "2"])
    cfg = config_from_args(args)
    assert (cfg.batch_size, cfg.layout, cfg.augment, cfg.learning_rate, cfg.finetune_epochs) == (8, 32, False, 0.01, 2)


MIRRORED_SCRIPT = textwrap.dedent("""
    import sys, json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[2])
    from test_train import tiny_config, toy_set
    from mghash_tf.training.train import train
    replicas = tf.distribute.MirroredStrategy().num_replicas_in_sync
    result = train(tiny_config(strategy="mirrored", frozen_epochs=1), sys.argv[1], image_set=toy_set(), verbose=0)
    print(json.dumps({"replicas": replicas, "map_fine": result.metrics["test"]["map_fine"]}))
""")


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path / "run"), os.path.dirname(__file__)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert 0.0 < result["map_fine"] <= 1.0


def test_mixed_precision_and_xla_switches(tmp_path):
    import keras

    from mghash_tf.training.train import train

    result = train(tiny_config(mixed_precision=True, jit_compile=True, frozen_epochs=1), tmp_path,
                   image_set=toy_set(), verbose=0)
    assert result.metrics["mixed_precision"] == "mixed_float16"  # trained in float16 ...
    assert result.model.get_layer("hash_head").compute_dtype == "float32"  # ... returned and saved in float32
    assert result.model.output.dtype == "float32"  # codes and losses stay float32
    assert keras.mixed_precision.global_policy().name == "float32"  # not leaked to later models
    assert 0.0 < result.metrics["test"]["map_fine"] <= 1.0


def test_test_fraction_splits_an_unsplit_folder_and_evaluate_reuses_it(tmp_path):
    """A folder without split folders: ``--test-fraction`` gives train a test split, and
    ``evaluate`` on the same folder rebuilds the very same split from the model's config."""
    from PIL import Image

    from mghash_tf.cli import main
    from mghash_tf.data import load_source, with_test_split

    s = toy_set(n_per_class=10)
    for i, (img, y) in enumerate(zip(s.x, s.y_fine)):
        folder = tmp_path / "photos" / s.class_names_fine[y]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    folder_set = load_source(f"folder:{tmp_path / 'photos'}", image_size=16)
    assert folder_set.split is None
    a = with_test_split(folder_set, 0.25, seed=3)
    b = with_test_split(folder_set, 0.25, seed=3)
    np.testing.assert_array_equal(a.split, b.split)
    assert [int((a.split[a.y_fine == c] == 1).sum()) for c in range(4)] == [3, 3, 3, 3]  # stratified
    with pytest.raises(ValueError, match="`test_fraction` is for data without a split"):
        with_test_split(a, 0.25)
    assert main(["train", "--data", f"folder:{tmp_path / 'photos'}", "--out", str(tmp_path / "run"),
                 "--image-size", "16", "--layout", "32", "--frozen-epochs", "1", "--batch-size", "8",
                 "--test-fraction", "0.25", "--val-fraction", "0.2", "--val-database-size", "16",
                 "--progress", "0"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test" in metrics
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--data", f"folder:{tmp_path / 'photos'}",
                 "--no-baselines", "--out", str(tmp_path / "eval")]) == 0
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["num_query"] == 12 and evaluation["num_db"] == 28
    # ... and they are the training run's test images: the split of its seed gives the same mAP.
    from mghash_tf.evaluation.evaluate import evaluate
    from mghash_tf.model.saving import load_model

    seed = TrainConfig.from_json(tmp_path / "run" / "config.json").seed
    expected = evaluate(load_model(tmp_path / "run"), with_test_split(folder_set, 0.25, seed=seed), baselines=False)
    assert evaluation["granularities"]["fine"]["methods"]["mghash"]["map"] == pytest.approx(
        expected["granularities"]["fine"]["methods"]["mghash"]["map"])


def test_a_given_validation_split_is_used_instead_of_a_carved_one():
    import dataclasses

    from mghash_tf.training.train import load_splits

    s = toy_set(n_per_class=12)
    split = s.split.copy()
    split[np.flatnonzero(split == 0)[::5]] = 2  # a val/ folder
    given = dataclasses.replace(s, split=split)
    splits = load_splits(tiny_config(), given)
    assert len(splits.val.y_fine) == int((split == 2).sum()) and len(splits.train.y_fine) == int((split == 0).sum())
    np.testing.assert_array_equal(splits.val.x, s.x[split == 2])
    np.testing.assert_array_equal(splits.test.x, s.x[split == 1])
