"""Data selection: the labelled pool of a store dataset, its fold splits and labelled subsets, and their loaders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from plankton_cli.prepare.data import StoreDataLoader, StoreDataset
from plankton_cli.prepare.data.dataset import list_row_groups, partition_values
from plankton_cli.prepare.features.inputs import FeatureScaling, object_features, select_features
from plankton_cli.train.finetune.config import FinetuneConfig
from plankton_cli.train.protocol import (
    PROTOCOLS,
    Split,
    load_split,
    make_folds,
    parse_label_fraction,
    restrict_budget,
    restrict_train,
    subset_counts,
)

TRAIN_SHUFFLE_WINDOW = 32
"""Row groups shuffled together when training. A labelled subset is spread thinly over the store's row groups
(which are sorted by source, often by class), so a wide window is what makes batches mixed; 32 groups of a few
MB each is still little memory."""

@dataclass
class LabelledPool:
    """The labelled images a run may use: ids, labels and instruments, sorted by id."""

    object_ids: list[str]
    labels: list[str]
    instruments: list[str]
    skipped_by_status: dict[str, int] = field(default_factory=dict)  # labelled, but of a status not taken as truth

    def skipped_line(self) -> str | None:
        """"36 labelled objects skipped: status predicted", with how to use them; None when none was skipped."""
        if not self.skipped_by_status:
            return None
        by_status = sorted(self.skipped_by_status.items())
        reasons = f"status {by_status[0][0]}" if len(by_status) == 1 else ", ".join(
            f"{n} status {status}" for status, n in by_status)
        return (f"{sum(self.skipped_by_status.values())} labelled objects skipped: {reasons} (not taken as truth; "
                f"--label-status STATUS or any to use them)")

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def label_of(self) -> dict[str, str]:
        return dict(zip(self.object_ids, self.labels))


def labelled_pool(
    dataset_dir: Path, instruments: Sequence[str] | None = None, label_status: Sequence[str] | None = ("validated",)
) -> LabelledPool:
    """Rows with an image and a label (of an accepted ``label_status``), read the way ``StoreDataset`` selects them.

    ``label_status`` None accepts every status; the default keeps human-validated labels only, so that EcoTaxa
    "predicted" labels never become training or test truth.
    """
    rows: list[tuple[str, str, str]] = []
    skipped: dict[str, int] = {}
    for group in list_row_groups(dataset_dir, instruments=instruments, labelled_only=True):
        with pq.ParquetFile(group.path) as file:
            names = file.schema_arrow.names
            columns = ["object_id", "label"] + [c for c in ("label_status", "instrument") if c in names]
            table = file.read_row_group(group.index, columns=columns).take(pa.array(group.rows))
        data = {name: table.column(name).cast(pa.string()).to_pylist() for name in table.column_names}
        partition = partition_values(Path(group.path), group.dataset_dir).get("instrument", "unknown")
        instrument = data.get("instrument", [partition] * table.num_rows)
        status = data.get("label_status", [None] * table.num_rows)
        for object_id, label, inst, stat in zip(data["object_id"], data["label"], instrument, status):
            if label_status is None or stat is None or stat in label_status:
                rows.append((object_id, label, inst or "unknown"))
            else:
                skipped[stat] = skipped.get(stat, 0) + 1
    rows.sort()
    if not rows:
        raise ValueError(
            f"{dataset_dir} has no labelled images"
            + (f" from instrument(s) {', '.join(instruments)}" if instruments else "")
            + (f" with label status {', '.join(label_status)}" if label_status else "")
            + (f"; {LabelledPool([], [], [], skipped).skipped_line()}" if skipped else "")
        )
    ids, labels, insts = (list(column) for column in zip(*rows))
    return LabelledPool(ids, labels, insts, skipped)


@dataclass
class PoolFeatures:
    """The per-object features a run feeds beside the image (``--features``), for the whole labelled pool."""

    names: list[str]
    values: dict[str, dict[str, float]]  # object_id -> {feature: value}, only the values it has

    @classmethod
    def resolve(cls, spec: str, store_root: Path, dataset: str, pool: LabelledPool) -> PoolFeatures | None:
        """The selection ``spec`` makes on the labelled pool (``features.inputs.select_features``); None: none."""
        if spec.strip() == "none":
            return None
        values = object_features(store_root, dataset, pool.object_ids)
        names = select_features(spec, values)
        return cls(names, values) if names else None

    def for_fold(self, split: Split) -> tuple[FeatureScaling, dict[str, np.ndarray]]:
        """The scaling fitted on the fold's labelled training images, and every fold image's feature input."""
        scaling = FeatureScaling.fit(self.names, [self.values[i] for i in split.train])
        ids = [*split.train, *split.val, *split.test]
        return scaling, dict(zip(ids, scaling.transform([self.values[i] for i in ids])))

    def describe(self, spec: str, n_objects: int) -> str:
        have = sum(all(name in self.values[oid] for name in self.names) for oid in self.values)
        shown = ", ".join(self.names[:8]) + (f" … ({len(self.names)} in all)" if len(self.names) > 8 else "")
        return f"features (--features {spec}): {shown}; {have} of {n_objects} labelled images have all of them"


def fold_splits(pool: LabelledPool, config: FinetuneConfig) -> list[Split]:
    """The fold splits of this run, cut to the labelled subset by ``config.protocol``; saved ones
    (``fold-k/split.json``) are reused."""
    spec = parse_label_fraction(config.labels)
    if config.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {config.protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    label_of = pool.label_of()
    fresh = None
    splits = []
    for fold in range(config.folds):
        path = Path(config.out) / f"fold-{fold}" / "split.json"
        if path.exists():
            split = load_split(path)
            wanted = (config.folds, config.seed, str(spec), config.protocol)
            if (split.n_folds, split.seed, split.label_spec, split.protocol) != wanted:
                raise ValueError(
                    f"{path} was drawn with {split.n_folds} folds, seed {split.seed}, labels {split.label_spec}, "
                    f"protocol {split.protocol}; this run asks for {wanted[0]} folds, seed {wanted[1]}, labels "
                    f"{wanted[2]}, protocol {wanted[3]}: use another --out"
                )
            if missing := [i for i in (*split.train, *split.val, *split.test) if i not in label_of]:
                raise ValueError(f"{path} names {len(missing)} image(s) no longer in the labelled pool, e.g. {missing[0]}")
        else:
            budget = config.protocol == "budget"
            if fresh is None:  # the budget protocol takes its validation part out of the labels, not the pool
                fresh = make_folds(pool.object_ids, pool.labels, config.folds,
                                   0.0 if budget else config.val_fraction, config.seed)
            split = (restrict_budget(fresh[fold], label_of, spec, config.val_fraction) if budget
                     else restrict_train(fresh[fold], label_of, spec))
        splits.append(split)
    return splits


def label_count_rows(splits: Sequence[Split], pool: LabelledPool) -> list[dict[str, Any]]:
    """``subset_counts`` of every fold's labelled subset against the pool it was drawn from, with a fold column:
    the training part (``paper``), or training + validation, the whole budget (``budget``)."""
    label_of = pool.label_of()
    rows = []
    for split in splits:
        train_pool = _train_pool(split, pool)
        selected = split.labelled if split.protocol == "budget" else split.train
        counts = subset_counts([label_of[i] for i in train_pool], [label_of[i] for i in selected])
        rows += [{"fold": split.fold, **row} for row in counts]
    return rows


def _train_pool(split: Split, pool: LabelledPool) -> list[str]:
    """What the labelled subset was drawn from: everything not test (``budget``), or not validation or test."""
    held_out = set(split.test) if split.protocol == "budget" else set(split.val) | set(split.test)
    return [i for i in pool.object_ids if i not in held_out]


def store_loader(
    dataset_dir: Path, ids: Sequence[str], classes: list[str], transform: Callable, *, train: bool,
    batch_size: int, workers: int, seed: int,
) -> StoreDataLoader:
    """A ``StoreDataLoader`` over the given ids: shuffled for training, stored order otherwise."""
    dataset = StoreDataset(
        dataset_dir, transform, classes=classes, labelled_only=True, object_ids=ids, shuffle=train, seed=seed,
        shuffle_window=TRAIN_SHUFFLE_WINDOW if train else 1,
    )
    return StoreDataLoader(
        dataset, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
