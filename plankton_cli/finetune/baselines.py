"""Baselines scored on every fold, on the same labelled subset and test part as the model: is the model any good?

- ``pixel_logreg``: a logistic regression on the images downscaled to 32 × 32 grey pixels (what anybody can
  fit in a second);
- ``features_rf``: when the objects carry numeric per-object features in ``metadata`` (EcoTaxa's ZooProcess /
  UVP morphometrics, ``object_*`` columns), a random forest on them, which is what EcoTaxa's own classifier does.

A model that loses to these is not worth deploying; the summary says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

from plankton_cli import metrics as M
from plankton_cli.data import EvalTransform
from plankton_cli.protocol import Split

PIXEL_SIZE = 32
FEATURE_PREFIX = "object_"
# Where and when an object was sampled, or its place on the scan: numbers, but not what it looks like.
NOT_MORPHOLOGY = {"lat", "lon", "date", "time", "depth_min", "depth_max", "x", "y", "bx", "by", "xstart",
                  "ystart", "id", "link", "annotation_date", "annotation_time"}
MIN_FEATURE_COVERAGE = 0.9  # a feature is used when at least this share of the objects has a number for it


def pixel_matrix(dataset_dir: Path, ids: Sequence[str], classes: list[str]) -> tuple[list[str], np.ndarray]:
    """``(object_ids, pixels)``: each image resized to 32 × 32 grey, centre-cropped as evaluation does, in [0, 1]."""
    from plankton_cli.finetune.pool import store_loader

    loader = store_loader(dataset_dir, ids, classes, EvalTransform(PIXEL_SIZE, PIXEL_SIZE, 0.0, 1.0), train=False,
                          batch_size=256, workers=0, seed=0)
    out_ids, rows = [], []
    for batch in loader:
        out_ids += list(batch["object_id"])
        rows.append(batch["image"].reshape(len(batch["object_id"]), -1).numpy())
    return out_ids, np.concatenate(rows) if rows else np.zeros((0, PIXEL_SIZE * PIXEL_SIZE), np.float32)


def metadata_features(dataset_dir: Path, ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per object of ``ids``, its numeric ``object_*`` morphometrics from the ``metadata`` column (empty when the
    dataset has none)."""
    dataset = ds.dataset(dataset_dir, format="parquet", partitioning="hive")
    values: dict[str, dict[str, float]] = {}
    if "metadata" not in dataset.schema.names:
        return values
    table = dataset.to_table(columns=["object_id", "metadata"], filter=pc.field("object_id").isin(list(ids)))
    for object_id, pairs in zip(table["object_id"].to_pylist(), table["metadata"].to_pylist()):
        row = values.setdefault(object_id, {})
        for pair in pairs or ():
            key = pair["key"]
            if key.startswith(FEATURE_PREFIX) and key[len(FEATURE_PREFIX):] not in NOT_MORPHOLOGY:
                number = _number(pair["value"])
                if number is not None:
                    row[key] = number
    return values


def feature_names(values: dict[str, dict[str, float]], ids: Sequence[str]) -> list[str]:
    """The features at least 90 % of ``ids`` have a number for."""
    counts: dict[str, int] = {}
    for object_id in ids:
        for key in values.get(object_id, {}):
            counts[key] = counts.get(key, 0) + 1
    return sorted(k for k, n in counts.items() if n >= MIN_FEATURE_COVERAGE * len(ids))


def feature_matrix(values: dict[str, dict[str, float]], ids: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Rows in ``ids`` order, columns ``names``; NaN where an object lacks a feature."""
    return np.array([[values.get(i, {}).get(k, np.nan) for k in names] for i in ids], np.float64).reshape(
        len(ids), len(names))


def score_baselines(dataset_dir: Path, split: Split, label_of: dict[str, str], classes: list[str],
                    seed: int = 0) -> dict[str, dict[str, Any]]:
    """Test scores of the baselines trained on this fold's labelled subset: ``pixel_logreg`` always,
    ``features_rf`` when the objects carry morphometric features."""
    index = {name: i for i, name in enumerate(classes)}
    results: dict[str, dict[str, Any]] = {}
    train_ids, x_train = pixel_matrix(dataset_dir, split.train, classes)
    test_ids, x_test = pixel_matrix(dataset_dir, split.test, classes)
    y_train = np.array([index[label_of[i]] for i in train_ids])
    predicted = pixel_logreg(x_train, y_train, seed).predict(x_test)
    results["pixel_logreg"] = _scores(label_of, test_ids, predicted, classes)

    values = metadata_features(dataset_dir, [*split.train, *split.test])
    names = feature_names(values, split.train)
    if names:
        y = np.array([index[label_of[i]] for i in split.train])
        forest = features_rf(feature_matrix(values, split.train, names), y, seed)
        predicted = forest.predict(feature_matrix(values, split.test, names))
        results["features_rf"] = {**_scores(label_of, split.test, predicted, classes), "n_features": len(names)}
    return results


def _scores(label_of: dict[str, str], ids: Sequence[str], predicted: np.ndarray, classes: list[str]) -> dict:
    scores = M.classification_metrics([label_of[i] for i in ids], [classes[p] for p in predicted], classes)
    return {m: scores[m] for m in M.HEADLINE_METRICS}


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def pixel_logreg(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)).fit(x_train, y_train)


def features_rf(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    forest = RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=1)
    return make_pipeline(SimpleImputer(strategy="median"), forest).fit(x_train, y_train)
