"""Cheap heads on frozen embeddings: a linear probe and a k-nearest-neighbour classifier (scikit-learn).

These are the standard evaluations of a self-supervised encoder and take seconds; with 1-5 % labels they often
beat fine-tuning, which has too few images to move a ViT well. ``--head auto`` fits both beside fine-tuning and
keeps, per fold, whichever scores the best validation macro-F1.

The classifiers see a *design matrix*: the pooled encoder embedding, to which ``design_matrix`` concatenates any
extra per-object columns (standardised numeric features, for instance) given as a second matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from plankton_cli.data import StoreDataLoader

CHEAP_HEADS = ("linear", "knn")
KNN_NEIGHBOURS = 10


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


def make_head(kind: str, n_train: int, seed: int = 0) -> Any:
    """An unfitted scikit-learn classifier: ``linear`` (standardised, L2 logistic regression) or ``knn``
    (cosine distance, distance-weighted, k = min(10, training images))."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "linear":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    if kind == "knn":
        return KNeighborsClassifier(n_neighbors=max(1, min(KNN_NEIGHBOURS, n_train)), metric="cosine",
                                    weights="distance")
    raise ValueError(f"unknown head {kind!r}; expected one of {', '.join(CHEAP_HEADS)}")


def probabilities(estimator: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` over all ``n_classes`` (columns of classes absent from training stay 0)."""
    full = np.zeros((len(x), n_classes), np.float32)
    if len(x):
        full[:, estimator.classes_] = estimator.predict_proba(x)
    return full


def fit_and_predict(kind: str, x_train: np.ndarray, y_train: np.ndarray, others: Sequence[np.ndarray],
                    n_classes: int, seed: int = 0) -> list[np.ndarray]:
    """Fit a ``kind`` head on the training rows; class probabilities for each matrix of ``others``."""
    estimator = make_head(kind, len(y_train), seed).fit(x_train, y_train)
    return [probabilities(estimator, x, n_classes) for x in others]
