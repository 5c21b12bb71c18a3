"""Cheap heads fitted with scikit-learn: a linear probe and a k-nearest-neighbour classifier on frozen embeddings,
and a random forest and a logistic regression on the objects' features.

The first two are the standard evaluations of a self-supervised encoder and take seconds; with 1-5 % labels they
often beat fine-tuning, which has too few images to move a ViT well. The forest is what EcoTaxa's classifier does
with morphometrics, and with a few dozen labels it is hard to beat. ``--head auto`` fits them beside fine-tuning
and keeps, per fold, whichever scores best (``fold``: by cross-validation over every label under the budget
protocol); the one kept becomes the fold's model file (``models.fitted_heads`` turns the fitted estimator into
tensors).

Linear and kNN see a *design matrix*: the pooled encoder embedding, to which ``design_matrix`` concatenates any
extra per-object columns (standardised numeric features, for instance) given as a second matrix; the forest and
the logistic regression see only the standardised feature values the fine-tuned head gets (not their missing
indicators: see ``fold``).

The features' logistic regression (``logreg``) is class-balanced, with its regularisation C chosen by a stratified
cross-validation on the labels it is fitted on. On bench/quality.py's UVP6 folds it beat the features' forest by 6
to 8 macro-F1 points at 5-25 % labels (on the FlowCam-like set by 4 at one label a class, losing 4 to 6 above);
joined to the frozen MAE embeddings it lost 4 to 8 points to the forest (the demo's tiny encoder adds noise, not
signal), hence the features alone.

``blend`` averages the forest's probabilities with those of that logistic regression fitted on the features
Yeo-Johnson-transformed (areas, volumes and perimeters are skewed; a linear model wants them symmetric). The
transform needs no labels, so it is fitted on the fold's whole non-test pool (``unlabelled``): the labelled objects
and those whose labels the fold does not use. On bench/heads_offline.py's splits (10 draws of 5 folds on the
FlowCam-like set, 5 on UVP6) it beat the forest fitted on the same labels by 4.0 to 6.8 macro-F1 points at every
fraction of both sets (UVP6 5/10/25 %: +6.4/+5.4/+5.8; FlowCam-like 5/25 %: +6.8/+4.0), where the logistic
regression alone lost 2.2 points to the forest on the FlowCam-like set at 25 % and the mean of the two without the
transform gained 1.1 there. So ``auto`` fits ``blend`` and not the logistic regression alone (a candidate that
loses to another everywhere only gives its cross-validated choice more ways to be wrong), but keeps the forest: it
is the baseline every model is compared with, and a split where it wins must not leave the model below it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from plankton_cli.prepare.data import StoreDataLoader

if TYPE_CHECKING:
    from plankton_cli.train.models.fitted_heads import FittedHead

AUTO_HEADS = ("linear", "knn", "forest", "blend")  # what --head auto fits and chooses from
CHEAP_HEADS = (*AUTO_HEADS, "logreg")
KNN_NEIGHBOURS = 10
FOREST_TREES = 300
LOGREG_C = (0.01, 0.1, 1.0, 10.0)  # what the inner cross-validation chooses from (100 lost 2 points on UVP6 at 25 %)
INNER_FOLDS = 3  # at most; fewer when no class has that many labels


@torch.no_grad()
def embed(model: torch.nn.Module, loader: StoreDataLoader) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(object_ids, labels, embeddings)`` of every image of ``loader``: the model's pooled encoder output
    (``forward_features``), in eval mode, on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids: list[str] = []
    labels, features = [], []
    for batch in loader:
        ids += list(batch["object_id"])
        labels.append(batch["label"].numpy())
        features.append(model.forward_features(batch["image"].to(device)).float().cpu().numpy())
    model.train(was_training)
    width = model.encoder.num_features if hasattr(model, "encoder") else 0
    return (ids, np.concatenate(labels) if labels else np.zeros(0, np.int64),
            np.concatenate(features) if features else np.zeros((0, width), np.float32))


def design_matrix(embeddings: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """What a cheap head is fitted on: the embeddings, with ``extra`` columns (same rows, already scaled)
    appended when given."""
    if extra is None:
        return embeddings
    if len(extra) != len(embeddings):
        raise ValueError(f"extra columns have {len(extra)} rows for {len(embeddings)} embeddings")
    return np.concatenate([embeddings, extra.astype(embeddings.dtype)], axis=1)


def inner_folds(y: np.ndarray, seed: int = 0) -> Any:
    """The stratified folds of a cross-validation on labels ``y`` (as many as the largest class allows, at most
    ``INNER_FOLDS``), or None when no class has two labels."""
    from sklearn.model_selection import StratifiedKFold

    n = min(INNER_FOLDS, int(np.unique(y, return_counts=True)[1].max()) if len(y) else 0)
    return StratifiedKFold(n, shuffle=True, random_state=seed) if n >= 2 else None


def make_head(kind: str, n_train: int, seed: int = 0, folds: Any = None, unlabelled: FeaturePool | None = None) -> Any:
    """An unfitted scikit-learn classifier: ``linear`` (standardised, L2 logistic regression), ``knn`` (cosine
    distance, distance-weighted, k = min(10, training images)), ``forest`` (300 trees), ``logreg`` (standardised,
    class-balanced L2 logistic regression, C chosen by macro-F1 over ``folds``, ``inner_folds``; C = 1 without) or
    ``blend`` (``ForestLogregBlend``, its transform fitted on ``unlabelled`` and the training rows)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "linear":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    if kind == "knn":
        return KNeighborsClassifier(n_neighbors=max(1, min(KNN_NEIGHBOURS, n_train)), metric="cosine",
                                    weights="distance")
    if kind == "forest":
        return RandomForestClassifier(n_estimators=FOREST_TREES, random_state=seed, n_jobs=1)
    if kind == "logreg":
        logreg = (LogisticRegression(class_weight="balanced", max_iter=3000, random_state=seed) if folds is None else
                  LogisticRegressionCV(Cs=list(LOGREG_C), cv=folds, scoring="f1_macro", class_weight="balanced",
                                       max_iter=3000, random_state=seed))
        return make_pipeline(StandardScaler(), logreg)
    if kind == "blend":
        return ForestLogregBlend(unlabelled, seed, folds)
    raise ValueError(f"unknown head {kind!r}; expected one of {', '.join(CHEAP_HEADS)}")


@dataclass(frozen=True)
class FeaturePool:
    """What ``blend`` fits its Yeo-Johnson transform on besides the training rows: the feature values of the fold's
    objects whose labels it does not use (test objects excluded), and how to undo the feature input's robust
    scaling (``values * scale + center``), since the skew to remove is that of the measured values."""

    values: np.ndarray
    center: np.ndarray
    scale: np.ndarray


class ForestLogregBlend:
    """``--head blend``: the mean of the class probabilities of the features' forest (on the feature input) and of
    the class-balanced logistic regression (``logreg``) on the Yeo-Johnson-transformed measured values."""

    def __init__(self, unlabelled: FeaturePool | None = None, seed: int = 0, folds: Any = None):
        self.unlabelled, self.seed, self.folds = unlabelled, seed, folds

    def measured(self, x: np.ndarray) -> np.ndarray:
        """The feature input's values back in their units (without a pool: as they are)."""
        x = x.astype(np.float64)
        return x if self.unlabelled is None else x * self.unlabelled.scale + self.unlabelled.center

    def fit(self, x: np.ndarray, y: np.ndarray) -> ForestLogregBlend:
        from sklearn.preprocessing import PowerTransformer

        pool = self.unlabelled.values if self.unlabelled is not None else np.zeros((0, x.shape[1]))
        self.power_ = PowerTransformer().fit(self.measured(np.concatenate([pool, x])))
        self.forest_ = make_head("forest", len(y), self.seed).fit(x, y)
        self.logreg_ = make_head("logreg", len(y), self.seed, self.folds).fit(self.transformed(x), y)
        self.classes_ = self.forest_.classes_
        return self

    def transformed(self, x: np.ndarray) -> np.ndarray:
        return self.power_.transform(self.measured(x))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return (self.forest_.predict_proba(x) + self.logreg_.predict_proba(self.transformed(x))) / 2

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(1)]


def fit_estimator(kind: str, x_train: np.ndarray, y_train: np.ndarray, seed: int = 0,
                  unlabelled: FeaturePool | None = None) -> Any:
    """A ``kind`` head fitted on the training rows, as scikit-learn's estimator."""
    with warnings.catch_warnings():  # a class with fewer labels than inner folds, a C that does not converge
        warnings.simplefilter("ignore")
        return make_head(kind, len(y_train), seed, inner_folds(y_train, seed), unlabelled).fit(x_train, y_train)


def fit_head(kind: str, x_train: np.ndarray, y_train: np.ndarray, n_classes: int, seed: int = 0,
             unlabelled: FeaturePool | None = None) -> FittedHead:
    """Fit a ``kind`` head on the training rows, as the torch module a model file carries."""
    from plankton_cli.train.models.fitted_heads import fitted_head

    return fitted_head(fit_estimator(kind, x_train, y_train, seed, unlabelled), kind, n_classes)


def cross_validated_probabilities(kind: str, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0,
                                  unlabelled: FeaturePool | None = None) -> np.ndarray | None:
    """Each row's class probabilities from a ``kind`` head fitted on the other folds' rows (``inner_folds``), the
    way ``--head auto`` scores a cheap head on every label of the budget; None when no class has two labels."""
    folds = inner_folds(y, seed)
    if folds is None:
        return None
    probabilities = np.zeros((len(y), n_classes), np.float32)
    for fit, held_out in folds.split(x, y):
        estimator = fit_estimator(kind, x[fit], y[fit], seed, unlabelled)
        probabilities[np.ix_(held_out, estimator.classes_)] = estimator.predict_proba(x[held_out])
    return probabilities


@torch.no_grad()
def head_probabilities(head: FittedHead, x: np.ndarray) -> np.ndarray:
    """Class probabilities of a fitted head for the rows of ``x`` (float32)."""
    return torch.softmax(head(torch.from_numpy(np.ascontiguousarray(x))), dim=1).float().numpy()
