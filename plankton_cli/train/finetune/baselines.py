"""Baselines scored on every fold, on the same labelled objects and test part as the model: is the model any good?

"The same labelled objects" is every label the model used: its training part *and* its validation part (early
stopping, ``--head auto``'s choice and the thresholds learn from those labels too). A baseline fitted on the
training part alone would be compared with fewer labels than the model had.

- ``pixel_logreg``: a logistic regression on the images downscaled to 32 × 32 grey pixels (what anybody can
  fit in a second);
- ``features_rf``: when the objects carry numeric per-object features (EcoTaxa's ZooProcess / UVP morphometrics
  ``object_*``, IFCB ``adc.*``, ``features.*`` from `plankton features`: the ones ``--features`` reads,
  ``features.inputs.object_features``), a random forest on them, which is what EcoTaxa's own classifier does.

A model that loses to these is not worth deploying; the summary says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plankton_cli.train import metrics as M
from plankton_cli.prepare.data import EvalTransform
from plankton_cli.prepare.features.inputs import COVERAGE, object_features
from plankton_cli.train.finetune.heads import make_head

PIXEL_SIZE = 32


def pixel_matrix(dataset_dir: Path, ids: Sequence[str], classes: list[str]) -> tuple[list[str], np.ndarray]:
    """``(object_ids, pixels)``: each image resized to 32 × 32 grey, centre-cropped as evaluation does, in [0, 1]."""
    from plankton_cli.train.finetune.pool import store_loader

    loader = store_loader(dataset_dir, ids, classes, EvalTransform(PIXEL_SIZE, PIXEL_SIZE, 0.0, 1.0), train=False,
                          batch_size=256, workers=0, seed=0)
    out_ids, rows = [], []
    for batch in loader:
        out_ids += list(batch["object_id"])
        rows.append(batch["image"].reshape(len(batch["object_id"]), -1).numpy())
    return out_ids, np.concatenate(rows) if rows else np.zeros((0, PIXEL_SIZE * PIXEL_SIZE), np.float32)


def feature_names(values: dict[str, dict[str, float]], ids: Sequence[str]) -> list[str]:
    """The features at least 90 % of ``ids`` have a number for."""
    counts: dict[str, int] = {}
    for object_id in ids:
        for key in values.get(object_id, {}):
            counts[key] = counts.get(key, 0) + 1
    return sorted(k for k, n in counts.items() if n >= COVERAGE * len(ids))


def feature_matrix(values: dict[str, dict[str, float]], ids: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Rows in ``ids`` order, columns ``names``; NaN where an object lacks a feature."""
    return np.array([[values.get(i, {}).get(k, np.nan) for k in names] for i in ids], np.float64).reshape(
        len(ids), len(names))


def score_baselines(dataset_dir: Path, fit_ids: Sequence[str], test_ids: Sequence[str], label_of: dict[str, str],
                    classes: list[str], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Test scores on ``test_ids`` of the baselines fitted on ``fit_ids`` (every labelled object the model used:
    ``Split.labelled``): ``pixel_logreg`` always, ``features_rf`` when the objects carry morphometric features.
    Each result says how many labelled objects it was fitted on (``n_fit``)."""
    index = {name: i for i, name in enumerate(classes)}
    results: dict[str, dict[str, Any]] = {}
    fit_order, x_fit = pixel_matrix(dataset_dir, fit_ids, classes)
    test_order, x_test = pixel_matrix(dataset_dir, test_ids, classes)
    y_fit = np.array([index[label_of[i]] for i in fit_order])
    predicted = pixel_logreg(x_fit, y_fit, seed).predict(x_test)
    results["pixel_logreg"] = {**_scores(label_of, test_order, predicted, classes), "n_fit": len(fit_order)}

    values = object_features(dataset_dir.parent, dataset_dir.name, [*fit_ids, *test_ids])
    names = feature_names(values, fit_ids)
    if names:
        y = np.array([index[label_of[i]] for i in fit_ids])
        forest = features_rf(feature_matrix(values, fit_ids, names), y, seed)
        predicted = forest.predict(feature_matrix(values, test_ids, names))
        results["features_rf"] = {**_scores(label_of, test_ids, predicted, classes), "n_features": len(names),
                                  "n_fit": len(fit_ids)}
    return results


def _scores(label_of: dict[str, str], ids: Sequence[str], predicted: np.ndarray, classes: list[str]) -> dict:
    scores = M.classification_metrics([label_of[i] for i in ids], [classes[p] for p in predicted], classes)
    return {m: scores[m] for m in M.HEADLINE_METRICS}


def pixel_logreg(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    return make_head("linear", len(y_train), seed).fit(x_train, y_train)


def features_rf(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    """The forest of ``--head forest`` on the raw features, missing values imputed by the training median."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    return make_pipeline(SimpleImputer(strategy="median"), make_head("forest", len(y_train), seed)).fit(x_train, y_train)
