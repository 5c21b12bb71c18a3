"""Baselines every fine-tune fold is compared with, and the design matrix of the cheap heads."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_data
from plankton_cli.prepare.features.inputs import object_features
from plankton_cli.train.finetune.baselines import feature_names, score_baselines
from plankton_cli.train.finetune.heads import design_matrix, fit_head, head_probabilities
from plankton_cli.ingest import ingest
from plankton_cli.store import Store


@pytest.fixture(scope="module")
def zooscan_store(tmp_path_factory) -> Store:
    """EcoTaxa's QA import bundles: 11 real ZooScan objects with their ZooProcess morphometrics."""
    store = Store(tmp_path_factory.mktemp("zooscan") / "store")
    ingest(store, [shared_data("ecotaxa", "ecotaxa-back-qa", "import_test")])
    return store


def test_morphometrics_are_read_from_metadata_without_place_and_time(zooscan_store):
    rows = zooscan_store.dataset("objects").to_table(columns=["object_id"]).to_pylist()
    ids = [r["object_id"] for r in rows]
    values = object_features(zooscan_store.root, "objects", ids)
    names = feature_names(values, ids)
    assert {"object_area", "object_major", "object_minor", "object_feret", "object_mean"} <= set(names)
    assert not {"object_depth_min", "object_depth_max", "object_by", "object_annotation_date"} & set(names)
    assert all(isinstance(v, float) for row in values.values() for v in row.values())


def test_every_fold_gets_pixel_and_feature_baselines(zooscan_store):
    table = zooscan_store.dataset("objects").to_table(columns=["object_id", "label"]).to_pylist()
    label_of = {r["object_id"]: r["label"] for r in table}
    ids = sorted(label_of)
    classes = sorted(set(label_of.values()))
    scores = score_baselines(zooscan_store.root / "objects", ids[:7], ids[7:], label_of, classes)
    assert set(scores) == {"pixel_logreg", "features_rf"}
    assert scores["pixel_logreg"]["n_fit"] == scores["features_rf"]["n_fit"] == 7
    assert scores["features_rf"]["n_features"] >= 8
    for result in scores.values():
        assert {"accuracy", "balanced_accuracy", "macro_f1"} <= set(result)
        assert all(0.0 <= result[m] <= 1.0 for m in ("accuracy", "balanced_accuracy", "macro_f1"))


def test_design_matrix_takes_extra_columns_and_heads_use_them():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 8)).astype(np.float32)
    labels = np.repeat([0, 1], 20)
    # The embeddings carry no class signal; one extra (already standardised) column carries all of it.
    extra = (labels[:, None] * 4.0 - 2.0) + rng.normal(scale=0.1, size=(40, 1))
    x = design_matrix(embeddings, extra)
    assert x.shape == (40, 9) and np.array_equal(x[:, :8], embeddings)
    assert design_matrix(embeddings) is embeddings
    with pytest.raises(ValueError, match="rows"):
        design_matrix(embeddings, extra[:10])
    train, test = np.arange(40) % 2 == 0, np.arange(40) % 2 == 1
    for kind in ("linear", "knn", "forest"):
        probabilities = head_probabilities(fit_head(kind, x[train], labels[train], n_classes=3), x[test])
        assert probabilities.shape == (20, 3) and np.allclose(probabilities.sum(axis=1), 1)
        assert (probabilities.argmax(axis=1) == labels[test]).mean() == 1.0
