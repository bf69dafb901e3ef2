"""Evaluate a trained model directory on a data source: our codes, the unsupervised baselines
on the same backbone features, optional query-corruption robustness, and retrieval examples.

Protocol (stated in every result as ``protocol``): query = the test split, database = the
whole train split (``max_query`` / ``max_db`` take seeded random subsets), relevant = same
label at the granularity's level; mAP over the whole database with ties ranked by database
order (``map``) and the exact expectation over tie orders (``map_tie_aware``); queries without
a relevant database item are excluded (their count is reported).

Baselines (LSH, PCA-sign, ITQ at the granularity's bit count, float cosine) use the backbone
features the hash head sees: the attention-pooled vectors of every stage, concatenated. They
are fitted on the database features (unsupervised: no labels used). ``toy_baselines`` adds the
seed's two toy methods on the same features: a one-vs-rest sigmoid classifier head fitted on the
database labels whose ``sigmoid > 0.5`` outputs are the bits (one per class), and float L2 search.

Flip TTA (``tta``): ``"none"`` encodes every image as it is (method ``mghash``), ``"database"``
encodes the database with the mean relaxed code of each image and its mirror
(``mghash_tta_db``), ``"both"`` the queries too (``mghash_tta``). With the baselines, ``<method>_float`` is
cosine search on the same relaxed (tanh) codes: the float embedding the bits are signs of.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from mghash_tf.core.granularity import evaluation_granularities
from mghash_tf.core.layout import LABEL_LEVELS

logger = logging.getLogger(__name__)

PROTOCOL = ("query = test split, database = train split, relevant = same label at the "
            "granularity's level, mAP@all (ties: database order, and tie-aware expectation), "
            "queries without relevant item excluded")
TOP_K = 100
RADIUS = 2
GRID_QUERIES = 6
GRID_TOP = 10
BASELINES = ("lsh", "pca", "itq", "float_cosine")
TOY_BASELINES = ("classifier_sigmoid", "float_l2")
TTA_METHODS = {"none": "mghash", "database": "mghash_tta_db", "both": "mghash_tta"}


def load_data(spec, model):
    """The ImageSet of ``spec`` (``demo`` = the embedded sample) at the model's input size."""
    from mghash_tf import data as data_lib

    if spec == "demo":
        spec = f"npz:{data_lib.demo_data_path()}"
    return data_lib.load_source(spec, image_size=int(model.input_shape[1]))


def feature_model(model):
    """Sub-model: pixels -> the concatenated attention-pooled features fed to the hash head."""
    import keras

    pooled = model.get_layer("hash_head").input
    pooled = pooled if isinstance(pooled, (list, tuple)) else [pooled]
    out = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(axis=-1)(list(pooled))
    return keras.Model(model.inputs, out, name="hash_head_features")


def predict(model, images, batch_size: int = 256) -> np.ndarray:
    return np.asarray(model.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0))


def select_granularities(layout, has_coarse: bool, names=None) -> dict:
    """``{name: (bit indices, label column)}``; ``names`` (None = all) picks some of them."""
    available = {name: (g.bit_indices(), g.label_column)
                 for name, g in evaluation_granularities(layout, has_coarse=has_coarse).items()}
    if names is None:
        return available
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ValueError(f"`granularity` must be among {sorted(available)} for this model and data. "
                         f"Received: granularity={names!r}")
    return {n: available[n] for n in names}


def _subsample(indices: np.ndarray, max_n, rng, name: str) -> np.ndarray:
    if max_n is None or max_n >= len(indices):
        return indices
    if isinstance(max_n, bool) or not isinstance(max_n, (int, np.integer)) or max_n < 1:
        raise ValueError(f"`{name}` must be a positive integer or None. Received: {name}={max_n!r}")
    return np.sort(rng.choice(indices, int(max_n), replace=False))


def code_metrics(q, db, ql, dl) -> dict:
    """Hamming metrics: mAP@all (stable and tie-aware), P@100, precision within radius 2,
    and the PR curve over radii (as lists)."""
    from mghash_tf.core.metrics import retrieval_report

    report = retrieval_report(q, db, ql, dl, map_ks=(None,), ks=(TOP_K,), radius=RADIUS, curve=True,
                              tie_aware="both")
    curve = {k: np.asarray(v).tolist() for k, v in report["pr_curve"].items()}
    return {**_rank_metrics(report), f"precision@r{RADIUS}": report[f"precision@r{RADIUS}"],
            "pr_curve": curve}


def float_metrics(q, db, ql, dl, *, metric: str = "cosine") -> dict:
    """Float ranking (cosine or L2): mAP@all and P@100 (no radius, no PR curve)."""
    from mghash_tf.core.metrics import retrieval_report

    return _rank_metrics(retrieval_report(q, db, ql, dl, map_ks=(None,), ks=(TOP_K,), radius=None,
                                          metric=metric, tie_aware="both"))


def _rank_metrics(report) -> dict:
    """mAP@all and P@100 under both tie rules, from a ``tie_aware="both"`` report."""
    keys = ("map", "map_tie_aware", f"precision@{TOP_K}", f"precision@{TOP_K}_tie_aware",
            "num_no_relevant")
    return {key: report[key] for key in keys}


def baseline_metrics(q_feat, db_feat, ql, dl, num_bits: int, *, seed: int = 0, fit_max=None) -> dict:
    """LSH, PCA-sign, ITQ at ``num_bits`` and float cosine on the same features. ``fit_max``:
    fit the hashers on a seeded sample of that many database rows (memory), encode them all."""
    from mghash_tf.evaluation import baselines

    out = {}
    fit_feat = db_feat
    if fit_max is not None and fit_max < len(db_feat):
        fit_feat = db_feat[np.sort(np.random.default_rng(seed).choice(len(db_feat), fit_max, replace=False))]
    for name, hasher in (("lsh", baselines.LSH(num_bits, seed=seed)), ("pca", baselines.PCASign(num_bits)),
                         ("itq", baselines.ITQ(num_bits, seed=seed))):
        try:
            hasher.fit(fit_feat)
        except ValueError as e:
            # PCA-based hashers need num_bits <= feature dimension; say so instead of failing.
            logger.warning("%s skipped: %s", name, e)
            out[name] = {"skipped": str(e)}
            continue
        out[name] = code_metrics(hasher.encode(q_feat), hasher.encode(db_feat), ql, dl)
    out["float_cosine"] = float_metrics(baselines.float_cosine(q_feat), baselines.float_cosine(db_feat),
                                        ql, dl)
    return out


def toy_metrics(q_feat, db_feat, ql, dl) -> dict:
    """The seed's toy methods: sigmoid classifier-head bits (fitted on the database labels) and
    float L2 search, on the same features."""
    from mghash_tf.evaluation import baselines

    head = baselines.SigmoidClassifier(int(max(ql.max(), dl.max())) + 1).fit(db_feat, dl)
    return {"classifier_sigmoid": {**code_metrics(head.encode(q_feat), head.encode(db_feat), ql, dl),
                                   "bits": head.num_classes},
            "float_l2": float_metrics(q_feat, db_feat, ql, dl, metric="l2")}


def _codes(model, images, batch_size, flip: bool) -> dict:
    """Relaxed codes as they are (``"plain"``) and, with ``flip``, TTA-averaged (``"tta"``)."""
    from mghash_tf.model import encode

    plain = encode(model, images, batch_size=batch_size)
    if not flip:
        return {"plain": plain}
    mirrored = encode(model, np.asarray(images)[:, :, ::-1], batch_size=batch_size)
    return {"plain": plain, "tta": (plain + mirrored) / 2.0}


def _check_tta(tta) -> tuple:
    modes = (tta,) if isinstance(tta, str) else tuple(tta)
    if not modes or any(m not in TTA_METHODS for m in modes):
        raise ValueError(f"`tta` must be modes from {tuple(TTA_METHODS)}. Received: tta={tta!r}")
    return modes


def retrieval_examples(q_codes, db_codes, ql, dl, q_index, db_index, *, num_queries=GRID_QUERIES,
                       top=GRID_TOP, seed: int = 0) -> list:
    """Top-``top`` Hamming neighbours (ties by database order) of a few seeded queries, with
    indices into the loaded data set so a plot can show the images."""
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(q_codes), min(num_queries, len(q_codes)), replace=False))
    qb, dbb = np.asarray(q_codes) > 0, np.asarray(db_codes) > 0
    examples = []
    for i in picks:
        dist = np.count_nonzero(qb[i] != dbb, axis=1)
        order = np.argsort(dist, kind="stable")[:top]
        examples.append({"query_index": int(q_index[i]), "db_indices": db_index[order].tolist(),
                         "distances": dist[order].tolist(),
                         "relevant": (dl[order] == ql[i]).tolist()})
    return examples


def evaluate(model, image_set, *, granularities=None, baselines: bool = True,
             toy_baselines: bool = False, tta=("none",), robustness: bool = False, max_query=None,
             max_db=None, seed: int = 0, batch_size: int = 256) -> dict:
    """The evaluation of ``model`` on ``image_set`` (which needs a train/test split) as a
    JSON-able dict; see the module docstring for the protocol."""
    from mghash_tf.model import describe, get_layout_of

    if image_set.split is None or not (image_set.split == 1).any() or not (image_set.split == 0).any():
        raise ValueError("The data must have a train split (0) and a test split (1) for the protocol "
                         "query = test, database = train. Received: split="
                         f"{None if image_set.split is None else np.unique(image_set.split).tolist()}")
    start = time.perf_counter()
    modes = _check_tta(tta)
    layout = get_layout_of(model)
    chosen = select_granularities(layout, image_set.has_coarse, granularities)
    rng = np.random.default_rng(seed)
    q_index = _subsample(np.flatnonzero(image_set.split == 1), max_query, rng, "max_query")
    db_index = _subsample(np.flatnonzero(image_set.split == 0), max_db, rng, "max_db")
    labels = image_set.labels
    ql, dl = labels[q_index], labels[db_index]
    flip = any(m != "none" for m in modes)
    q_all = _codes(model, image_set.x[q_index], batch_size, flip)
    db_all = _codes(model, image_set.x[db_index], batch_size, flip)
    q_codes, db_codes = q_all["plain"], db_all["plain"]
    if baselines or toy_baselines:
        features = feature_model(model)
        q_feat = predict(features, image_set.x[q_index], batch_size)
        db_feat = predict(features, image_set.x[db_index], batch_size)
    result = {"protocol": PROTOCOL, "model": describe(model), "num_query": int(len(q_index)),
              "num_db": int(len(db_index)), "seed": int(seed), "tta": list(modes), "granularities": {}}
    for name, (bits, col) in chosen.items():
        methods = {}
        for mode in modes:
            q = q_all["tta" if mode == "both" else "plain"][:, bits]
            db = db_all["plain" if mode == "none" else "tta"][:, bits]
            methods[TTA_METHODS[mode]] = code_metrics(q, db, ql[:, col], dl[:, col])
            if baselines:
                methods[TTA_METHODS[mode] + "_float"] = float_metrics(q, db, ql[:, col], dl[:, col])
        if baselines:
            methods.update(baseline_metrics(q_feat, db_feat, ql[:, col], dl[:, col], len(bits), seed=seed))
        if toy_baselines:
            methods.update(toy_metrics(q_feat, db_feat, ql[:, col], dl[:, col]))
        result["granularities"][name] = {
            "bits": int(len(bits)), "label_level": LABEL_LEVELS[col],
            "methods": methods,
            "examples": retrieval_examples(q_codes[:, bits], db_codes[:, bits], ql[:, col], dl[:, col],
                                           q_index, db_index, seed=seed)}
        main_method = TTA_METHODS[modes[0]]
        logger.info("%s (%d bits): %s mAP %.4f", name, len(bits), main_method, methods[main_method]["map"])
    if robustness:
        from mghash_tf.evaluation.robustness import robustness_maps

        result["robustness"] = robustness_maps(lambda x: predict(model, x, batch_size),
                                               image_set.x[q_index], ql, db_codes, dl, chosen, seed=seed)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def summary_rows(result: dict) -> list:
    """``(granularity, bits, method, map, map_tie_aware, P@100, P@100 tie-aware, P@r2)`` rows."""
    rows = []
    for name, g in result["granularities"].items():
        for method, m in g["methods"].items():
            if "skipped" in m:
                continue
            rows.append((name, g["bits"], method, m["map"], m["map_tie_aware"],
                         m[f"precision@{TOP_K}"], m[f"precision@{TOP_K}_tie_aware"],
                         m.get(f"precision@r{RADIUS}")))
    return rows
