"""The whole run: pool, splits and label counts, then every fold not yet done, then the summary."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plankton_cli.train import metrics as M
from plankton_cli.prepare.data import load_or_compute_stats
from plankton_cli.core.errors import UsageError
from plankton_cli.train.finetune.config import RESULT_KEYS, FinetuneConfig
from plankton_cli.train.finetune.fold import fold_recipe, run_fold
from plankton_cli.train.finetune.model import require_vit
from plankton_cli.train.finetune.pool import PoolFeatures, fold_splits, label_count_rows, labelled_pool
from plankton_cli.train.finetune.results import summarise_run
from plankton_cli.train.model_info import FEATURE_ONLY_HEADS
from plankton_cli.prepare.pad_store import padding_rules
from plankton_cli.train.protocol import describe_counts, parse_label_fraction, save_split

log = logging.getLogger("plankton.finetune")


def finetune(config: FinetuneConfig, echo: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Fine-tune and test every fold (or ``config.fold``), then summarise the folds done so far.

    Folds with a ``result.json`` are not trained again; saved splits are reused. Returns the summary document
    (also written to OUT/summary.json).
    """
    from plankton_cli.store import Store
    from plankton_cli.train.trackers import Tracker
    from plankton_cli.train.training import (
        is_rank_zero,
        refuse_other_settings,
        resolve_dataset,
        write_json_atomic,
        write_run_config,
    )

    parse_label_fraction(config.labels)  # fail before any work on a bad spec
    require_vit(config)
    if config.fold is not None and not 0 <= config.fold < config.folds:
        raise ValueError(f"--fold {config.fold} is outside 0..{config.folds - 1}")
    out = Path(config.out)
    refuse_other_settings(out, config.to_dict(), RESULT_KEYS)
    store = Store(config.store)
    if config.dataset is None and "padded" not in store.datasets():
        # The paper pads every image to a square; without `padded` the default falls back to the raw objects.
        log.warning("store %s has no padded dataset: fine-tuning on unpadded images, without the paper's square "
                    "padding; run `plankton pad --store %s` first (or give --dataset objects to mean it)",
                    config.store, config.store)
    dataset_name = resolve_dataset(store, config.dataset)
    dataset_dir = store.root / dataset_name
    pool = labelled_pool(dataset_dir, config.instruments, config.label_status or None)
    if (skipped := pool.skipped_line()) and is_rank_zero():
        log.warning("%s", skipped)
    classes = pool.classes
    splits = fold_splits(pool, config)
    counts = label_count_rows(splits, pool)
    if is_rank_zero():
        write_run_config(out, {**config.to_dict(), "dataset": dataset_name, "classes": classes})
        M.write_csv(counts, out / "label_counts.csv")
    echo(f"{dataset_name}: {len(pool.object_ids)} labelled images, {len(classes)} classes; labels {splits[0].label_spec}")
    for split in splits:
        fold_rows = [row for row in counts if row["fold"] == split.fold]
        if split.protocol == "budget":  # the counts are the whole budget, validation included
            echo(f"fold {split.fold}: labelled {describe_counts(fold_rows)} (of {split.train_pool}), "
                 f"{len(split.val)} of them to validate; test {len(split.test)}")
        else:
            echo(f"fold {split.fold}: train {describe_counts(fold_rows)} (of {split.train_pool}); "
                 f"val {len(split.val)}, test {len(split.test)}")
    echo(_table4(counts))

    stats = load_or_compute_stats(dataset_dir)
    dataset_info = _dataset_info(dataset_dir, dataset_name)
    pool_features = PoolFeatures.resolve(config.features, store.root, dataset_name, pool)
    echo(pool_features.describe(config.features, len(pool.object_ids)) if pool_features
         else f"features: none (--features {config.features})")
    if config.head in FEATURE_ONLY_HEADS and pool_features is None:
        raise UsageError(f"--head {config.head} reads the objects' features, and the labelled images of {dataset_dir} have "
                         f"none (--features {config.features}): run `plankton features --store {store.root}` first, "
                         "or choose another --head")
    for split in splits:
        if config.fold is not None and split.fold != config.fold:
            continue
        fold_dir = out / f"fold-{split.fold}"
        if (fold_dir / "result.json").exists():
            echo(f"fold {split.fold}: already done ({fold_dir / 'result.json'}), not trained again")
            continue
        for warning in split.warnings:
            log.warning("fold %d: %s", split.fold, warning)
        if is_rank_zero():
            save_split(split, fold_dir / "split.json")
        recipe = fold_recipe(config, split)
        echo(f"fold {split.fold}: {recipe.describe()}")
        for warning in recipe.warnings:
            log.warning("fold %d: %s", split.fold, warning)
        if is_rank_zero():
            write_json_atomic(fold_dir / "recipe.json", recipe.to_dict())
        result = run_fold(config, split, pool, classes, dataset_dir, stats, dataset_info, recipe, pool_features)
        if result is not None:
            echo(f"fold {split.fold}: test accuracy {result['accuracy']:.3f}, balanced accuracy "
                 f"{result['balanced_accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}")
    if not is_rank_zero():
        return {}
    summary = summarise_run(out)
    tracker = Tracker.of(config, "finetune")  # the whole run's: its settings and the folds' mean ± std
    tracker.log_params(out, {"config": config.to_dict()})
    tracker.log_results(out, {"mean_std": summary["mean_std"], "baselines": summary["baselines"]})
    return summary


def _dataset_info(dataset_dir: Path, name: str) -> dict[str, Any]:
    """Preprocessing facts of the dataset for model.json: its name and, for a padded dataset, its pad settings."""
    info: dict[str, Any] = {"dataset": name}
    rules = padding_rules(dataset_dir)
    if rules:
        info["pad_settings"] = rules
    return info


def _table4(rows: list[dict[str, Any]]) -> str:
    """Per-class labelled counts of each fold side by side, as the paper's Table 4."""
    folds = sorted({row["fold"] for row in rows})
    by_class: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(row["class"], {})[row["fold"]] = row
    table = [
        {"class": M.short_class_name(name) if name != "total" else "total",
         **{f"fold {f}": f"{v[f]['selected']}/{v[f]['available']}" for f in folds if f in v}}
        for name, v in by_class.items()
    ]
    return "labelled / available training images per class:\n" + M.format_table_markdown(table)
