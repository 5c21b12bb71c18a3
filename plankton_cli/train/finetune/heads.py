"""Cheap heads fitted with scikit-learn: a linear probe and a k-nearest-neighbour classifier on frozen embeddings,
and a random forest on the objects' features.

The first two are the standard evaluations of a self-supervised encoder and take seconds; with 1-5 % labels they
often beat fine-tuning, which has too few images to move a ViT well. The forest is what EcoTaxa's classifier does
with morphometrics, and with a few dozen labels it is hard to beat. ``--head auto`` fits them beside fine-tuning
and keeps, per fold, whichever scores the best validation macro-F1; the one kept becomes the fold's model file
(``models.fitted_heads`` turns the fitted estimator into tensors).

Linear and kNN see a *design matrix*: the pooled encoder embedding, to which ``design_matrix`` concatenates any
extra per-object columns (standardised numeric features, for instance) given as a second matrix; the forest sees
only the standardised feature values the fine-tuned head gets (not their missing indicators: see ``fold``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from plankton_cli.prepare.data import StoreDataLoader

if TYPE_CHECKING:
    from plankton_cli.train.models.fitted_heads import FittedHead

CHEAP_HEADS = ("linear", "knn", "forest")
FEATURE_ONLY_HEADS = ("forest",)
KNN_NEIGHBOURS = 10
FOREST_TREES = 300


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
    """An unfitted scikit-learn classifier: ``linear`` (standardised, L2 logistic regression), ``knn`` (cosine
    distance, distance-weighted, k = min(10, training images)) or ``forest`` (300 trees)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
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
    raise ValueError(f"unknown head {kind!r}; expected one of {', '.join(CHEAP_HEADS)}")


def fit_head(kind: str, x_train: np.ndarray, y_train: np.ndarray, n_classes: int, seed: int = 0) -> FittedHead:
    """Fit a ``kind`` head on the training rows, as the torch module a model file carries."""
    from plankton_cli.train.models.fitted_heads import fitted_head

    return fitted_head(make_head(kind, len(y_train), seed).fit(x_train, y_train), kind, n_classes)


@torch.no_grad()
def head_probabilities(head: FittedHead, x: np.ndarray) -> np.ndarray:
    """Class probabilities of a fitted head for the rows of ``x`` (float32)."""
    return torch.softmax(head(torch.from_numpy(np.ascontiguousarray(x))), dim=1).float().numpy()
