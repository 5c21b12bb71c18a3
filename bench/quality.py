"""Recognition quality on UVP6 vignettes (or a second set): does the model beat what a lab would fit in a second?

One table of test macro-F1 (mean ± std over folds) per labelled fraction, every column on the same folds and
labelled objects (the finetune protocol, `--protocol budget` by default: `--labels` is every label a fold uses,
validation included; `--protocol paper` adds the paper's full-size validation set). The `labelled` column counts
them per fold (training + validation = total), and every baseline is fitted on all of them:

    pixel logreg   logistic regression on 32-px pixels (the baseline `plankton finetune` scores on every fold,
                   fitted on the fold's training + validation labels, like every baseline)
    kNN, linear    cosine k-NN / linear probe on the frozen MAE encoder's embeddings (`--head knn|linear`)
    scratch        the same ViT fine-tuned from random weights (`--init scratch`)
    MAE            fine-tuned from the MAE encoder pretrained here on all 1,250 images, labels unused
    auto           `--head auto`: per fold the best of MAE / kNN / linear by validation macro-F1
    features RF    random forest on the objects' morphometrics (the `features` baseline finetune scores when the
                   store has features; here from `plankton features`, run on the store first)
    scratch+feat   (--scratch-feat) scratch, with the features joined to the image (`--features auto`)
    MAE+feat       `--features auto --head auto` from the MAE encoder: per fold the best of fine-tuning with the
                   features joined to the image embedding, linear / kNN on embedding + features, and the features'
                   blend of a forest and a logistic regression (`--head blend`). Budget
                   protocol: the cheap head that cross-validates best over the fold's labels (fine-tuning is scored,
                   not chosen: its validation score is that of the epoch chosen on it); paper: the best on validation
    blend          `--head blend`: the mean of the features' forest and a logistic regression on the features
                   Yeo-Johnson-transformed (the transform fitted on the fold's non-test images, labels unused)
    MAE+feat no refit  the same head before the budget protocol refits it on training + validation labels
    RF self-trained  (--self-training) the features' forest self-trained on the fold's unlabelled non-test objects
                   (``self_trained_forest``): a bench candidate, not a `--head`
    features HGB   (--candidates) scikit-learn's HistGradientBoosting on the features, on the same labelled objects:
                   a second baseline (``features_hgb``), so that a stronger one than the forest is never hidden
    RF feat+MAE    (--candidates) the forest on the features joined to the frozen MAE encoder's embedding reduced to
                   16 principal components (EcoTaxa's recipe with its CNN's deep features; the PCA is fitted on the
                   fold's non-test images, labels unused): a bench candidate for a `--head`
    gap img        auto − pixel logreg: the reference measured in the same run
    gap feat       MAE+feat − the best baseline (pixel logreg, features RF or, with --candidates, features HGB)

The image-only columns (kNN, linear, scratch, MAE, auto) pass `--features none`: the store has features, and the
finetune default `auto` would use them.

Data sets (``--dataset``): ``uvp6`` (the default) and ``flowcam``, the 105 FlowCam-like images of PyPI
`planktonclass` 0.1.5 (Apache-2.0) bundled in tests/data: 6 classes of 13-23 images, so a fold's test part holds
21 images (2-5 per class) and 5 % of the labels is one image per class (no validation part can be spared: the
folds keep their last epoch). Its numbers say whether a choice holds on another instrument, not by how much.

The ViT is the demo's CPU size (48 px, patch 8, 4 blocks × 96); every recipe value other than the epochs comes
from `plankton_cli.train.recipe` (nothing tuned here). Pretraining with labels unused on the images that are later
test images is the paper's "with target data" setting.

    .venv/bin/python bench/quality.py --quick          # 10 % labels, 2 folds, short runs: a few minutes
    .venv/bin/python bench/quality.py                  # 5, 10, 25 %, all; 5 folds
    .venv/bin/python bench/quality.py --labels 5% 10% --folds 2 --pretrain-epochs 40 --epochs 40   # "numbers to reach"

The store (with its `features` dataset), the encoder and finished folds are kept in --work, so a re-run only does
what is missing (each variant has its own run folder: image-only `mae-`/`scratch-`, with features `*-feat-`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
# --dataset NAME -> (folder of class folders, instrument, how the tables name it). The UVP6 set is GPL-3.0 and stays
# in ../shared/data; the FlowCam-like set is Apache-2.0 and ships with the tests.
DATASETS = {
    "uvp6": (SHARED_DATA / "images" / "uvp6-vignettes", "UVP6", "UVP6"),
    "flowcam": (REPO / "tests" / "data" / "planktonclass-demo" / "demo-images", "FlowCam",
                "FlowCam-like (planktonclass demo, 105 images)"),
}
DEMO_VIT = dict(model="vit_tiny_patch16_224", img_size=48, patch_size=8, depth=4, embed_dim=96, num_heads=3)
# Fine-tuning runs per labelled fraction: folder prefix -> (init, --head, --features).
VARIANTS = {
    "mae": ("mae", "auto", "none"),
    "scratch": ("scratch", "finetune", "none"),
    "mae-feat": ("mae", "auto", "auto"),
    "scratch-feat": ("scratch", "finetune", "auto"),
    "blend": ("mae", "blend", "auto"),
}
# Table column -> (variant, what of its fold results): "macro_f1" (the chosen head), "heads.NAME", "baselines.NAME".
# The baselines are the same in every variant (same folds, labelled objects, seed; the forest reads the store's
# features whatever --features says): "any" takes them from the first variant run.
COLUMNS = {
    "pixel logreg": ("any", "baselines.pixel_logreg"),
    "features RF": ("any", "baselines.features_rf"),
    "kNN": ("mae", "heads.knn"),
    "linear": ("mae", "heads.linear"),
    "scratch": ("scratch", "macro_f1"),
    "MAE": ("mae", "heads.finetune"),
    "auto": ("mae", "macro_f1"),
    "scratch+feat": ("scratch-feat", "macro_f1"),
    "MAE+feat": ("mae-feat", "macro_f1"),
    "blend": ("blend", "macro_f1"),
    "MAE+feat no refit": ("mae-feat", "without_refit"),
}


def echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def start(args: argparse.Namespace) -> float:
    """What both benches do first: check the data is there, quiet logging, ``--threads``, the work folder.
    Returns the start time."""
    folder = DATASETS[getattr(args, "dataset", "uvp6")][0]
    if not folder.is_dir():
        sys.exit(f"needs the images at {folder}")
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    return time.monotonic()


def prepare_store(work: Path, features: bool = False, dataset: str = "uvp6") -> Path:
    """The ``dataset`` ingested and padded once into WORK/store; with ``features``, `plankton features` run on it
    too (incremental: objects already measured are skipped)."""
    from plankton_cli.ingest import ingest
    from plankton_cli.prepare.pad_store import pad_dataset
    from plankton_cli.core.records import ReadOptions
    from plankton_cli.store import Store

    folder, instrument, _ = DATASETS[dataset]
    store = Store(work / "store")
    ingest(store, [folder], options=ReadOptions(instrument=instrument))
    pad_dataset(store)
    if features:
        from plankton_cli.prepare.features.dataset import compute_features

        summary = compute_features(store)
        echo(f"features: {summary.computed} computed, {summary.skipped} already there, {summary.n_rejected} rejected")
    return store.root


def pretrain_config(store: Path, work: Path, epochs: int, workers: int):
    """The one pretraining run of this bench per epoch count (bench/mae_scale.py trains the same one, with
    snapshots, into the same folder): the demo ViT, every recipe value from ``plankton_cli.train.recipe``."""
    from plankton_cli.train.pretrain import PretrainConfig

    return PretrainConfig(store=store, out=work / f"mae-{epochs}ep", epochs=epochs, workers=workers, recon_every=0,
                          **DEMO_VIT)


def pretrain_encoder(store: Path, work: Path, epochs: int, workers: int) -> tuple[Path, dict]:
    """The MAE encoder (recipe-scaled), trained once per epoch count."""
    from plankton_cli.train.pretrain import pretrain

    config = pretrain_config(store, work, epochs, workers)
    out = config.out
    if not (out / "summary.json").exists():
        started = time.monotonic()
        pretrain(config, enable_progress=False)
        echo(f"pretrained {epochs} epochs in {time.monotonic() - started:.0f} s")
    return out / "encoder.safetensors", json.loads((out / "summary.json").read_text())


def finetune_run(store: Path, out: Path, init: str, labels: str, folds: int, epochs: int, head: str,
                 features: str, workers: int, protocol: str = "budget") -> list[dict]:
    """Every fold's result.json of one finetune run (finished folds are not trained again)."""
    from plankton_cli.train.finetune import FinetuneConfig, finetune

    arch = DEMO_VIT if init == "scratch" else {}
    started = time.monotonic()
    finetune(FinetuneConfig(store=store, init=init, out=out, labels=labels, folds=folds, epochs=epochs, head=head,
                            features=features, workers=workers, protocol=protocol, **arch), echo=lambda text: None)
    echo(f"{out.name}: {time.monotonic() - started:.0f} s")
    return [json.loads((out / f"fold-{k}" / "result.json").read_text()) for k in range(folds)]


SELF_TRAINING_ROUNDS = 3


def self_trained(fit, x_labelled: np.ndarray, y_labelled: np.ndarray, x_pool: np.ndarray):
    """`fit(x, y)` self-trained on the fold's unlabelled pool (labels unused): each round the model fitted so far
    labels the pool, and per class the objects it is surest of join the training set, as many as the class has
    labels (so the pseudo-labels keep the labels' class balance instead of flooding with the commonest class).
    Then the final model is fitted on labels + pseudo-labels."""
    x, y, left = x_labelled, y_labelled, np.arange(len(x_pool))
    classes, counts = np.unique(y_labelled, return_counts=True)
    for _ in range(SELF_TRAINING_ROUNDS):
        if not len(left):
            break
        model = fit(x, y)
        probabilities = model.predict_proba(x_pool[left])
        predicted, confidence = model.classes_[probabilities.argmax(1)], probabilities.max(1)
        take = np.concatenate([np.flatnonzero(predicted == c)[np.argsort(-confidence[predicted == c])][:n]
                               for c, n in zip(classes, counts)]).astype(int)
        x, y = np.vstack([x, x_pool[left[take]]]), np.concatenate([y, predicted[take]])
        left = np.delete(left, take)
    return fit(x, y)


def self_trained_forest(x_labelled: np.ndarray, y_labelled: np.ndarray, x_pool: np.ndarray, seed: int = 0):
    """The features' forest, self-trained on the fold's unlabelled pool (``self_trained``)."""
    from plankton_cli.train.finetune.baselines import features_rf

    return self_trained(lambda x, y: features_rf(x, y, seed), x_labelled, y_labelled, x_pool)


EMBEDDING_COMPONENTS = 16


def features_hgb(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    """Gradient-boosted trees on the raw features (NaN handled natively). Leaves of at least 5 objects, not the
    default 20: with 50 labels in 10 classes 20 leaves most classes without a split of their own."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(learning_rate=0.05, max_iter=200, min_samples_leaf=5,
                                          random_state=seed).fit(x_train, y_train)


def encoder_embeddings(store: Path, dataset: str, ids: list[str], classes: list[str],
                       encoder: Path) -> dict[str, np.ndarray]:
    """object_id -> the frozen encoder's pooled embedding (what ``--head linear|knn`` read), eval transform."""
    from plankton_cli.prepare.data import EvalTransform, load_or_compute_stats
    from plankton_cli.train.finetune import FinetuneConfig
    from plankton_cli.train.finetune.heads import embed
    from plankton_cli.train.finetune.model import build_classifier, default_resize
    from plankton_cli.train.finetune.pool import store_loader

    config = FinetuneConfig(store=store, init=str(encoder), out=store / "unused", features="none")
    model, inherited = build_classifier(config, 1, 0)
    stats = load_or_compute_stats(store / dataset)
    mean, std = (float(np.ravel(inherited.get(key, stats[key]))[0]) for key in ("mean", "std"))
    size = model.arch["img_size"]
    transform = EvalTransform(int(inherited.get("resize") or default_resize(size)), size, mean, std)
    loader = store_loader(store / dataset, ids, classes, transform, train=False, batch_size=256, workers=0, seed=0)
    out_ids, _, rows = embed(model, loader)
    return dict(zip(out_ids, rows))


def candidate_scores(store: Path, run: Path, folds: int, encoder: Path, columns: list[str]) -> dict[str, list[float]]:
    """Test macro-F1 per fold of the bench-only ``columns`` (RF self-trained, features HGB, RF feat+MAE), on the
    run's saved splits: the same labelled objects (training + validation) and test part as the model and the fair
    forest, plus the fold's unlabelled non-test objects, whose labels are never read."""
    from sklearn.decomposition import PCA

    from plankton_cli.train import metrics as M
    from plankton_cli.prepare.features.inputs import object_features
    from plankton_cli.train.finetune.baselines import feature_matrix, feature_names, features_rf
    from plankton_cli.train.finetune.pool import labelled_pool
    from plankton_cli.train.protocol import load_split

    dataset = json.loads((run / "config.json").read_text())["dataset"]
    pool = labelled_pool(store / dataset)
    label_of = pool.label_of()
    values = object_features(store, dataset, pool.object_ids)
    embedding = encoder_embeddings(store, dataset, pool.object_ids, pool.classes, encoder) if "RF feat+MAE" in columns else {}
    scores: dict[str, list[float]] = {column: [] for column in columns}
    for k in range(folds):
        split = load_split(run / f"fold-{k}" / "split.json")
        labelled, test = split.labelled, split.test
        unlabelled = sorted(set(pool.object_ids) - set(labelled) - set(test))
        names = feature_names(values, labelled)
        x, x_test = feature_matrix(values, labelled, names), feature_matrix(values, test, names)
        y = np.array([label_of[i] for i in labelled])
        fitted = {}
        if "RF self-trained" in columns:
            fitted["RF self-trained"] = (self_trained_forest(x, y, feature_matrix(values, unlabelled, names)), x_test)
        if "features HGB" in columns:
            fitted["features HGB"] = (features_hgb(x, y), x_test)
        if "RF feat+MAE" in columns:
            rows = {part: np.stack([embedding[i] for i in ids]) for part, ids in
                    (("labelled", labelled), ("test", test), ("fit", [*labelled, *unlabelled]))}
            pca = PCA(min(EMBEDDING_COMPONENTS, len(rows["fit"])), random_state=0).fit(rows["fit"])
            fitted["RF feat+MAE"] = (features_rf(np.hstack([x, pca.transform(rows["labelled"])]), y),
                                     np.hstack([x_test, pca.transform(rows["test"])]))
        for column, (model, x_column) in fitted.items():
            predicted = model.predict(x_column)
            scores[column].append(M.classification_metrics([label_of[i] for i in test], list(predicted))["macro_f1"])
    return scores


def fold_values(results: list[dict], what: str) -> list[float]:
    """Per fold test macro-F1 of ``what`` (see COLUMNS)."""
    if what == "macro_f1":
        return [r["macro_f1"] for r in results]
    if what == "without_refit":  # the chosen head as chosen, before its refit on every label (budget protocol)
        return [r["heads"][r["head"]].get("macro_f1_without_refit", r["macro_f1"]) for r in results]
    key, name = what.split(".")
    return [r[key][name]["macro_f1"] for r in results]


def macro_f1(values: list[float]) -> tuple[float, float]:
    array = np.array(values, float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "plankton-bench-quality",
                        help="Store, encoder and runs, kept between runs.")
    parser.add_argument("--labels", nargs="+", default=["5%", "10%", "25%", "all"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--protocol", choices=["budget", "paper"], default="budget",
                        help="budget: --labels counts every label, validation included; paper: the paper's full-size "
                             "validation set beside them.")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="Fine-tuning runs to do [default: all but scratch-feat]; columns of the others are left out.")
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=30, help="Fine-tuning epochs.")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default). On a shared 2-core machine 1 is several times faster: "
                             "two threads per process oversubscribe the cores.")
    parser.add_argument("--scratch-feat", action="store_true", help="Also scratch with --features auto.")
    parser.add_argument("--self-training", action="store_true",
                        help="Also the features' forest self-trained on each fold's unlabelled pool (RF self-trained).")
    parser.add_argument("--candidates", action="store_true",
                        help="Also HistGradientBoosting on the features (features HGB) and the forest on the features "
                             "+ 16 principal components of the MAE embedding (RF feat+MAE).")
    parser.add_argument("--dataset", choices=list(DATASETS), default="uvp6",
                        help="uvp6, or flowcam: the 105-image FlowCam-like set bundled in tests/data (WORK/flowcam).")
    parser.add_argument("--quick", action="store_true", help="10 %% labels, 2 folds, 10 + 10 epochs.")
    args = parser.parse_args()
    if args.quick:
        args.labels, args.folds, args.pretrain_epochs, args.epochs = ["10%"], 2, 10, 10
    if args.dataset != "uvp6":  # the UVP6 runs keep the folders they had before a second set existed
        args.work = args.work / args.dataset
    started = start(args)
    store = prepare_store(args.work, features=True, dataset=args.dataset)
    encoder, mae_summary = pretrain_encoder(store, args.work, args.pretrain_epochs, args.workers)
    variants = {name: v for name, v in VARIANTS.items()
                if (name in args.variants if args.variants else args.scratch_feat or name != "scratch-feat")}
    columns = [c for c, (variant, _) in COLUMNS.items() if variant in variants or variant == "any"]
    candidates = (["RF self-trained"] if args.self_training else []) + (
        ["features HGB", "RF feat+MAE"] if args.candidates else [])
    columns += candidates

    rows, document = [], {"settings": {k: str(v) for k, v in vars(args).items()}, "pretrain": mae_summary,
                          "labels": {}}
    # The paper-protocol runs keep the folder names they had before the budget protocol existed.
    runs = args.work / (f"runs-ft{args.epochs}-pt{args.pretrain_epochs}-{args.folds}f"
                        + ("" if args.protocol == "paper" else f"-{args.protocol}"))
    for labels in args.labels:
        tag = labels.replace("%", "pc").replace("/", "-")
        results = {name: finetune_run(store, runs / f"{name}-{tag}", str(encoder) if init == "mae" else init, labels,
                                      args.folds, args.epochs, head, features, args.workers, args.protocol)
                   for name, (init, head, features) in variants.items()}
        any_run = next(iter(results.values()))
        per_fold = {column: fold_values(any_run if variant == "any" else results[variant], what)
                    for column, (variant, what) in COLUMNS.items() if variant in variants or variant == "any"}
        if candidates:  # on the splits of the first variant run
            per_fold.update(candidate_scores(store, runs / f"{next(iter(variants))}-{tag}", args.folds, encoder,
                                             candidates))
        means = {name: macro_f1(values) for name, values in per_fold.items()}
        baselines = [name for name in ("pixel logreg", "features RF", "features HGB") if name in means]
        best_baseline = max(baselines, key=lambda name: means[name][0])
        gap_img = means["auto"][0] - means["pixel logreg"][0] if "mae" in results else None
        gap_feat = means["MAE+feat"][0] - means[best_baseline][0] if "mae-feat" in results else None
        labelled = {part: float(np.mean([r[key] for r in any_run]))
                    for part, key in (("train", "n_train"), ("val", "n_val"), ("total", "n_labelled"))}
        rows.append({"labels": labels,
                     "labelled": f"{labelled['train']:.0f} + {labelled['val']:.0f} = {labelled['total']:.0f}",
                     **{name: f"{100 * m:.1f} ± {100 * s:.1f}" for name, (m, s) in means.items()},
                     "gap img": "" if gap_img is None else f"{100 * gap_img:+.1f}",
                     "gap feat": "" if gap_feat is None else f"{100 * gap_feat:+.1f} ({best_baseline})",
                     "auto chose": ", ".join(r["head"] for r in results.get("mae", [])),
                     "MAE+feat chose": ", ".join(r["head"] for r in results.get("mae-feat", []))})
        document["labels"][labels] = {
            "per_fold": per_fold, "mean_std": means, "labelled_per_fold": labelled,
            "gap_auto_vs_pixel_logreg": gap_img, "gap_mae_feat_vs_best_baseline": gap_feat,
            "best_baseline": best_baseline,
            "mae_minus_scratch": (means["MAE"][0] - means["scratch"][0]) if {"MAE", "scratch"} <= set(means) else None,
            "mae_feat_heads": {name: [r["heads"][name]["macro_f1"] for r in results["mae-feat"]]
                               for name in results["mae-feat"][0]["heads"]} if "mae-feat" in results else {},
            "n_features": [r["baselines"].get("features_rf", {}).get("n_features") for r in results.get("mae-feat", [])],
        }
        echo(f"{labels}: " + ", ".join(f"{k} {v}" for k, v in rows[-1].items() if k != "labels"))
        # After each fraction, so that a stopped run leaves the rows it finished; printed once, at the end.
        table = write_table(args, rows, columns, document, mae_summary, time.monotonic() - started)
    print(table, flush=True)


def write_table(args: argparse.Namespace, rows: list[dict], columns: list[str], document: dict, mae_summary: dict,
                seconds: float) -> str:
    """The table so far with its header, written to WORK/quality.{md,json}."""
    from plankton_cli.train.metrics import format_table_markdown

    table = format_table_markdown(rows, ["labels", "labelled", *columns, "gap img", "gap feat", "auto chose",
                                         "MAE+feat chose"])
    header = (f"{DATASETS[args.dataset][2]}, {args.folds} folds, {args.protocol} protocol: labelled = training + validation labels per fold "
              f"(mean), every baseline fitted on all of them; macro-F1 % (mean ± std); ViT 48 px / 4 × 96, MAE {args.pretrain_epochs} "
              f"epochs (final loss {mae_summary.get('final_loss') or float('nan'):.3f}), fine-tune {args.epochs} "
              f"epochs; image-only columns use --features none; gap img = auto − pixel logreg, gap feat = MAE+feat "
              f"− best baseline; {seconds:.0f} s")
    (args.work / "quality.md").write_text(header + "\n\n" + table + "\n")
    (args.work / "quality.json").write_text(json.dumps(document, indent=2))
    return header + "\n\n" + table


if __name__ == "__main__":
    main()
