"""Active learning, simulated: does `plankton select` reach random sampling's macro-F1 with fewer expert labels?

The true labels are the oracle. Per data set, per seed: a stratified 20 % test part is set aside; of the rest (the
pool) 1 % is labelled at random (at least one per class), then rounds of a fixed budget (`--round-budget` % of the
pool) are picked by each strategy and labelled, up to 25 % of the pool. After each round the model is refitted the
cheap way, in seconds: `--head auto` (the default) is the strongest cheap model measured here, a standardised logistic
regression on the frozen MAE embeddings + the objects' features or on the features alone, with C = 1 or 10, whichever
of these four scores the best macro-F1 in a 3-fold cross-validation on the labelled objects alone (the first while
no class has 3 labels); `--head linear|knn|forest` are `plankton finetune`'s cheap heads (linear and kNN on
embeddings + features, both scaled; the forest on the features alone); `--head logistic|logistic-features` one
fixed logistic regression (C = 10, classes balanced) on the standardised embeddings + features, or the features
alone, with no choice made each round. The strategies are those of `plankton
select` (`plankton_cli.infer.select_strategies.choose`), on the refitted head's probabilities and the frozen
embeddings, the labelled objects' embeddings as what is labelled, exactly as select gets them from the store.

`/class` variants add `--per-class-min 1` (one object of every predicted class per round, when the round's budget
allows), `/class2` `--per-class-min 2`; `typiclust>margin` picks by typiclust in the first two rounds (its strength
is very few labels) and by margin after them, as an expert would by running `plankton select` with another
`--strategy` from round 3 on. Prints, per data set, test macro-F1 per round (mean ± std over seeds) per
strategy, and the labels each strategy needs to reach random's macro-F1 at 25 % (the first round whose mean reaches
it; "—" if none does).

Embeddings: a tiny MAE (the demo ViT, 48 px, patch 8, 4 blocks × 96) pretrained here once per data set on all of
its images, labels unused (the paper's "with target data" setting), and cached in --work; `plankton finetune
--head linear --labels all` wraps it in a model file (the encoder unchanged) and `plankton predict --to store --to
embeddings` stores every object's embedding, which this bench reads back as select does. Features: `plankton
features` on the padded store plus the export's own numbers (`--features auto`'s rule). Not done here: the
fine-tuning of the final model (minutes per strategy and seed on a shared CPU).

Data sets: UVP6 vignettes (../shared/data, GPL-3.0, 1,250 images, 10 classes; skipped with the reason when absent)
and the bundled FlowCam-like planktonclass demo (tests/data, Apache-2.0, 105 images, 6 classes: its pool of 84
objects makes 1 % one per class, and rounds of a handful of labels; read its numbers as a sanity check, not a
measure).

    OMP_NUM_THREADS=1 .venv/bin/python bench/active.py                       # both sets, 5 seeds, auto head
    OMP_NUM_THREADS=1 .venv/bin/python bench/active.py --datasets uvp6 --seeds 2 --strategies margin random
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
DATASETS = {  # name -> (images, instrument)
    "uvp6": (SHARED_DATA / "images" / "uvp6-vignettes", "UVP6"),
    "flowcam-demo": (REPO / "tests" / "data" / "planktonclass-demo" / "demo-images", "FlowCam"),
}
DEMO_VIT = dict(model="vit_tiny_patch16_224", img_size=48, patch_size=8, depth=4, embed_dim=96, num_heads=3)
# name -> (strategy, mix, per-class minimum) as `plankton select --strategy S [--mix M] [--per-class-min N]`
STRATEGIES = {
    "random": ("random", None, 0),
    "margin": ("margin", None, 0),
    "cluster-margin": ("cluster-margin", None, 0),
    "entropy": ("entropy", None, 0),
    "coreset": ("coreset", None, 0),
    "typiclust": ("typiclust", None, 0),
    "coreset+margin": ("coreset", "margin", 0),
    "typiclust+margin": ("typiclust", "margin", 0),
    "margin/class": ("margin", None, 1),
    "margin/class2": ("margin", None, 2),
    "cluster-margin/class": ("cluster-margin", None, 1),
    "coreset+margin/class": ("coreset", "margin", 1),
    "typiclust+margin/class": ("typiclust", "margin", 1),
    "entropy/class": ("entropy", None, 1),
    "typiclust>margin": ("margin", None, 0),
    "typiclust>margin/class": ("margin", None, 1),
}
# name -> (strategy, mix, per-class minimum) of the first EARLY_ROUNDS rounds, STRATEGIES[name] after them:
# typiclust is the strongest at very few labels, uncertainty once the model is worth asking
EARLY = {"typiclust>margin": ("typiclust", None, 0), "typiclust>margin/class": ("typiclust", None, 0)}
EARLY_ROUNDS = 2


def echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare(name: str, work: Path, pretrain_epochs: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, embeddings, features) of every object of data set `name`, cached in
    WORK/NAME/arrays-<epochs>ep.npz."""
    cache = work / name / f"arrays-{pretrain_epochs}ep.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        return list(data["ids"]), data["labels"], data["embeddings"], data["features"]
    from plankton_cli.infer.select import stored_predictions
    from plankton_cli.prepare.features.dataset import compute_features
    from plankton_cli.prepare.features.inputs import object_features
    from plankton_cli.train.finetune import FinetuneConfig, finetune
    from plankton_cli.train.finetune.baselines import feature_matrix, feature_names
    from plankton_cli.ingest import ingest
    from plankton_cli.prepare.pad_store import pad_dataset
    from plankton_cli.infer.predict import predict
    from plankton_cli.train.pretrain import PretrainConfig, pretrain
    from plankton_cli.core.records import ReadOptions
    from plankton_cli.store import Store
    from plankton_cli.store.layout import checksum

    images, instrument = DATASETS[name]
    started = time.monotonic()
    store = Store(work / name / "store")
    ingest(store, [images], options=ReadOptions(instrument=instrument))
    pad_dataset(store)
    compute_features(store)
    encoder = work / name / f"mae-{pretrain_epochs}ep"
    if not (encoder / "summary.json").exists():
        pretrain(PretrainConfig(store=store.root, out=encoder, epochs=pretrain_epochs, workers=0, recon_every=0,
                                **DEMO_VIT), enable_progress=False)
    echo(f"{name}: store and MAE encoder ({pretrain_epochs} epochs) in {time.monotonic() - started:.0f} s")
    wrap = work / name / f"frozen-{pretrain_epochs}ep"
    if not (wrap / "fold-0" / "model.safetensors").exists():  # the encoder as it is, in a model file
        finetune(FinetuneConfig(store=store.root, init=str(encoder / "encoder.safetensors"), out=wrap, labels="all",
                                folds=1, head="linear", features="none", workers=0), echo=lambda text: None)
    model = wrap / "fold-0" / "model.safetensors"
    predict(model, store=store, to=["store"], embeddings=True, threads=1)
    objects = store.dataset("objects").to_table(columns=["object_id", "label"]).to_pylist()
    label_of = {row["object_id"]: row["label"] for row in objects}
    pool = stored_predictions(store, checksum(model), sorted(label_of), embeddings=True)
    assert pool.embeddings is not None
    values = object_features(store.root, "objects", pool.ids)
    features = feature_matrix(values, pool.ids, feature_names(values, pool.ids))
    classes = sorted(set(label_of.values()))
    labels = np.array([classes.index(label_of[i]) for i in pool.ids])
    np.savez(cache, ids=np.array(pool.ids), labels=labels, embeddings=pool.embeddings, features=features)
    echo(f"{name}: {len(pool.ids)} objects, {len(classes)} classes, embeddings {pool.embeddings.shape[1]}, "
         f"{features.shape[1]} features, in {time.monotonic() - started:.0f} s")
    return pool.ids, labels, pool.embeddings, features


def design(embeddings: np.ndarray, features: np.ndarray, head: str) -> np.ndarray:
    """What the head reads (as `--features auto` feeds it): scaled embeddings + median/IQR-scaled features with
    missing values at 0; the forest reads the features alone."""
    from sklearn.preprocessing import RobustScaler, StandardScaler

    scaled = np.nan_to_num(RobustScaler().fit_transform(features), nan=0.0) if features.shape[1] else features
    scaled = np.clip(scaled, -10, 10)
    if head == "forest":
        return scaled
    return np.hstack([StandardScaler().fit_transform(embeddings), scaled]).astype(np.float32)


# --head auto: these (name, design, inverse regularisation C of a standardised logistic regression), the one with the
# best macro-F1 of a 3-fold cross-validation on the labelled objects alone, refitted on all of them (ties: the first)
AUTO_CANDIDATES = (("linear", "linear", 1.0), ("linear C=10", "linear", 10.0),
                   ("linear on features", "forest", 1.0), ("linear on features C=10", "forest", 10.0))


def fit_auto(designs: dict[str, np.ndarray], labels: np.ndarray, labelled: list[int], seed: int) -> tuple[object, str]:
    """The fitted `AUTO_CANDIDATES` head that cross-validates best on the labelled objects, and its design."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def head(c: float) -> object:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))

    y = labels[labelled]
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    best, best_score = AUTO_CANDIDATES[0], -1.0
    if np.bincount(y).max() >= 3:  # fewer: no fold has anything to learn from, the first candidate
        for candidate in AUTO_CANDIDATES:
            with warnings.catch_warnings():  # classes with fewer members than folds: scored all the same
                warnings.simplefilter("ignore")
                predicted = cross_val_predict(head(candidate[2]), designs[candidate[1]][labelled], y, cv=folds)
            score = f1_score(y, predicted, average="macro", zero_division=0)
            if score > best_score:
                best, best_score = candidate, score
    return head(best[2]).fit(designs[best[1]][labelled], y), best[1]


def fit_logistic(x: np.ndarray, y: np.ndarray, seed: int) -> object:
    """--head logistic(-features): a logistic regression (C = 10, classes weighted by their inverse frequency) on
    the standardised embeddings + features (or the features alone), one fit, no choice among candidates."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=10.0, class_weight="balanced", max_iter=3000,
                                                              random_state=seed)).fit(x, y)


def simulate(labels: np.ndarray, embeddings: np.ndarray, designs: dict[str, np.ndarray], name: str, head: str,
             seed: int, start: float, step: float, stop: float) -> list[tuple[int, float]]:
    """(labelled count, test macro-F1) after the start and after each round, for one strategy and seed."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split

    from plankton_cli.infer.select_strategies import choose
    from plankton_cli.train.finetune.heads import make_head

    n_classes = int(labels.max()) + 1
    rows = np.arange(len(labels))
    pool, test = train_test_split(rows, test_size=0.2, stratify=labels, random_state=seed)
    rng = np.random.default_rng(seed)
    first = [int(rng.choice(pool[labels[pool] == c])) for c in range(n_classes)]  # at least one per class
    more = max(0, round(start * len(pool)) - len(first))
    rest = np.setdiff1d(pool, first)
    labelled = list(first) + rng.choice(rest, more, replace=False).tolist()
    budget = max(1, round(step * len(pool)))
    final = round(stop * len(pool))
    curve = []
    while True:
        if head == "auto":
            model, chosen = fit_auto(designs, labels, labelled, seed)
            x = designs[chosen]
        elif head in ("logistic", "logistic-features"):
            x = designs["linear" if head == "logistic" else "forest"]
            model = fit_logistic(x[labelled], labels[labelled], seed)
        else:
            x = designs["forest" if head == "forest" else "linear"]
            model = make_head(head, len(labelled), seed).fit(x[labelled], labels[labelled])
        predicted = model.predict(x[test])
        curve.append((len(labelled), float(f1_score(labels[test], predicted, average="macro", zero_division=0))))
        if len(labelled) >= final:
            return curve
        unlabelled = np.setdiff1d(pool, labelled)
        probabilities = np.zeros((len(unlabelled), n_classes))
        probabilities[:, model.classes_] = model.predict_proba(x[unlabelled])
        take = min(budget, final - len(labelled))
        strategy, mix, per_class_min = EARLY[name] if name in EARLY and len(curve) <= EARLY_ROUNDS else STRATEGIES[name]
        picks = choose(strategy, take, predicted=probabilities.argmax(1), per_class_min=min(per_class_min, take // n_classes),
                       probabilities=probabilities, embeddings=embeddings[unlabelled], labelled=embeddings[labelled],
                       mix=mix, seed=seed + len(labelled))
        labelled += unlabelled[picks.rows].tolist()


def report(name: str, curves: dict[str, list[list[tuple[int, float]]]]) -> None:
    counts = [n for n, _ in curves["random"][0]]
    print(f"\n### {name}: test macro-F1 (mean ± std over {len(curves['random'])} seeds) by labelled objects\n")
    print("| strategy | " + " | ".join(str(n) for n in counts) + " | labels to reach random's final |")
    print("|---|" + "---|" * (len(counts) + 1))
    target = float(np.mean([c[-1][1] for c in curves["random"]]))
    for strategy, runs in curves.items():
        scores = np.array([[f for _, f in run] for run in runs])
        mean, std = scores.mean(0), scores.std(0)
        reached = next((counts[i] for i in range(len(counts)) if mean[i] >= target - 1e-9), None)
        needed = "—" if reached is None else f"{reached} ({reached / counts[-1]:.0%})"
        print(f"| {strategy} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, std)) + f" | {needed} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--head", choices=["linear", "knn", "forest", "auto", "logistic", "logistic-features"], default="auto")
    parser.add_argument("--start", type=float, default=0.01, help="fraction of the pool labelled at first")
    parser.add_argument("--round-budget", type=float, default=0.02, help="fraction of the pool per round")
    parser.add_argument("--stop", type=float, default=0.25, help="fraction of the pool labelled at the end")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/plankton-bench-active"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    if "random" not in args.strategies:
        args.strategies = ["random", *args.strategies]
    for name in args.datasets:
        if not DATASETS[name][0].is_dir():
            echo(f"{name}: skipped, needs {DATASETS[name][0]} (GPL-3.0, not shipped with the repository)")
            continue
        ids, labels, embeddings, features = prepare(name, args.work, args.pretrain_epochs)
        designs = {head: design(embeddings, features, head) for head in ("linear", "forest")}
        curves: dict[str, list] = {s: [] for s in args.strategies}
        started = time.monotonic()
        for strategy in args.strategies:
            for seed in range(args.seeds):
                curves[strategy].append(simulate(labels, embeddings, designs, strategy, args.head, seed,
                                                 args.start, args.round_budget, args.stop))
            echo(f"{name} {strategy}: {time.monotonic() - started:.0f} s")
        both = f"MAE embeddings ({embeddings.shape[1]}) + features ({features.shape[1]})"
        reads = {"forest": "features", "logistic": f"{both}, C = 10, balanced",
             "logistic-features": "features, C = 10, balanced", "auto": f"{both} or features alone, chosen each round"}.get(args.head, both)
        print(f"\n{name}: {len(ids)} objects, head {args.head} on {reads}, pool 80 %, start {args.start:.0%}, "
              f"rounds of {args.round_budget:.0%}, to {args.stop:.0%}")
        report(name, curves)


if __name__ == "__main__":
    main()
