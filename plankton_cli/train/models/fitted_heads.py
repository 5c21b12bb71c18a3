"""Heads fitted by scikit-learn, held as tensors so that a model file carries them and predict runs them in torch.

``--head linear|knn|forest|logreg|blend`` (and ``auto`` when it picks one) fits a scikit-learn classifier on frozen embeddings
and/or the objects' feature inputs. Storing it as a pickle would make a model file something that runs code when
loaded; instead each head is translated into the few arrays that define it (a weight matrix; the training
embeddings; the trees' node tables), saved in the model's safetensors under ``head.``, and evaluated here with
the same arithmetic scikit-learn uses, so the probabilities a fold was scored with are the ones predict gives.

Each head returns log-probabilities as its logits: ``softmax`` of them is the fitted classifier's
``predict_proba`` (to float rounding), so thresholds, top-k and every writer work unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

FITTED_HEADS = ("linear", "knn", "forest", "logreg", "blend")
ABSENT_LOGIT = -1e4  # a class the head never saw in training: probability 0 after softmax
_TINY = 1e-12


class FittedHead(nn.Module):
    """A head whose parameters come from a fitted scikit-learn estimator (see the module docstring)."""

    kind: ClassVar[str]
    reads_embedding: ClassVar[bool] = True  # False: it reads only the per-object feature input

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> FittedHead:
        """An empty head shaped like ``state`` (a model file's ``head.*`` tensors, prefix stripped)."""
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        for name, tensor in state.items():
            head.register_buffer(name, torch.empty_like(tensor))
        return head


class LinearHead(FittedHead):
    """The linear probe: ``StandardScaler`` → ``LogisticRegression``, with the scaler folded into the weights."""

    kind = "linear"

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    @classmethod
    def from_sklearn(cls, pipeline: Any, n_classes: int) -> LinearHead:
        scaler, logreg = pipeline[0], pipeline[-1]
        coef, intercept = logreg.coef_, logreg.intercept_
        if len(logreg.classes_) == 2:  # binary: one row for class 1; softmax([0, z]) = [1 - σ(z), σ(z)]
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
        coef = coef / scaler.scale_
        weight = np.zeros((n_classes, coef.shape[1]))
        bias = np.full(n_classes, ABSENT_LOGIT)
        weight[logreg.classes_], bias[logreg.classes_] = coef, intercept - coef @ scaler.mean_
        return cls(weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias)


class LogregHead(LinearHead):
    """The features' logistic regression (``--head logreg``): a linear head on the feature values alone. Its input
    is the whole feature input, values first, then the missing indicators, which it does not read."""

    kind = "logreg"
    reads_embedding = False

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x[:, :self.weight.shape[1]])


class KNNHead(FittedHead):
    """Cosine k-nearest neighbours, distance-weighted (``KNeighborsClassifier(metric="cosine",
    weights="distance")``): the training embeddings, unit length, and their classes."""

    kind = "knn"

    def __init__(self, keys: np.ndarray, labels: np.ndarray, k: int, n_classes: int):
        super().__init__()
        keys = torch.as_tensor(keys, dtype=torch.float32)
        self.register_buffer("keys", nn.functional.normalize(keys, dim=1))
        self.register_buffer("votes", nn.functional.one_hot(torch.as_tensor(labels), n_classes).float())
        self.register_buffer("k", torch.tensor(min(k, len(keys))))

    @classmethod
    def from_sklearn(cls, knn: Any, n_classes: int) -> KNNHead:
        return cls(knn._fit_X, knn.classes_[knn._y], knn.n_neighbors, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        similarity = nn.functional.normalize(x.to(self.keys.dtype), dim=1) @ self.keys.T
        nearest, index = similarity.topk(int(self.k), dim=1)
        # scikit-learn weighs a neighbour by 1 / distance; a neighbour at distance 0 outweighs all others.
        weights = 1.0 / (1.0 - nearest).clamp_min(_TINY)
        scores = torch.einsum("bk,bkc->bc", weights, self.votes[index])
        return torch.log((scores / scores.sum(1, keepdim=True)).clamp_min(_TINY))


class ForestHead(FittedHead):
    """A random forest on the feature input: every tree's node table, padded to the largest tree.

    Walking all trees at once takes ``depth`` gathers per batch; a leaf points to itself, so a walk that reaches
    one early stays there. Thresholds stay float64 and inputs are compared as scikit-learn does (float32 values
    against float64 thresholds), so the leaves reached are the same.
    """

    kind = "forest"
    reads_embedding = False

    def __init__(self, left: np.ndarray, right: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                 value: np.ndarray, depth: int):
        super().__init__()
        self.register_buffer("left", torch.as_tensor(left, dtype=torch.int64))
        self.register_buffer("right", torch.as_tensor(right, dtype=torch.int64))
        self.register_buffer("feature", torch.as_tensor(feature, dtype=torch.int64))
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float64))
        self.register_buffer("value", torch.as_tensor(value, dtype=torch.float32))
        self.register_buffer("depth", torch.tensor(depth))
        self.steps = depth

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> FittedHead:
        head = super().from_state(state)
        head.register_load_state_dict_post_hook(_count_steps)
        return head

    @classmethod
    def from_sklearn(cls, forest: Any, n_classes: int) -> ForestHead:
        trees = [estimator.tree_ for estimator in forest.estimators_]
        size = max(tree.node_count for tree in trees)
        left = np.tile(np.arange(size), (len(trees), 1))  # padding nodes and leaves point to themselves
        right, feature = left.copy(), np.zeros_like(left)
        threshold = np.zeros(left.shape)
        value = np.zeros((len(trees), size, n_classes))
        for t, tree in enumerate(trees):
            n, split = tree.node_count, tree.children_left >= 0
            left[t, :n] = np.where(split, tree.children_left, np.arange(n))
            right[t, :n] = np.where(split, tree.children_right, np.arange(n))
            feature[t, :n] = np.where(split, tree.feature, 0)
            threshold[t, :n] = tree.threshold
            counts = tree.value[:, 0, :]
            value[t, :n][:, forest.classes_] = counts / counts.sum(1, keepdims=True)
        return cls(left, right, feature, threshold, value, max(tree.max_depth for tree in trees))

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).to(torch.float64)
        # The trees' tables as one: node ids offset by tree, so each step is a plain gather (also in ONNX).
        trees, size = self.left.shape
        offset = torch.arange(trees, device=x.device) * size
        left, right = (self.left + offset[:, None]).flatten(), (self.right + offset[:, None]).flatten()
        feature, threshold = self.feature.flatten(), self.threshold.flatten()
        node = torch.zeros_like(x[:, :1], dtype=torch.int64) + offset  # every tree's root, per image
        for _ in range(self.steps):
            go_left = x.gather(1, feature[node]) <= threshold[node]
            node = torch.where(go_left, left[node], right[node])
        probabilities = self.value.flatten(0, 1)[node].mean(1)
        return torch.log(probabilities.clamp_min(_TINY))


class BlendHead(FittedHead):
    """``--head blend`` (``finetune.heads.ForestLogregBlend``): the mean of a forest's probabilities on the feature
    input and a linear head's on the Yeo-Johnson-transformed measured values (the input's values, their robust
    scaling undone: ``center``, ``scale``; then scikit-learn's ``PowerTransformer``: ``lambdas``, standardised by
    ``mean`` and ``std``)."""

    kind = "blend"
    reads_embedding = False

    def __init__(self, forest: ForestHead, linear: LinearHead, center: np.ndarray, scale: np.ndarray,
                 lambdas: np.ndarray, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.forest, self.linear = forest, linear
        for name, values in (("center", center), ("scale", scale), ("lambdas", lambdas), ("mean", mean),
                             ("std", std)):
            self.register_buffer(name, torch.as_tensor(values, dtype=torch.float64))

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> FittedHead:
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        parts: dict[str, dict[str, Tensor]] = {"forest": {}, "linear": {}}
        for name, tensor in state.items():
            part, _, rest = name.partition(".")
            if rest:
                parts[part][rest] = tensor
            else:
                head.register_buffer(name, torch.empty_like(tensor))
        head.forest = ForestHead.from_state(parts["forest"])
        head.linear = LinearHead.from_state(parts["linear"])
        return head

    @classmethod
    def from_sklearn(cls, blend: Any, n_classes: int) -> BlendHead:
        width = len(blend.power_.lambdas_)
        pool = blend.unlabelled
        center, scale = (np.zeros(width), np.ones(width)) if pool is None else (pool.center, pool.scale)
        scaler = blend.power_._scaler  # PowerTransformer(standardize=True) standardises with a StandardScaler
        return cls(ForestHead.from_sklearn(blend.forest_, n_classes), LinearHead.from_sklearn(blend.logreg_, n_classes),
                   center, scale, blend.power_.lambdas_, scaler.mean_, scaler.scale_)

    def forward(self, x: Tensor) -> Tensor:
        values = x[:, :len(self.lambdas)].to(torch.float64) * self.scale + self.center
        transformed = (_yeo_johnson(values, self.lambdas) - self.mean) / self.std
        probabilities = (torch.softmax(self.forest(x), 1) + torch.softmax(self.linear(transformed), 1).double()) / 2
        return torch.log(probabilities.clamp_min(_TINY)).float()


def _yeo_johnson(x: Tensor, lambdas: Tensor) -> Tensor:
    """scikit-learn's ``PowerTransformer._yeo_johnson_transform``, column by column (``lambdas``)."""
    eps = torch.finfo(torch.float64).eps
    near_zero, near_two = lambdas.abs() < eps, (lambdas - 2).abs() < eps
    positive = x >= 0
    up, down = torch.log1p(x.clamp_min(0)), torch.log1p((-x).clamp_min(0))  # log(1 + |x|) on each side
    safe, safe_two = torch.where(near_zero, 1.0, lambdas), torch.where(near_two, 1.0, 2 - lambdas)
    above = torch.where(near_zero, up, torch.expm1(safe * up) / safe)
    below = torch.where(near_two, -down, -torch.expm1(safe_two * down) / safe_two)
    return torch.where(positive, above, below)


def _count_steps(head: nn.Module, incompatible: Any) -> None:
    """The walk's length as a Python int, read once when a model file fills the head: a fixed loop, which
    ``torch.export`` (the ONNX export) can trace, where a loop over a tensor's value would depend on the data."""
    head.steps = int(head.depth)


HEAD_CLASSES: dict[str, type[FittedHead]] = {cls.kind: cls for cls in (LinearHead, KNNHead, ForestHead, LogregHead,
                                                                         BlendHead)}


def fitted_head(estimator: Any, kind: str, n_classes: int) -> FittedHead:
    """The head of a fitted ``finetune.heads.make_head(kind)`` estimator."""
    return HEAD_CLASSES[kind].from_sklearn(estimator, n_classes)


def head_from_state(kind: str, state: dict[str, Tensor]) -> FittedHead:
    """An empty ``kind`` head shaped for a model file's ``head.*`` tensors (``load_state_dict`` fills it)."""
    if kind not in HEAD_CLASSES:
        raise ValueError(f"unknown head {kind!r}; expected one of {', '.join(HEAD_CLASSES)}")
    return HEAD_CLASSES[kind].from_state(state)
