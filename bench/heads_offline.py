"""Heads on the features against the fair forest, on many splits: which head beats the forest at equal labels?

Every candidate is fitted on exactly the labelled objects of a fold of the budget protocol (`--labels` is the whole
labelled budget, validation included: what `plankton finetune` draws, ``make_folds`` + ``restrict_budget``) and
scored on the fold's test part, beside the features' random forest fitted on the same objects (``features_rf``,
the baseline finetune scores). Semi-supervised candidates also see the fold's unlabelled objects (its non-test
objects outside the budget), never their labels. No image model is trained: this is about the heads on the
features (`plankton features`), so it runs in a minute or two and can use many splits.

Seed 0 gives the 5 folds finetune and bench/quality.py draw; ``--seeds N`` adds N − 1 other draws of the folds, since
on the FlowCam-like set a fold tests on 21 images and one draw of 5 folds cannot tell 3 points from noise. Per
fraction, one row per candidate: test macro-F1 (mean ± std over the splits), its difference from the forest on the
same split (mean ± std of the paired differences, and their standard error), and on how many splits it won.

    features RF      the fair forest (the reference)
    logreg           `--head logreg`: class-balanced logistic regression, C by inner cross-validation
    logreg YJ        the same on the features Yeo-Johnson-transformed (fitted on the non-test pool, labels unused)
    blend            `--head blend`: the mean of the forest's and logreg YJ's probabilities
    forest+logreg    the mean of the forest's and logreg's probabilities (blend without the transform)
    SVC              RBF support vector machine, class-balanced, C and gamma by inner cross-validation
    extra trees      300 extremely randomised trees
    HGB              bench/quality.py's HistGradientBoosting
    label spreading  scikit-learn's LabelSpreading (7-NN graph) over the labelled and unlabelled objects
    logreg self-trained / RF self-trained   three rounds of class-balanced pseudo-labels from the unlabelled pool

    .venv/bin/python bench/heads_offline.py --dataset flowcam --seeds 10     # about 3 minutes on one core
    .venv/bin/python bench/heads_offline.py --labels 5% 10% 25% --seeds 5    # UVP6: about 4 minutes
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from quality import DATASETS, features_hgb, prepare_store, self_trained, self_trained_forest, start

CANDIDATES = ("logreg", "logreg YJ", "blend", "forest+logreg", "SVC", "extra trees", "HGB", "label spreading",
              "logreg self-trained", "RF self-trained")


def split_scores(values: dict, label_of: dict, split, all_ids: list[str]) -> dict[str, float]:
    """Test macro-F1 of the forest and of every candidate on one split."""
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.semi_supervised import LabelSpreading
    from sklearn.svm import SVC

    from plankton_cli.prepare.features.inputs import FeatureScaling
    from plankton_cli.train import metrics as M
    from plankton_cli.train.finetune.baselines import feature_matrix, feature_names, features_rf
    from plankton_cli.train.finetune.heads import FeaturePool, fit_estimator, inner_folds

    labelled, test = split.labelled, split.test
    unlabelled = sorted(set(all_ids) - set(labelled) - set(test))
    classes = sorted(set(label_of.values()))
    index = {name: i for i, name in enumerate(classes)}
    y, y_test = np.array([index[label_of[i]] for i in labelled]), [index[label_of[i]] for i in test]
    # The forest of the baseline on the raw values; the other heads on the feature input finetune gives them.
    names = feature_names(values, labelled)
    raw, raw_test, raw_pool = (feature_matrix(values, ids, names) for ids in (labelled, test, unlabelled))
    scaling = FeatureScaling.fit(names, [values[i] for i in split.train])
    x, x_test, x_pool = (scaling.transform([values[i] for i in ids])[:, :len(names)] for ids in
                         (labelled, test, unlabelled))
    folds = inner_folds(y)

    def score(predicted) -> float:
        return M.classification_metrics(y_test, [int(p) for p in predicted])["macro_f1"]

    forest = features_rf(raw, y)
    logreg = fit_estimator("logreg", x, y)
    blend = fit_estimator("blend", x, y, unlabelled=FeaturePool(x_pool, np.array(scaling.center),
                                                                np.array(scaling.scale)))
    svc = make_pipeline(StandardScaler(), SVC(class_weight="balanced"))
    if folds is not None:
        svc = GridSearchCV(svc, {"svc__C": [0.1, 1, 10, 100], "svc__gamma": ["scale", 0.01, 0.1]}, cv=folds,
                           scoring="f1_macro")
    spreading = make_pipeline(StandardScaler(), LabelSpreading(kernel="knn", n_neighbors=7, alpha=0.2, max_iter=200))
    spreading.fit(np.concatenate([x, x_pool]), np.concatenate([y, np.full(len(x_pool), -1)]))

    def probabilities(model, rows) -> np.ndarray:
        full = np.zeros((len(rows), len(classes)))
        full[:, model.classes_] = model.predict_proba(rows)
        return full

    return {
        "features RF": score(forest.predict(raw_test)),
        "logreg": score(logreg.predict(x_test)),
        "logreg YJ": score(blend.logreg_.predict(blend.transformed(x_test))),
        "blend": score(blend.predict(x_test)),
        "forest+logreg": score((probabilities(forest, raw_test) + probabilities(logreg, x_test)).argmax(1)),
        "SVC": score(svc.fit(x, y).predict(x_test)),
        "extra trees": score(ExtraTreesClassifier(300, random_state=0, n_jobs=1).fit(raw, y).predict(raw_test)),
        "HGB": score(features_hgb(raw, y).predict(raw_test)),
        "label spreading": score(spreading.predict(x_test)),
        "logreg self-trained": score(self_trained_logreg(x, y, x_pool).predict(x_test)),
        "RF self-trained": score(self_trained_forest(raw, y, raw_pool).predict(raw_test)),
    }


def self_trained_logreg(x: np.ndarray, y: np.ndarray, x_pool: np.ndarray):
    """``--head logreg`` self-trained on the unlabelled pool the way bench/quality.py's forest is (``self_trained``)."""
    from plankton_cli.train.finetune.heads import fit_estimator

    return self_trained(lambda x, y: fit_estimator("logreg", x, y), x, y, x_pool)


def table(scores: list[dict[str, float]]) -> str:
    """One row per candidate: macro-F1 %, and its paired difference from the forest."""
    from plankton_cli.train.metrics import format_table_markdown

    forest = 100 * np.array([s["features RF"] for s in scores])
    n = len(scores)
    rows = [{"head": "features RF", "macro-F1": f"{forest.mean():.1f} ± {forest.std(ddof=1):.1f}", "− forest": "",
             "paired std": "", "std error": "", "wins": ""}]
    for name in CANDIDATES:
        values = 100 * np.array([s[name] for s in scores])
        difference = values - forest
        rows.append({"head": name, "macro-F1": f"{values.mean():.1f} ± {values.std(ddof=1):.1f}",
                     "− forest": f"{difference.mean():+.1f}", "paired std": f"{difference.std(ddof=1):.1f}",
                     "std error": f"{difference.std(ddof=1) / np.sqrt(n):.1f}",
                     "wins": f"{int((difference > 0).sum())}/{n}"})
    return format_table_markdown(rows, list(rows[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=list(DATASETS), default="uvp6")
    parser.add_argument("--work", type=Path, default=Path("/tmp") / "plankton-bench-quality",
                        help="bench/quality.py's work folder: its store (with features) is reused or made.")
    parser.add_argument("--labels", nargs="+", default=["5%", "25%"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=1, help="Draws of the folds (seed 0: finetune's).")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.dataset != "uvp6":
        args.work = args.work / args.dataset
    started = start(args)
    warnings.filterwarnings("ignore")  # a class with fewer labels than inner folds, a C that does not converge

    from plankton_cli.prepare.features.inputs import object_features
    from plankton_cli.train.finetune.pool import labelled_pool
    from plankton_cli.train.protocol import make_folds, restrict_budget

    store = prepare_store(args.work, features=True, dataset=args.dataset)
    pool = labelled_pool(store / "padded")
    label_of = pool.label_of()
    values = object_features(store, "padded", pool.object_ids)
    draws = [make_folds(pool.object_ids, pool.labels, args.folds, 0.0, seed) for seed in range(args.seeds)]
    print(f"{DATASETS[args.dataset][2]}: {len(pool.object_ids)} labelled images, {args.seeds} draw(s) of "
          f"{args.folds} folds, budget protocol; test macro-F1 %; − forest: paired difference from the features' "
          "forest fitted on the same labelled objects")
    for labels in args.labels:
        splits = [restrict_budget(fold, label_of, labels, 0.15) for folds in draws for fold in folds]
        scores = [split_scores(values, label_of, split, pool.object_ids) for split in splits]
        labelled = np.mean([len(split.labelled) for split in splits])
        print(f"\n{labels} labels ({labelled:.0f} labelled objects a split, {len(splits)} splits, "
              f"{time.monotonic() - started:.0f} s)\n\n{table(scores)}", flush=True)


if __name__ == "__main__":
    main()
