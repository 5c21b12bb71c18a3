"""Fitted heads: the torch tensors a model file carries give the scikit-learn classifier's probabilities, and a
model with one survives save → load."""

import numpy as np
import pytest
import torch

from plankton_cli.prepare.features.inputs import FeatureScaling
from plankton_cli.train.finetune.heads import fit_head, head_probabilities, make_head
from plankton_cli.train.models import load_model, save_model
from plankton_cli.train.models.classifier import Classifier
from plankton_cli.train.model_info import FEATURE_ONLY_HEADS
from plankton_cli.train.models.fitted_heads import FITTED_HEADS, ForestHead, LinearHead, fitted_head

N_CLASSES = 5  # class 3 never appears in training: its probability must stay 0


def _data(seed: int = 0, n: int = 60, width: int = 6):
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 1, 2, 4], size=n)
    x = rng.normal(size=(n, width)).astype(np.float32) + y[:, None] * 0.8
    x[:, -1] = rng.integers(0, 2, size=n)  # a missing-indicator-like 0/1 column
    return x, y


@pytest.mark.parametrize("kind", FITTED_HEADS)
def test_head_gives_the_sklearn_probabilities(kind):
    x, y = _data()
    x_new, _ = _data(seed=1, n=40)
    estimator = make_head(kind, len(y)).fit(x, y)
    expected = np.zeros((len(x_new), N_CLASSES))
    expected[:, estimator.classes_] = estimator.predict_proba(x_new)
    got = head_probabilities(fitted_head(estimator, kind, N_CLASSES), x_new)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert np.all(got[:, 3] < 1e-6)


def test_linear_head_of_two_classes_is_the_logistic_curve():
    x, y = _data()
    y = (y > 1).astype(int)
    estimator = make_head("linear", len(y)).fit(x, y)
    np.testing.assert_allclose(head_probabilities(LinearHead.from_sklearn(estimator, 2), x),
                               estimator.predict_proba(x), atol=2e-5)


def test_forest_reaches_the_sklearn_leaves_at_split_thresholds():
    """Inputs exactly at a split threshold go left, as in scikit-learn (float32 value vs float64 threshold)."""
    x, y = _data()
    estimator = make_head("forest", len(y)).fit(x, y)
    tree = estimator.estimators_[0].tree_
    at_threshold = np.repeat(x[:1], 8, axis=0)
    split = np.flatnonzero(tree.children_left >= 0)[:8]
    at_threshold[np.arange(len(split)), tree.feature[split]] = tree.threshold[split].astype(np.float32)
    expected = np.zeros((len(at_threshold), N_CLASSES))
    expected[:, estimator.classes_] = estimator.predict_proba(at_threshold)
    np.testing.assert_allclose(head_probabilities(ForestHead.from_sklearn(estimator, N_CLASSES), at_threshold),
                               expected, atol=2e-5)


@pytest.mark.parametrize("kind", FITTED_HEADS)
def test_model_with_a_fitted_head_saves_and_loads(kind, tmp_path):
    features = 3
    model = Classifier("vit_tiny_patch16_224", N_CLASSES, img_size=32, patch_size=8, depth=1, embed_dim=16,
                       num_heads=2, feature_dim=2 * features)
    images = torch.rand(12, 1, 32, 32)
    feature_input = torch.randn(12, 2 * features)
    with torch.no_grad():
        design = (feature_input if kind in FEATURE_ONLY_HEADS
                  else torch.cat([model.forward_features(images), feature_input], 1)).numpy()
    y = np.array([0, 1, 2, 4] * 3)
    model.use_fitted_head(fit_head(kind, design, y, N_CLASSES))
    assert model.arch["head"] == kind and "hidden_dim" not in model.arch
    scaling = FeatureScaling(("f0", "f1", "f2"), (0.0,) * features, (1.0,) * features)
    save_model(tmp_path / "m", model.state_dict(), {**model.arch, "classes": list("abcde"), "mean": [0.5],
                                                    "std": [0.25], **scaling.info_fields()})
    loaded, info = load_model(tmp_path / "m")
    assert info.head_kind == kind and type(loaded.head) is type(model.head)
    with torch.no_grad():
        expected = model.eval()(images, feature_input)
        np.testing.assert_allclose(loaded(images, feature_input), expected, atol=1e-5)
        np.testing.assert_allclose(torch.softmax(expected, 1).numpy(), head_probabilities(model.head, design),
                                   atol=1e-5)


def test_a_forest_model_never_runs_the_encoder():
    model = Classifier("vit_tiny_patch16_224", 2, img_size=32, patch_size=8, depth=1, embed_dim=16, num_heads=2,
                       feature_dim=4)
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    model.use_fitted_head(fit_head("forest", x, np.arange(10) % 2, 2))
    model.encoder.forward = None  # calling it would fail
    with torch.no_grad():
        assert model(torch.rand(10, 1, 32, 32), torch.from_numpy(x)).shape == (10, 2)
    assert not model.reads_image and model.arch["head"] == "forest"


def test_blend_undoes_the_scaling_and_fits_its_transform_on_the_unlabelled_pool():
    """``--head blend``: the Yeo-Johnson transform is fitted on the measured values (the feature input's robust
    scaling undone) of the unlabelled pool and the training rows, and the torch head gives its probabilities."""
    from sklearn.preprocessing import PowerTransformer

    from plankton_cli.train.finetune.heads import FeaturePool

    x, y = _data()
    x_new, _ = _data(seed=1, n=40)
    rng = np.random.default_rng(2)
    center, scale = rng.uniform(1, 50, x.shape[1]), rng.uniform(0.5, 20, x.shape[1])
    pool = FeaturePool(rng.normal(size=(80, x.shape[1])).astype(np.float32), center, scale)
    estimator = make_head("blend", len(y), unlabelled=pool).fit(x, y)
    expected_power = PowerTransformer().fit(np.concatenate([pool.values, x]).astype(np.float64) * scale + center)
    np.testing.assert_allclose(estimator.power_.lambdas_, expected_power.lambdas_)
    expected = np.zeros((len(x_new), N_CLASSES))
    expected[:, estimator.classes_] = estimator.predict_proba(x_new)
    np.testing.assert_allclose(expected.sum(1), 1, atol=1e-9)
    np.testing.assert_allclose(head_probabilities(fitted_head(estimator, "blend", N_CLASSES), x_new), expected,
                               atol=2e-5)


@pytest.mark.parametrize("lambdas", [[0.0, 2.0, 0.5], [1.0, -0.7, 3.2]])
def test_the_yeo_johnson_transform_is_scikit_learns(lambdas):
    from sklearn.preprocessing import PowerTransformer

    from plankton_cli.train.models.fitted_heads import _yeo_johnson

    x = np.random.default_rng(0).normal(scale=3, size=(50, 3))
    power = PowerTransformer(standardize=False).fit(x)
    power.lambdas_ = np.array(lambdas)
    np.testing.assert_allclose(_yeo_johnson(torch.from_numpy(x), torch.tensor(lambdas, dtype=torch.float64)).numpy(),
                               power.transform(x), rtol=1e-10, atol=1e-12)
