"""Evaluation of a tiny trained model: result contents, baselines, corruptions, plots, CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from mghash_tf.evaluation import plots, robustness
from mghash_tf.data import save_npz
from mghash_tf.core.metrics import mean_average_precision
from test_train import CHANCE_FINE, tiny_config, toy_set

METHODS = {"mghash", "mghash_float", "lsh", "pca", "itq", "float_cosine"}
HAMMING_METHODS = METHODS - {"float_cosine", "mghash_float"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mghash_tf.model.saving import load_model
    from mghash_tf.training.train import train

    out = tmp_path_factory.mktemp("model")
    train(tiny_config(frozen_epochs=2), out, image_set=toy_set(), verbose=0)
    return out, load_model(out)


@pytest.fixture(scope="module")
def result(trained):
    from mghash_tf.evaluation.evaluate import evaluate

    return evaluate(trained[1], toy_set(), robustness=True)


def test_result_keys_and_ranges(result):
    data = toy_set()
    # toy_set puts every 4th image of a class in the test split: 4 classes x 6 queries,
    # and the database is the whole train split (4 x 18), validation included.
    assert (result["num_query"], result["num_db"]) == (24, 72)
    assert set(result["granularities"]) == {"fine", "coarse", "seg_coarse", "seg_fine"}
    json.dumps(result)  # everything must be JSON-able as it is
    for name, g in result["granularities"].items():
        assert set(g["methods"]) == METHODS, name
        for method, m in g["methods"].items():
            for key in ("map", "map_tie_aware", "precision@100", "precision@100_tie_aware"):
                assert 0.0 <= m[key] <= 1.0, (name, method, key)
            if method in HAMMING_METHODS:
                assert 0.0 <= m["precision@r2"] <= 1.0
                curve = m["pr_curve"]
                assert len(curve["radius"]) == g["bits"] + 1
                # Radius = all bits retrieves the whole database: recall 1, precision = base rate.
                assert curve["recall"][-1] == pytest.approx(1.0)
                assert np.all(np.diff(curve["recall"]) >= -1e-12)
        for e in g["examples"]:
            col = 0 if g["label_level"] == "fine" else 1
            labels = data.labels[:, col]
            assert data.split[e["query_index"]] == 1
            assert all(data.split[i] == 0 for i in e["db_indices"])
            assert e["relevant"] == [bool(labels[i] == labels[e["query_index"]]) for i in e["db_indices"]]
            assert e["distances"] == sorted(e["distances"])
    assert result["granularities"]["fine"]["methods"]["mghash"]["map"] > CHANCE_FINE + 0.2


def test_mghash_map_matches_metrics_on_encoded_splits(trained, result):
    from mghash_tf.model import encode

    data = toy_set()
    q, db = data.subset(data.split == 1), data.subset(data.split == 0)
    expected = mean_average_precision(encode(trained[1], q.x), encode(trained[1], db.x), q.y_fine, db.y_fine)
    assert result["granularities"]["fine"]["methods"]["mghash"]["map"] == pytest.approx(expected, abs=1e-6)


def test_feature_model_feeds_the_hash_head(trained):
    from mghash_tf.evaluation.evaluate import feature_model, predict

    model = trained[1]
    x = toy_set().x[:8]
    features = predict(feature_model(model), x)
    head = model.get_layer("hash_head")
    sizes = [int(t.shape[-1]) for t in head.input]
    assert features.shape == (8, sum(sizes))
    # The concatenated features, split back per stage, give the model's own codes.
    parts = np.split(features, np.cumsum(sizes)[:-1], axis=1)
    np.testing.assert_allclose(np.asarray(head(parts)), predict(model, x), atol=1e-5)


def test_subsets_and_granularity_choice(trained):
    from mghash_tf.evaluation.evaluate import evaluate

    small = evaluate(trained[1], toy_set(), granularities=["coarse"], baselines=False,
                     max_query=10, max_db=30)
    assert (small["num_query"], small["num_db"]) == (10, 30)
    assert set(small["granularities"]) == {"coarse"}
    assert set(small["granularities"]["coarse"]["methods"]) == {"mghash"}
    with pytest.raises(ValueError, match="granularity"):
        evaluate(trained[1], toy_set(), granularities=["medium"])
    with pytest.raises(ValueError, match="max_db"):
        evaluate(trained[1], toy_set(), max_db=0)


def test_tta_modes_and_toy_baselines(trained):
    from mghash_tf.evaluation import baselines
    from mghash_tf.evaluation.evaluate import evaluate, feature_model, predict
    from mghash_tf.model import encode

    model, data = trained[1], toy_set()
    out = evaluate(model, data, granularities=["fine"], baselines=False, toy_baselines=True,
                   tta=("none", "database", "both"))
    methods = out["granularities"]["fine"]["methods"]
    assert set(methods) == {"mghash", "mghash_tta_db", "mghash_tta", "classifier_sigmoid", "float_l2"}
    q, db = data.subset(data.split == 1), data.subset(data.split == 0)
    # Brute force: the TTA codes are the mean of image and mirror, ranked by Hamming distance.
    q_tta, db_tta = encode(model, q.x, tta=True), encode(model, db.x, tta=True)
    assert methods["mghash_tta"]["map"] == pytest.approx(
        mean_average_precision(q_tta, db_tta, q.y_fine, db.y_fine), abs=1e-9)
    assert methods["mghash_tta_db"]["map"] == pytest.approx(
        mean_average_precision(encode(model, q.x), db_tta, q.y_fine, db.y_fine), abs=1e-9)
    features = feature_model(model)
    fq, fdb = predict(features, q.x), predict(features, db.x)
    head = baselines.SigmoidClassifier(4).fit(fdb, db.y_fine)
    assert methods["classifier_sigmoid"]["bits"] == 4
    assert methods["classifier_sigmoid"]["map"] == pytest.approx(
        mean_average_precision(head.encode(fq), head.encode(fdb), q.y_fine, db.y_fine), abs=1e-9)
    assert methods["float_l2"]["map"] == pytest.approx(
        mean_average_precision(fq, fdb, q.y_fine, db.y_fine, metric="l2"), abs=1e-9)
    with pytest.raises(ValueError, match="tta"):
        evaluate(model, data, tta="mirror")


def test_robustness_section(result):
    rob = result["robustness"]
    assert set(rob) == set(robustness.CORRUPTIONS)
    for corruption, per_gran in rob.items():
        for name, maps in per_gran.items():
            assert len(maps) == robustness.MAX_SEVERITY + 1
            assert all(0.0 <= v <= 1.0 for v in maps)
            # Severity 0 is the clean query set: the same number as the main table.
            assert maps[0] == pytest.approx(result["granularities"][name]["methods"]["mghash"]["map"])


def structured_images(n=6, size=16):
    """Gradients with an off-centre bright square: pixel noise alone (the toy set) looks the
    same at every rotation angle, so the monotone-change check needs spatial structure."""
    i, j = np.mgrid[0:size, 0:size]
    out = []
    for k in range(n):
        img = np.stack([i * 12 + k * 5, j * 10, (i + j) * 6 + 20], axis=-1).astype(float)
        img[2 + k % 4:7 + k % 4, 3:9] = 250
        out.append(np.clip(img, 0, 255))
    return np.stack(out).astype(np.uint8)


@pytest.mark.parametrize("name", robustness.CORRUPTIONS)
def test_corruption_shape_identity_and_monotone(name):
    x = structured_images()
    assert np.array_equal(robustness.corrupt(x, name, 0), x)
    change = []
    for severity in range(1, robustness.MAX_SEVERITY + 1):
        y = robustness.corrupt(x, name, severity, seed=3)
        assert y.shape == x.shape and y.dtype == np.uint8
        assert np.array_equal(y, robustness.corrupt(x, name, severity, seed=3))  # seeded
        change.append(np.abs(y.astype(float) - x).mean())
    assert change[0] > 0
    assert change[0] < change[1] < change[2], change


def test_corruption_rejects_bad_input():
    x = toy_set(n_per_class=1).x
    with pytest.raises(ValueError, match="`name` must be one of"):
        robustness.corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        robustness.corrupt(x, "blur", 4)
    with pytest.raises(ValueError, match="uint8"):
        robustness.corrupt(x.astype(np.float32), "blur", 1)


def _assert_png(path, size):
    img = np.asarray(Image.open(path).convert("RGB"))
    assert (img.shape[1], img.shape[0]) == size
    assert img.std() > 5  # not a blank canvas


def test_plots_written_with_expected_size(result, tmp_path):
    d, cell = plots.DPI, plots.GRID_CELL
    w, h = plots.PANEL_SIZE
    n = len(result["granularities"])
    _assert_png(plots.pr_curves(result, tmp_path / "pr.png"), (round(w * d * n), round(h * d)))
    _assert_png(plots.map_vs_bits([result, result], tmp_path / "bits.png"), (round(w * d), round(h * d)))
    _assert_png(plots.robustness(result, tmp_path / "rob.png"), (round(w * d), round(h * d)))
    examples = result["granularities"]["fine"]["examples"]
    cols = 1 + len(examples[0]["db_indices"])
    _assert_png(plots.retrieval_grid(toy_set().x, examples, tmp_path / "grid.png"),
                (round(cols * cell * d), round((len(examples) * cell + 0.4) * d)))
    with pytest.raises(ValueError, match="robustness"):
        plots.robustness({"granularities": {}}, tmp_path / "none.png")


def test_cli_end_to_end(trained, tmp_path, capsys):
    from mghash_tf.cli import main

    data = tmp_path / "toy.npz"
    save_npz(toy_set(), data)
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(trained[0]), "--data", f"npz:{data}", "--robustness",
                 "--max-query", "12", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "itq" in printed and "float_cosine" in printed
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["num_query"] == 12 and saved["data"] == f"npz:{data}"
    for name in ("pr_curves", "map_vs_bits", "retrieval_grid", "robustness"):
        assert (out / f"{name}.png").stat().st_size > 1000, name

    code = main(["evaluate", "--model", str(trained[0]), "--data", f"npz:{data}",
                 "--granularity", "medium", "--out", str(tmp_path / "bad")])
    assert code == 2
    assert "granularity" in capsys.readouterr().err


def test_cli_compare_takes_earlier_outputs_and_refuses_missing_ones(trained, tmp_path, capsys):
    from mghash_tf.cli import main

    data = tmp_path / "toy.npz"
    save_npz(toy_set(), data)
    first = tmp_path / "first"
    assert main(["evaluate", "--model", str(trained[0]), "--data", f"npz:{data}", "--no-baselines",
                 "--out", str(first)]) == 0
    # A directory holding evaluation.json is accepted as well as the file itself.
    assert main(["evaluate", "--model", str(trained[0]), "--data", f"npz:{data}", "--no-baselines",
                 "--compare", str(first), str(first / "evaluation.json"), "--out", str(tmp_path / "second")]) == 0
    capsys.readouterr()
    code = main(["evaluate", "--model", str(trained[0]), "--data", f"npz:{data}",
                 "--compare", str(trained[0]), "--out", str(tmp_path / "third")])
    assert code == 2
    assert "--compare" in capsys.readouterr().err and not (tmp_path / "third").exists()
