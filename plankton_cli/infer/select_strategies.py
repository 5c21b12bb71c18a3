"""Which unlabelled objects an expert should label next: the selection strategies of `plankton select`.

Every strategy takes the candidates' class probabilities and/or embeddings (rows of the same pool) and returns the
`budget` rows it picks, in the order it picked them, each with a score and the reason, so that an expert (and the
selection list) can see why an object was chosen:

- `margin`: the smallest gap between the two most probable classes (the model hesitates between two classes);
- `entropy`: the highest entropy of the probabilities (the model hesitates among many);
- `coreset`: k-centre greedy (Sener & Savarese 2018) on the embeddings: each pick is the candidate farthest from
  every labelled and already picked object, which minimises the largest distance from any candidate to its nearest
  labelled object (`coverage_radius`, the objective);
- `typiclust`: TypiClust (Hacohen et al. 2022), the strongest at very few labels: k-means over labelled and
  candidate embeddings into (labelled + budget) clusters (at most `MAX_CLUSTERS`), then, cluster after cluster in
  the order fewest labelled objects, largest first, the most typical candidate (the inverse mean distance to its
  `TYPICALITY_NEIGHBOURS` nearest neighbours within its cluster);
- `cluster-margin`: Cluster-Margin (Citovsky et al. 2021), simplified: the `MIX_POOL` × budget smallest-margin
  candidates, grouped by k-means on the embeddings into `budget` clusters, and the smallest-margin candidate of
  each cluster: uncertain picks, no two of them from one region of the embedding space (margin alone spends a
  round on near-duplicates the model hesitates about for the same reason);
- `random`: a uniform sample, the reference every benchmark compares with.

`mix` combines uncertainty with diversity: the `MIX_POOL` × budget most uncertain candidates (by `margin` or
`entropy`), then `coreset` or `typiclust` among them, so the picks are uncertain and unlike each other.
`per_class_min` picks, for every predicted class first, that many of its candidates (by the same strategy within
the class), so rare classes are represented; the rest of the budget is then picked over all candidates, with the
class picks counted as labelled.

Distances are Euclidean, on the embeddings projected onto their first `DIVERSITY_DIMS` principal components
(fitted on labelled and candidate embeddings together) when they are wider: k-centre greedy costs one pass over all
candidates per pick, and k-means one per iteration, so 1,000 picks among 100,000 ViT embeddings take seconds
instead of minutes, and most of the distance between ViT embeddings lies in their first components anyway.
scikit-learn does the PCA, the k-means and the nearest neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("margin", "entropy", "coreset", "typiclust", "cluster-margin", "random")
UNCERTAINTY = ("margin", "entropy")
DIVERSITY = ("coreset", "typiclust")
NEEDS_EMBEDDINGS = (*DIVERSITY, "cluster-margin")
MAX_CLUSTERS = 500  # TypiClust's cap: more clusters than this are too small to tell typical from not
MIN_CLUSTER_SIZE = 5  # TypiClust's: smaller clusters are outliers, not a mode of the data
TYPICALITY_NEIGHBOURS = 20
TYPICALITY_REFERENCE = 500
PCA_FIT_ROWS = 5_000  # the projection is fitted on a seeded sample this large (its components barely move)
MIX_POOL = 10  # --mix: the diverse picks are made among this many times the budget of the most uncertain
DIVERSITY_DIMS = 32  # see the module docstring
KMEANS_FIT_ROWS = 20_000
KMEANS_ITERATIONS = 50


@dataclass
class Picks:
    """Rows of the pool picked, in the order picked, with each one's score and why it was picked."""

    rows: np.ndarray  # int64 indices into the pool
    scores: np.ndarray  # float64, the strategy's own number (see `reason`)
    reasons: list[str]

    @classmethod
    def empty(cls) -> Picks:
        return cls(np.zeros(0, np.int64), np.zeros(0), [])

    def __len__(self) -> int:
        return len(self.rows)

    def then(self, other: Picks) -> Picks:
        return Picks(np.concatenate([self.rows, other.rows]), np.concatenate([self.scores, other.scores]),
                     self.reasons + other.reasons)

    def subset(self, rows: np.ndarray) -> Picks:
        """These picks with their rows mapped through `rows` (picks within a subset of the pool → pool rows)."""
        return Picks(rows[self.rows], self.scores, self.reasons)


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 − top-2 probability per row (1 for a one-class model)."""
    if probabilities.shape[1] < 2:
        return np.ones(len(probabilities))
    top2 = np.partition(probabilities, -2, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]).astype(np.float64)


def entropies(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def uncertainty(kind: str, probabilities: np.ndarray, budget: int) -> Picks:
    """The `budget` most uncertain rows: smallest margin or highest entropy (ties: the lower row)."""
    if kind == "margin":
        score = margins(probabilities)
        order = np.argsort(score, kind="stable")[:budget]
        return Picks(order, score[order], [f"margin {s:.3f} between its two likeliest classes" for s in score[order]])
    score = entropies(probabilities)
    order = np.argsort(-score, kind="stable")[:budget]
    return Picks(order, score[order], [f"entropy {s:.3f} of its class probabilities" for s in score[order]])


def _squared_distances_to(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each row's squared distance to its nearest centre (chunked: memory stays ~ 64 MB)."""
    from sklearn.metrics import pairwise_distances_argmin_min

    _, distances = pairwise_distances_argmin_min(x, centres)
    return distances.astype(np.float32) ** 2


def coreset(embeddings: np.ndarray, budget: int, labelled: np.ndarray | None = None,
            seed: int = 0) -> Picks:
    """k-centre greedy: each pick is the candidate farthest from its nearest labelled or picked object. Without
    labelled objects, the first pick is a seeded random candidate."""
    x = np.ascontiguousarray(embeddings, np.float32)
    norms = np.einsum("ij,ij->i", x, x)
    budget = min(budget, len(x))
    rows, scores = [], []
    if labelled is not None and len(labelled):
        nearest = _squared_distances_to(x, np.asarray(labelled, np.float32))
    else:
        nearest = np.full(len(x), np.inf, np.float32)
    for step in range(budget):
        i = int(np.argmax(nearest)) if step or np.isfinite(nearest).any() else \
            int(np.random.default_rng(seed).integers(len(x)))
        rows.append(i)
        scores.append(float(np.sqrt(max(nearest[i], 0.0))) if np.isfinite(nearest[i]) else np.inf)
        # |x - c|² = |x|² - 2 x·c + |c|²: one matrix-vector product per pick
        np.minimum(nearest, norms - 2 * (x @ x[i]) + norms[i], out=nearest)
        nearest[i] = -1.0  # picked: never again
    scores_arr = np.asarray(scores)
    reasons = ["coreset: the first centre (nothing labelled yet)" if not np.isfinite(s) else
               f"coreset: {s:.3f} from the nearest labelled or picked object" for s in scores_arr]
    return Picks(np.asarray(rows, np.int64), scores_arr, reasons)


def coverage_radius(embeddings: np.ndarray, centres: np.ndarray) -> float:
    """k-centre's objective: the largest distance from a candidate to its nearest centre (smaller covers better)."""
    return float(np.sqrt(_squared_distances_to(np.asarray(embeddings, np.float32),
                                               np.asarray(centres, np.float32)).max()))


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Each row's cluster of k-means, fitted on at most `KMEANS_FIT_ROWS` rows (a seeded sample): on 100k rows,
    5 × faster than mini-batch k-means on all of them, with clusters as even."""
    from sklearn.cluster import KMeans

    sample = x
    if len(x) > KMEANS_FIT_ROWS:
        sample = x[np.random.default_rng(seed).choice(len(x), KMEANS_FIT_ROWS, replace=False)]
    model = KMeans(n_clusters=k, n_init=1, max_iter=KMEANS_ITERATIONS, random_state=seed).fit(sample)
    return model.predict(x) if sample is not x else model.labels_


def typicality(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """1 / mean distance to the `TYPICALITY_NEIGHBOURS` nearest other rows (TypiClust's density). The neighbours
    are looked for among at most `TYPICALITY_REFERENCE` rows (a seeded sample of a larger cluster), in numpy: a
    cluster's few hundred rows are faster done than dispatched to scikit-learn's threads."""
    k = min(TYPICALITY_NEIGHBOURS, len(x) - 1)
    if k < 1:
        return np.ones(len(x))
    reference = x
    if len(x) > TYPICALITY_REFERENCE:
        reference = x[np.random.default_rng(seed).choice(len(x), TYPICALITY_REFERENCE, replace=False)]
    squared = (np.einsum("ij,ij->i", x, x)[:, None] - 2 * x @ reference.T
               + np.einsum("ij,ij->i", reference, reference)[None, :])
    nearest = np.sqrt(np.maximum(np.partition(squared, k, axis=1)[:, :k + 1], 0.0))
    # the row itself is among its k + 1 nearest when it is in the reference (distance 0): drop the smallest
    return 1.0 / (np.sort(nearest, axis=1)[:, 1:].mean(axis=1) + 1e-8)


def typiclust(embeddings: np.ndarray, budget: int, labelled: np.ndarray | None = None, seed: int = 0) -> Picks:
    """TypiClust: the most typical candidate of each cluster, clusters with the fewest labelled objects (then the
    largest) first; a cluster picked from counts as labelled once more."""
    x = np.ascontiguousarray(embeddings, np.float32)
    n_labelled = 0 if labelled is None else len(labelled)
    data = x if not n_labelled else np.vstack([np.asarray(labelled, np.float32), x])
    budget = min(budget, len(x))
    k = max(1, min(n_labelled + budget, MAX_CLUSTERS, len(data)))
    cluster = _kmeans(data, k, seed)
    sizes = np.bincount(cluster, minlength=k)
    covered = np.bincount(cluster[:n_labelled], minlength=k).astype(np.int64)
    pool_cluster = cluster[n_labelled:]
    open_ = np.ones(len(x), bool)  # candidates not yet picked
    typical: dict[int, np.ndarray] = {}  # cluster -> typicality of its members (all of data)
    rows, scores, reasons = [], [], []
    eligible = sizes >= min(MIN_CLUSTER_SIZE, int(sizes.max()))
    for _ in range(budget):
        has_open = np.bincount(pool_cluster[open_], minlength=k) > 0
        allowed = eligible & has_open if (eligible & has_open).any() else has_open
        if not allowed.any():
            break
        order = np.lexsort((-sizes, covered))  # fewest labelled first, then largest
        c = int(next(i for i in order if allowed[i]))
        members = np.flatnonzero(cluster == c)
        if c not in typical:
            typical[c] = typicality(data[members], seed)
        pool_members = members[members >= n_labelled] - n_labelled
        candidate_typicality = typical[c][members >= n_labelled]
        candidate_typicality = np.where(open_[pool_members], candidate_typicality, -np.inf)
        best = int(np.argmax(candidate_typicality))
        row = int(pool_members[best])
        rows.append(row)
        scores.append(float(candidate_typicality[best]))
        reasons.append(f"typiclust: the most typical of a cluster of {sizes[c]} with {covered[c]} labelled "
                       f"(typicality {candidate_typicality[best]:.3f})")
        open_[row] = False
        covered[c] += 1
    return Picks(np.asarray(rows, np.int64), np.asarray(scores), reasons)


def cluster_margin(probabilities: np.ndarray, embeddings: np.ndarray, budget: int, seed: int = 0) -> Picks:
    """The smallest-margin candidate of each of `budget` k-means clusters of the `MIX_POOL` × budget
    smallest-margin candidates, in the order of their margins (a cluster k-means left empty: the next smallest
    margins fill its place)."""
    budget = min(budget, len(probabilities))
    rows = np.sort(uncertainty("margin", probabilities, MIX_POOL * budget).rows)
    score = margins(probabilities[rows])
    cluster = _kmeans(np.ascontiguousarray(embeddings[rows], np.float32), min(budget, len(rows)), seed)
    by_margin = np.argsort(score, kind="stable")
    _, first = np.unique(cluster[by_margin], return_index=True)  # each cluster's smallest margin
    chosen = by_margin[np.sort(first)]
    if len(chosen) < budget:
        chosen = np.concatenate([chosen, np.setdiff1d(by_margin, chosen, assume_unique=True)[:budget - len(chosen)]])
        chosen = chosen[np.argsort(score[chosen], kind="stable")]
    sizes = np.bincount(cluster)
    reasons = [f"cluster-margin: margin {score[i]:.3f}, the smallest of {sizes[cluster[i]]} uncertain candidates "
               f"in its cluster" for i in chosen]
    return Picks(rows[chosen].astype(np.int64), score[chosen], reasons)


def random_picks(n: int, budget: int, seed: int = 0) -> Picks:
    rows = np.random.default_rng(seed).permutation(n)[:budget].astype(np.int64)
    return Picks(rows, np.zeros(len(rows)), ["random"] * len(rows))


def pick(strategy: str, budget: int, *, probabilities: np.ndarray | None = None,
         embeddings: np.ndarray | None = None, labelled: np.ndarray | None = None, mix: str | None = None,
         seed: int = 0) -> Picks:
    """`budget` rows of the pool by `strategy` (and `mix`, an uncertainty strategy to pre-select by)."""
    n = len(probabilities if probabilities is not None else embeddings)  # type: ignore[arg-type]
    budget = min(budget, n)
    if budget <= 0:
        return Picks.empty()
    if strategy in UNCERTAINTY:
        return uncertainty(strategy, probabilities, budget)  # type: ignore[arg-type]
    if strategy == "random":
        return random_picks(n, budget, seed)
    if strategy == "cluster-margin":
        return cluster_margin(probabilities, embeddings, budget, seed)  # type: ignore[arg-type]
    if strategy not in DIVERSITY:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    rows = np.arange(n)
    if mix is not None:
        rows = np.sort(uncertainty(mix, probabilities, MIX_POOL * budget).rows)  # type: ignore[arg-type]
    diverse = coreset if strategy == "coreset" else typiclust
    picks = diverse(embeddings[rows], budget, labelled, seed).subset(rows)  # type: ignore[index]
    if mix is not None:
        picks.reasons = [f"{reason}, among the {len(rows)} most uncertain by {mix}" for reason in picks.reasons]
    return picks


def project(embeddings: np.ndarray, labelled: np.ndarray | None, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Candidate and labelled embeddings on their first `DIVERSITY_DIMS` principal components (as they are when
    no wider), fitted on both together."""
    if embeddings.shape[1] <= DIVERSITY_DIMS:
        return embeddings, labelled
    from sklearn.decomposition import PCA

    n_labelled = 0 if labelled is None else len(labelled)
    data = embeddings if not n_labelled else np.vstack([labelled, embeddings])  # type: ignore[list-item]
    dims = min(DIVERSITY_DIMS, len(data))
    rng = np.random.default_rng(seed)
    sample = data if len(data) <= PCA_FIT_ROWS else data[rng.choice(len(data), PCA_FIT_ROWS, replace=False)]
    reduced = PCA(n_components=dims, random_state=seed).fit(sample).transform(data).astype(np.float32)
    return reduced[n_labelled:], (reduced[:n_labelled] if labelled is not None else None)


def choose(strategy: str, budget: int, *, predicted: np.ndarray | None = None, per_class_min: int = 0,
           probabilities: np.ndarray | None = None, embeddings: np.ndarray | None = None,
           labelled: np.ndarray | None = None, mix: str | None = None, seed: int = 0) -> Picks:
    """What `plankton select` picks: `pick` on the projected embeddings (`project`), with at least
    `per_class_min` picks of every predicted class (`predicted`: a class per row); see `pick_with_class_minimum`."""
    if embeddings is not None and strategy in NEEDS_EMBEDDINGS:
        embeddings, labelled = project(embeddings, labelled, seed)
    if per_class_min <= 0 or predicted is None:
        return pick(strategy, budget, probabilities=probabilities, embeddings=embeddings, labelled=labelled,
                    mix=mix, seed=seed)
    return pick_with_class_minimum(strategy, budget, predicted, per_class_min, probabilities=probabilities,
                                   embeddings=embeddings, labelled=labelled, mix=mix, seed=seed)


def pick_with_class_minimum(strategy: str, budget: int, predicted: np.ndarray, per_class_min: int, *,
                            probabilities: np.ndarray | None = None, embeddings: np.ndarray | None = None,
                            labelled: np.ndarray | None = None, mix: str | None = None, seed: int = 0) -> Picks:
    """`pick`, with at least `per_class_min` picks of every predicted class (`predicted`: a class per row) that
    has that many candidates (all of a class that has fewer): those first, each class by the same strategy within
    it; then the rest of the budget over all candidates, with the class picks counted as labelled."""
    picks = Picks.empty()
    for label in sorted(set(predicted.tolist())):
        rows = np.flatnonzero(predicted == label)
        within = pick(strategy, min(per_class_min, len(rows)),
                      probabilities=None if probabilities is None else probabilities[rows],
                      embeddings=None if embeddings is None else embeddings[rows],
                      labelled=_with(labelled, embeddings, picks.rows), mix=mix, seed=seed).subset(rows)
        within.reasons = [f"{reason} (per-class minimum of predicted {label})" for reason in within.reasons]
        picks = picks.then(within)
    rest = np.setdiff1d(np.arange(len(predicted)), picks.rows)
    more = pick(strategy, budget - len(picks),
                probabilities=None if probabilities is None else probabilities[rest],
                embeddings=None if embeddings is None else embeddings[rest],
                labelled=_with(labelled, embeddings, picks.rows), mix=mix, seed=seed).subset(rest)
    return picks.then(more)


def _with(labelled: np.ndarray | None, embeddings: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    """The labelled embeddings plus those of the pool rows already picked (they will be labelled)."""
    if embeddings is None:
        return labelled
    picked = embeddings[rows]
    if labelled is None or not len(labelled):
        return picked if len(picked) else labelled
    return np.vstack([labelled, picked])
