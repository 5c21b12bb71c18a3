"""One fold: fine-tune (keeping the best checkpoint by validation macro-F1) and/or fit cheap heads on frozen
embeddings, refit the head chosen on every labelled object (``budget`` protocol), test it, score the baselines on
the same labelled objects and test part, write the fold's files."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch

from plankton_cli.train import metrics as M
from plankton_cli.prepare.data import EvalTransform, StoreDataLoader, TrainTransform
from plankton_cli.train.finetune.baselines import score_baselines
from plankton_cli.train.finetune.config import FinetuneConfig
from plankton_cli.train.finetune.heads import (
    AUTO_HEADS,
    CHEAP_HEADS,
    FeaturePool,
    cross_validated_probabilities,
    design_matrix,
    embed,
    fit_head,
    head_probabilities,
)
from plankton_cli.train.finetune.model import (
    ClassifierModule,
    build_classifier,
    default_resize,
    precision_thresholds,
    softmax,
)
from plankton_cli.prepare.features.inputs import FeatureScaling
from plankton_cli.train.finetune.pool import LabelledPool, PoolFeatures, store_loader
from plankton_cli.train.models import save_model
from plankton_cli.train.models.fitted_heads import FittedHead
from plankton_cli.train.model_info import FEATURE_ONLY_HEADS, MODEL_FORMAT, ModelInfo
from plankton_cli.train.protocol import Split
from plankton_cli.train.recipe import Recipe, resolve_recipe

log = logging.getLogger("plankton.finetune")

# ``--head auto`` without a single validation label: the heads in the order of their test macro-F1 at the fewest
# labels in bench/quality.py. With features the features' heads won on both sets (UVP6 at 5 %, 50 labels: forest
# 43.9, kNN 40.7, fine-tuned 40.1, linear 36.2; the FlowCam-like set at one label a class: logreg 64.8, forest 60.6,
# fine-tuned 49.8, kNN 49.7, linear 39.3); on the image alone the linear probe did (UVP6: linear 27.8, kNN 25.8,
# fine-tuned 9.3; FlowCam: 31.0, 26.7, 26.3). ``blend`` (auto's features head) beat them all at one label a class on
# the FlowCam-like set (bench/heads_offline.py, 50 splits: 64.5 against logreg 58.1 and forest 57.6).
NO_VALIDATION_ORDER = ("blend", "logreg", "forest", "linear", "knn", "finetune")


def fold_recipe(config: FinetuneConfig, split: Split) -> Recipe:
    """The fine-tuning recipe for this fold's labelled training images (flags in ``config`` win)."""
    return resolve_recipe(
        "finetune", len(split.train), config.epochs, world_size=config.devices * config.num_nodes,
        batch_size=config.batch_size, lr=config.lr, warmup_epochs=config.warmup_epochs, max_steps=config.max_steps,
    )


def run_fold(
    config: FinetuneConfig, split: Split, pool: LabelledPool, classes: list[str], dataset_dir: Path,
    dataset_stats: dict[str, Any], dataset_info: dict[str, Any], recipe: Recipe,
    pool_features: PoolFeatures | None = None,
) -> dict[str, Any] | None:
    """Train, validate and test one fold with ``recipe`` (``fold_recipe``) and ``config.head``; score the
    baselines on the same labelled objects and test part; write the fold's files. Returns its result (None on
    ranks other than 0).

    ``head``: ``finetune`` trains the whole classifier; ``linear``/``knn`` fit a cheap head on the frozen
    embeddings of the initial encoder instead, ``forest``/``logreg``/``blend`` on the feature input alone (``blend``'s
    label-free transform also on the fold's unlabelled non-test objects, ``_unlabelled_pool``); ``auto`` does
    ``finetune``, ``linear``, ``knn``, ``forest`` and ``blend`` (the last two when there are features) and keeps the best by validation macro-F1 (without
    validation labels, the first of ``NO_VALIDATION_ORDER``). The head kept is the fold's model file, with
    precision thresholds from its own validation probabilities.

    ``budget`` protocol (``split.protocol``): validation is part of the labels, so a cheap head is scored by a
    cross-validation over every labelled object (``heads.cross_validated_probabilities``: its ``cv_macro_f1``, and
    its validation probabilities are the out-of-fold ones), ``auto`` keeps the cheap head that cross-validates best
    (fine-tuning is trained and scored beside it, not chosen: see below), and the final model is refitted on every
    labelled object (training + validation): a cheap head fitted on all of them, fine-tuning (``--head finetune``)
    re-run from the initial weights for the chosen number of epochs on the same lr schedule. The ``paper``
    protocol keeps the model chosen on validation.
    """
    from plankton_cli.train.trackers import Tracker
    from plankton_cli.train.training import CHECKPOINT_DIR, write_json_atomic

    fold_dir = Path(config.out) / f"fold-{split.fold}"
    pl.seed_everything(config.seed + split.fold, workers=True)
    scaling, feature_inputs = pool_features.for_fold(split) if pool_features else (None, None)
    model, inherited = build_classifier(config, len(classes), scaling.width if scaling else 0)
    mean = _scalar(inherited.get("mean", dataset_stats["mean"]))
    std = _scalar(inherited.get("std", dataset_stats["std"]))
    img_size = model.arch["img_size"]
    resize = int(inherited.get("resize") or default_resize(img_size))
    refit = split.protocol == "budget" and bool(split.val)  # nothing to add back without a validation part

    def loader(ids: Sequence[str], train: bool, batch_size: int = recipe.batch_size) -> StoreDataLoader:
        transform = (TrainTransform(resize, img_size, mean, std) if train else EvalTransform(resize, img_size, mean, std))
        return store_loader(dataset_dir, ids, classes, transform, train=train, batch_size=batch_size,
                            workers=config.workers, seed=config.seed + split.fold)

    # Candidates: name -> (validation labels, validation probabilities, test ids, test labels, test probabilities).
    candidates: dict[str, tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]] = {}
    fitted: dict[str, FittedHead] = {}
    refitted: list[str] = []  # heads whose test scores are those of the refit on every labelled object
    # Test macro-F1 of each refitted head as it was before the refit: what the refit itself gains.
    without_refit: dict[str, float] = {}
    # Budget protocol: each cheap head's (labels, out-of-fold probabilities) over every labelled object.
    cross_validated: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cheap = [h for h in CHEAP_HEADS if config.head == h or (config.head == "auto" and h in AUTO_HEADS)]
    if scaling is None:  # a forest reads the features only; without them it is not a candidate
        cheap = [h for h in cheap if h not in FEATURE_ONLY_HEADS]
    if cheap:  # before any training: the heads sit on the encoder as it was given
        initial_encoder = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
        (train_ids, y_train, x_train), (val_ids, y_val, x_val), (test_ids, y_test, x_test) = (
            embed(model, loader(ids, False)) for ids in (split.train, split.val, split.test))

        def inputs(kind: str, ids: list[str], x: np.ndarray) -> np.ndarray:  # what the head reads
            if scaling is None or feature_inputs is None:
                return design_matrix(x)
            rows = [feature_inputs[i] for i in ids]
            extra = np.stack(rows) if rows else np.zeros((0, scaling.width), np.float32)
            if kind in FEATURE_ONLY_HEADS:
                # The values only: a forest draws √(columns) candidates per split, and the missing indicators
                # (constant when every object has every feature) would crowd them out (−1 to −3 points on UVP6).
                # Missing values are 0, the training median: the baseline's median imputation. The head still
                # reads the whole input: the values come first in it, so the trees' column numbers are the same.
                return extra[:, :len(scaling.names)]
            return design_matrix(x, extra)

        unlabelled = _unlabelled_pool(split, pool_features, scaling) if pool_features and scaling else None
        for kind in cheap:
            head = fit_head(kind, inputs(kind, train_ids, x_train), y_train, len(classes), config.seed, unlabelled)
            val_probabilities = head_probabilities(head, inputs(kind, val_ids, x_val))
            if refit:  # every label is the cheap head's: scored by cross-validation over all, then fitted on all
                without_refit[kind] = _head_scores(classes, y_val, val_probabilities, test_ids, y_test, head_probabilities(
                    head, inputs(kind, test_ids, x_test)))["macro_f1"]
                all_ids, y_all, x_all = [*train_ids, *val_ids], np.concatenate([y_train, y_val]), np.concatenate([x_train, x_val])
                out_of_fold = cross_validated_probabilities(kind, inputs(kind, all_ids, x_all), y_all, len(classes),
                                                            config.seed, unlabelled)
                if out_of_fold is not None:  # refit implies a validation label, so a class with two: never None
                    cross_validated[kind] = (y_all, out_of_fold)
                    val_probabilities = out_of_fold[len(train_ids):]
                head = fit_head(kind, inputs(kind, all_ids, x_all), y_all, len(classes), config.seed, unlabelled)
                refitted.append(kind)
            fitted[kind] = head
            candidates[kind] = (y_val, val_probabilities, test_ids, y_test,
                                head_probabilities(head, inputs(kind, test_ids, x_test)))

    finetuned = None
    best_epoch = None
    if config.head in ("finetune", "auto"):
        finetuned = _train(config, split.fold, split.train, split.val, split.test, model, recipe, fold_dir, loader,
                           feature_inputs)
        if finetuned is None:
            return None  # a DDP rank other than 0
        (val_labels, val_logits), (test_ids, test_labels, test_logits), _, best_epoch = finetuned
        candidates["finetune"] = (val_labels, softmax(val_logits), test_ids, test_labels, softmax(test_logits))

    heads = {name: _head_scores(classes, *candidate) for name, candidate in candidates.items()}
    for name, (labels, probabilities) in cross_validated.items():
        heads[name]["cv_macro_f1"] = M.classification_metrics(labels.tolist(), probabilities.argmax(1).tolist())[
            "macro_f1"]
    if cross_validated:
        # Budget protocol: the cheap head that cross-validates best over every label. Fine-tuning is scored beside
        # it but not chosen: its validation macro-F1 is that of the epoch chosen on those same labels, so it reads
        # high (bench/quality.py: where it won on validation it lost to the cheap head on the test part, up to 8
        # points on average).
        chosen = max(cross_validated, key=lambda name: heads[name]["cv_macro_f1"])
    elif split.val:
        # Ties go to the cheaper head: it is the simpler explanation of the same score.
        chosen = max(heads, key=lambda name: (heads[name]["val_macro_f1"], name != "finetune"))
    else:  # every class too small to spare a validation label: no score to choose by, so the order measured
        chosen = min(heads, key=NO_VALIDATION_ORDER.index)
    final_fit: dict[str, Any] = {"head": chosen, "n_labelled": len(split.train) + (len(split.val) if refit else 0),
                                 "refit": refit}
    if refit and chosen == "finetune":
        # The chosen epoch count, on every labelled object: a fresh model from the same initial weights.
        pl.seed_everything(config.seed + split.fold, workers=True)
        model, _ = build_classifier(config, len(classes), scaling.width if scaling else 0)
        epochs = config.epochs if best_epoch is None else best_epoch + 1
        all_recipe = resolve_recipe(
            "finetune", len(split.labelled), config.epochs, world_size=config.devices * config.num_nodes,
            batch_size=config.batch_size, lr=config.lr, warmup_epochs=config.warmup_epochs, max_steps=config.max_steps)
        again = _train(config, split.fold, split.labelled, [], split.test, model, all_recipe, fold_dir / "refit",
                       lambda ids, train: loader(ids, train, all_recipe.batch_size), feature_inputs,
                       max_epochs=epochs, schedule_steps=all_recipe.total_steps)
        if again is None:
            return None
        _, (test_ids, test_labels, test_logits), _, _ = again
        without_refit["finetune"] = heads["finetune"]["macro_f1"]
        val_labels, val_probabilities = candidates["finetune"][:2]
        candidates["finetune"] = (val_labels, val_probabilities, test_ids, test_labels, softmax(test_logits))
        heads["finetune"] = {**_head_scores(classes, *candidates["finetune"]),
                             "val_macro_f1": heads["finetune"]["val_macro_f1"]}
        refitted.append("finetune")
        final_fit.update(epochs=epochs, schedule_epochs=config.epochs, recipe=all_recipe.to_dict())
        write_json_atomic(fold_dir / "refit" / "recipe.json", all_recipe.to_dict())
    for name in heads:
        heads[name]["refit"] = name in refitted
        if name in without_refit:
            heads[name]["macro_f1_without_refit"] = without_refit[name]
    val_labels, val_probabilities, test_ids, test_labels, test_probabilities = candidates[chosen]
    if chosen != "finetune":  # the fitted head on the encoder as it was given, whatever fine-tuning did to it
        model.encoder.load_state_dict(initial_encoder)
        model.use_fitted_head(fitted[chosen])
    # The model file is the chosen head's, so predict gives what the fold was scored with. Its thresholds come
    # from the validation probabilities (of the model fitted before the refit, under the budget protocol: the
    # refit has no images left that it did not learn from), or from a cheap head's out-of-fold probabilities over
    # every label, which no model saw while fitted.
    val_labels, val_probabilities = cross_validated.get(chosen, (val_labels, val_probabilities))
    thresholds, unreached = precision_thresholds(val_probabilities, val_labels, classes, config.target_precision)
    info = ModelInfo.from_dict({
        **inherited, **dataset_info, **model.arch,  # the fine-tuning data's padding is what predict must match
        "format": MODEL_FORMAT, "classes": classes, "mean": [mean], "std": [std], "resize": resize,
        "crop": img_size, "instruments": sorted(set(pool.instruments) - {"unknown"}),  # what predict warns by
        "thresholds": thresholds, "threshold_target_precision": config.target_precision,
        "thresholds_unreached": unreached, **(scaling.info_fields() if scaling else {}),
        "source": f"{inherited.get('source', '')}; plankton finetune fold {split.fold} of {config.out}".lstrip("; "),
    }, where=str(fold_dir / "model.json"))
    save_model(fold_dir, model.state_dict(), info)
    result = _score_fold(split, pool, classes, test_ids, test_labels, test_probabilities, fold_dir)
    result["head"] = chosen
    result["heads"] = heads
    result["final_fit"] = final_fit
    result["val_macro_f1"] = heads[chosen]["val_macro_f1"]
    result["model_file"] = str(fold_dir / "model.safetensors")
    result["thresholds"] = thresholds
    if finetuned and chosen == "finetune":
        result["best_checkpoint"] = finetuned[2]
        result["best_epoch"] = best_epoch
    result["recipe"] = recipe.to_dict()
    # On every labelled object the model used, validation included: equal label budgets (protocol.Split.labelled).
    result["baselines"] = score_baselines(dataset_dir, split.labelled, split.test, pool.label_of(), classes,
                                          config.seed)
    if (fold_dir / "metrics.csv").exists():
        try:
            M.plot_learning_curves(fold_dir / "metrics.csv", fold_dir / "learning_curves.png")
        except ValueError as error:  # e.g. --max-steps stopped before any epoch ended
            log.warning("fold %d: no learning curves: %s", split.fold, error)
    Tracker.of(config, "finetune").log_results(fold_dir, {"test": {
        **{name: result[name] for name in M.HEADLINE_METRICS}, "n_labelled": result["n_labelled"],
        "n_test": result["n_test"], "baselines": result["baselines"]}})
    write_json_atomic(fold_dir / "result.json", result)  # last: marks the fold as done
    for run_dir in (fold_dir, fold_dir / "refit"):
        shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)  # model.safetensors holds the kept weights
    return result


def _train(
    config: FinetuneConfig, fold: int, train_ids: Sequence[str], val_ids: Sequence[str], test_ids: Sequence[str],
    model: Any, recipe: Recipe, run_dir: Path, loader: Callable[[Sequence[str], bool], StoreDataLoader],
    features: dict[str, np.ndarray] | None = None, max_epochs: int | None = None, schedule_steps: int | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[list[str], np.ndarray, np.ndarray], str | None, int | None] | None:
    """Fine-tune ``model`` in place (ending with the best checkpoint's weights, or the last without validation
    images); ``((val labels, val logits), (test ids, test labels, test logits), best checkpoint, its epoch)``, or
    None on ranks other than 0. ``max_epochs`` (default ``config.epochs``) with ``schedule_steps`` stops early on
    a longer lr schedule."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from plankton_cli.train.trackers import Tracker
    from plankton_cli.train.training import CHECKPOINT_DIR, is_rank_zero, last_checkpoint, make_trainer

    train_loader, val_loader, test_loader = loader(train_ids, True), loader(val_ids, False), loader(test_ids, False)
    module = ClassifierModule(model, lr=recipe.lr, weight_decay=config.weight_decay, layer_decay=config.layer_decay,
                              warmup_steps=recipe.warmup_steps, label_smoothing=config.label_smoothing,
                              features=features, schedule_steps=schedule_steps)
    best_callback = ModelCheckpoint(
        dirpath=str(run_dir / CHECKPOINT_DIR), filename="best", monitor="val_macro_f1", mode="max", save_top_k=1,
        enable_version_counter=False,
    )
    # Every class too small to spare a validation image (see protocol._validation_part), or a refit on every
    # labelled object: no best epoch to pick, so the run keeps its last weights.
    validate = bool(val_ids)
    tracker = Tracker.of(config, "finetune")
    trainer = make_trainer(
        run_dir, max_epochs=max_epochs or config.epochs, max_steps=config.max_steps, accelerator=config.accelerator,
        devices=config.devices, num_nodes=config.num_nodes, callbacks=[best_callback] if validate else [],
        # Few labels make short epochs: log every step then, so the loss and lr curves are complete.
        log_every_n_steps=1 if len(train_loader) < 50 else 50,
        tracker_logger=tracker.logger(run_dir),
    )
    if is_rank_zero():
        tracker.log_params(run_dir, {"config": config.to_dict(), "recipe": recipe.to_dict()})
    resume = last_checkpoint(run_dir)
    trainer.fit(module, train_loader, val_loader if validate else None,
                ckpt_path=str(resume) if resume.exists() else None)
    # No validation ran (e.g. --max-steps inside the first epoch): test the last weights.
    best = best_callback.best_model_path or None
    best_epoch = None
    if validate:
        trainer.validate(module, val_loader, ckpt_path=best, verbose=False)
        if best:  # the epoch (0-based) whose end the checkpoint was saved at: what a refit trains up to
            # mmap: only the `epoch` entry is read, not the weights and optimizer state beside it
            best_epoch = int(torch.load(best, map_location="cpu", weights_only=False, mmap=True)["epoch"])
    elif max_epochs is None:
        log.warning("fold %d has no validation images (every class is too small to spare one): it keeps the last "
                    "epoch's weights and sets no precision thresholds", fold)
    trainer.test(module, test_loader, ckpt_path=best, verbose=False)
    if not validate:
        n_classes = module.outputs["test"][2].shape[1]
        module.outputs["val"] = ([], np.zeros(0, np.int64), np.zeros((0, n_classes), np.float32))
    if not trainer.is_global_zero:
        return None
    _, val_labels, val_logits = module.outputs["val"]
    return (val_labels, val_logits), module.outputs["test"], best, best_epoch


def _head_scores(classes: list[str], val_labels: np.ndarray, val_probabilities: np.ndarray, test_ids: list[str],
                 test_labels: np.ndarray, test_probabilities: np.ndarray) -> dict[str, Any]:
    """A candidate head's validation macro-F1 (what ``auto`` chooses by) and its test scores."""
    val = (M.classification_metrics(val_labels.tolist(), val_probabilities.argmax(1).tolist())["macro_f1"]
           if len(val_labels) else 0.0)
    test = M.classification_metrics([classes[i] for i in test_labels],
                                    [classes[i] for i in test_probabilities.argmax(1)], classes)
    return {"val_macro_f1": val, **{m: test[m] for m in M.HEADLINE_METRICS}}


def _unlabelled_pool(split: Split, pool_features: PoolFeatures, scaling: FeatureScaling) -> FeaturePool:
    """The feature values of the pool's objects whose labels this fold does not use, test objects excluded (what
    ``--head blend`` fits its label-free transform on), as feature input, with the scaling to undo."""
    held = {*split.train, *split.val, *split.test}
    rows = [values for object_id, values in sorted(pool_features.values.items()) if object_id not in held]
    width = len(scaling.names)
    values = scaling.transform(rows)[:, :width] if rows else np.zeros((0, width), np.float32)
    return FeaturePool(values, np.array(scaling.center), np.array(scaling.scale))


def _scalar(value: Any) -> float:
    return float(value[0] if isinstance(value, list | tuple) else value)


def _score_fold(
    split: Split, pool: LabelledPool, classes: list[str], ids: list[str], labels: np.ndarray,
    probabilities: np.ndarray, fold_dir: Path,
) -> dict[str, Any]:
    """Test metrics of one fold (overall and per instrument), the predictions file and the confusion matrix."""
    instrument_of = dict(zip(pool.object_ids, pool.instruments))
    true = [classes[i] for i in labels]
    pred = [classes[i] for i in probabilities.argmax(axis=1)]
    instruments = [instrument_of[i] for i in ids]
    table = pa.table({
        "object_id": pa.array(ids, pa.string()),
        "label": pa.array(true, pa.string()),
        "pred": pa.array(pred, pa.string()),
        "probabilities": pa.array(probabilities.astype(np.float32).tolist(), pa.list_(pa.float32())),
        "instrument": pa.array(instruments, pa.string()),
    }).replace_schema_metadata({"classes": json.dumps(classes), "fold": str(split.fold)})
    pq.write_table(table, fold_dir / "test_predictions.parquet")
    M.plot_confusion_matrix(true, pred, classes, fold_dir / "confusion_matrix.png", title=f"fold {split.fold}: test")
    scores = M.classification_metrics(true, pred, classes)
    return {
        "fold": split.fold,
        "labels": split.label_spec,
        "protocol": split.protocol,
        "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
        # Every label the fold used, validation included (early stopping, head choice and thresholds learn from it).
        "n_labelled": len(split.train) + len(split.val),
        **{name: scores[name] for name in M.HEADLINE_METRICS},
        "per_class": scores["per_class"],
        "absent_classes": scores["absent_classes"],
        "per_instrument": {
            name: {metric: value[metric] for metric in (*M.HEADLINE_METRICS, "n")}
            for name, value in M.per_group_metrics(true, pred, instruments, classes).items()
        },
        "warnings": split.warnings,
    }
