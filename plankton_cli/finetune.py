"""`plankton finetune` as a library function: few-label fine-tuning of a ViT with the paper's protocol.

Kareinen et al. 2025 (§4.3): the encoder (our MAE export, a timm/ImageNet checkpoint, or a fresh ViT) gets
MAE's average-pool ``fc_norm`` and Maracani's bottleneck head (``models.Classifier``) and is fine-tuned with
AdamW (lr 2e-3 absolute, weight decay 0.01), layer-wise lr decay 0.75, a per-step cosine schedule with a 5-epoch
warmup, label smoothing 0.1 and drop path 0.2, for 50 epochs at batch 128; bf16 on GPU.

Protocol (``protocol.py``): stratified k-fold cross-validation, 15 % of each fold's training part for validation,
the labelled subset drawn per class from the rest (n_c = max(1, floor(p·N_c)), nested, seeded). Each fold keeps
its best checkpoint by validation macro-F1 and is scored on its test part.

    OUT/config.json                  the settings (a re-run with other settings is refused)
    OUT/label_counts.csv             realised labelled images per fold and class (the paper's Table 4)
    OUT/summary.{md,csv,json}        per-fold test scores and mean ± std (Tables 3, 5, 6)
    OUT/fold-<k>/split.json          object ids of train/val/test: a re-run reuses it exactly
    OUT/fold-<k>/model.safetensors   + model.json: the best checkpoint, with classes, preprocessing, thresholds,
                                     and the per-object features (--features) with their scaling
    OUT/fold-<k>/metrics.csv         per-step/epoch log (train_loss, val_loss, val_macro_f1, lr_block0, lr_head)
    OUT/fold-<k>/test_predictions.parquet   object_id, label, pred, probabilities, instrument
    OUT/fold-<k>/result.json         the fold's test metrics; its presence marks the fold as done
    OUT/fold-<k>/{learning_curves,confusion_matrix}.png

Imports torch and Lightning: keep it out of modules that ``plankton --help`` loads.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor, nn

from plankton_cli import metrics as M
from plankton_cli.data import EvalTransform, StoreDataLoader, StoreDataset, TrainTransform, load_or_compute_stats
from plankton_cli.data.dataset import list_row_groups, partition_values
from plankton_cli.features.inputs import FeatureScaling, object_features, select_features
from plankton_cli.models import Classifier, layer_decay_param_groups, load_vit_weights
from plankton_cli.models import save_model, warmup_cosine_scheduler
from plankton_cli.models.info import MODEL_FORMAT, ModelInfo
from plankton_cli.padding import padding_rules
from plankton_cli.protocol import (
    Split,
    describe_counts,
    load_split,
    make_folds,
    parse_label_fraction,
    restrict_train,
    save_split,
    subset_counts,
)

log = logging.getLogger("plankton.finetune")

SCRATCH = "scratch"

TRAIN_SHUFFLE_WINDOW = 32
"""Row groups shuffled together when training. A labelled subset is spread thinly over the store's row groups
(which are sorted by source, often by class), so a wide window is what makes batches mixed; 32 groups of a few
MB each is still little memory."""

# Settings that change what a fold learns: a re-run into the same OUT must agree on all of them.
RESULT_KEYS = (
    "store", "dataset", "init", "model", "img_size", "patch_size", "depth", "embed_dim", "num_heads", "labels",
    "folds", "val_fraction", "seed", "epochs", "batch_size", "lr", "weight_decay", "layer_decay", "warmup_epochs",
    "drop_path", "label_smoothing", "instruments", "label_status", "max_steps", "features",
)


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs; the defaults are the paper's."""

    store: Path
    init: str  # our encoder export (folder or .safetensors), a timm checkpoint file, or "scratch"
    out: Path
    dataset: str | None = None  # None: padded when the store has it, else objects
    labels: str = "all"
    folds: int = 5
    fold: int | None = None  # run only this fold (SLURM arrays); None: all of them
    val_fraction: float = 0.15
    seed: int = 0
    epochs: int = 50
    batch_size: int = 128  # per device
    lr: float = 2e-3  # absolute (the paper's value at batch 128), not scaled by batch size
    weight_decay: float = 0.01
    layer_decay: float = 0.75
    warmup_epochs: float = 5.0
    drop_path: float = 0.2
    label_smoothing: float = 0.1
    target_precision: float = 0.9  # per-class thresholds for predict, chosen on validation data
    workers: int = 4
    instruments: list[str] | None = None
    label_status: list[str] = field(default_factory=lambda: ["validated"])
    max_steps: int | None = None  # smoke tests: stop after this many optimizer steps per fold
    features: str = "auto"  # per-object features beside the image: auto, none, or NAME/pattern,... (features.inputs)
    # Architecture, for --init scratch and for foreign (timm) checkpoints; overrides for our exports' img_size.
    model: str | None = None
    img_size: int | None = None
    patch_size: int | None = None
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    # Hardware, passed to training.make_trainer.
    accelerator: str = "auto"
    devices: int = 1  # per node; more than one trains with DDP
    num_nodes: int = 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["store"], data["out"] = str(Path(self.store).resolve()), str(Path(self.out).resolve())
        data["labels"] = str(parse_label_fraction(self.labels))
        return data


# --- data ----------------------------------------------------------------------------------------------------------


@dataclass
class LabelledPool:
    """The labelled images a run may use: ids, labels and instruments, sorted by id."""

    object_ids: list[str]
    labels: list[str]
    instruments: list[str]

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
    for group in list_row_groups(dataset_dir, instruments=instruments, labelled_only=True):
        with pq.ParquetFile(group.path) as file:
            names = file.schema_arrow.names
            columns = ["object_id", "label"] + [c for c in ("label_status", "instrument") if c in names]
            table = file.read_row_group(group.index, columns=columns).take(pa.array(group.rows))
        data = {name: table.column(name).cast(pa.string()).to_pylist() for name in table.column_names}
        partition = partition_values(Path(group.path), dataset_dir).get("instrument", "unknown")
        instrument = data.get("instrument", [partition] * table.num_rows)
        status = data.get("label_status", [None] * table.num_rows)
        for object_id, label, inst, stat in zip(data["object_id"], data["label"], instrument, status):
            if label_status is None or stat is None or stat in label_status:
                rows.append((object_id, label, inst or "unknown"))
    rows.sort()
    if not rows:
        raise ValueError(
            f"{dataset_dir} has no labelled images"
            + (f" from instrument(s) {', '.join(instruments)}" if instruments else "")
            + (f" with label status {', '.join(label_status)}" if label_status else "")
        )
    ids, labels, insts = (list(column) for column in zip(*rows))
    return LabelledPool(ids, labels, insts)


def fold_splits(pool: LabelledPool, config: FinetuneConfig) -> list[Split]:
    """The fold splits of this run, cut to the labelled subset; saved ones (``fold-k/split.json``) are reused."""
    spec = parse_label_fraction(config.labels)
    label_of = pool.label_of()
    fresh = None
    splits = []
    for fold in range(config.folds):
        path = Path(config.out) / f"fold-{fold}" / "split.json"
        if path.exists():
            split = load_split(path)
            wanted = (config.folds, config.seed, str(spec))
            if (split.n_folds, split.seed, split.label_spec) != wanted:
                raise ValueError(
                    f"{path} was drawn with {split.n_folds} folds, seed {split.seed}, labels {split.label_spec}; "
                    f"this run asks for {wanted[0]} folds, seed {wanted[1]}, labels {wanted[2]}: use another --out"
                )
            if missing := [i for i in (*split.train, *split.val, *split.test) if i not in label_of]:
                raise ValueError(f"{path} names {len(missing)} image(s) no longer in the labelled pool, e.g. {missing[0]}")
        else:
            if fresh is None:
                fresh = make_folds(pool.object_ids, pool.labels, config.folds, config.val_fraction, config.seed)
            split = restrict_train(fresh[fold], label_of, spec)
        splits.append(split)
    return splits


def label_count_rows(splits: Sequence[Split], pool: LabelledPool) -> list[dict[str, Any]]:
    """``subset_counts`` of every fold's labelled training subset against its training pool, with a fold column."""
    label_of = pool.label_of()
    rows = []
    for split in splits:
        train_pool = _train_pool(split, pool)
        counts = subset_counts([label_of[i] for i in train_pool], [label_of[i] for i in split.train])
        rows += [{"fold": split.fold, **row} for row in counts]
    return rows


def _train_pool(split: Split, pool: LabelledPool) -> list[str]:
    """The training part before the labelled subset was drawn: everything not in validation or test."""
    held_out = set(split.val) | set(split.test)
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


# --- the model -----------------------------------------------------------------------------------------------------


def default_resize(img_size: int) -> int:
    """The paper's 256 → 224 ratio at any input size."""
    return round(img_size * 256 / 224)


def build_classifier(
    config: FinetuneConfig, num_classes: int, feature_dim: int = 0
) -> tuple[Classifier, dict[str, Any]]:
    """The classifier and what is known about its input: ``mean``/``std``/``resize`` and padding settings of the
    encoder it starts from (empty for scratch and foreign checkpoints, whose inputs use the dataset's statistics).

    Inputs are always 1-channel: an RGB checkpoint has its patch kernel summed (``load_vit_weights``).
    """
    overrides = dict(patch_size=config.patch_size, depth=config.depth, embed_dim=config.embed_dim,
                     num_heads=config.num_heads)
    if config.init == SCRATCH:
        if not config.model:
            raise ValueError("--init scratch needs --model NAME (a timm ViT, e.g. vit_base_patch16_224)")
        model = Classifier(config.model, num_classes, img_size=config.img_size or 224, in_chans=1,
                           drop_path_rate=config.drop_path, feature_dim=feature_dim, **overrides)
        return model, {"source": "scratch"}

    path = Path(config.init)
    if not path.exists():
        raise FileNotFoundError(f"--init {path} does not exist (give an encoder export, a checkpoint file or 'scratch')")
    info = _export_info(path)
    if info is not None:  # our encoder (or a fine-tuned model, to fine-tune again)
        if config.model or any(v is not None for v in overrides.values()):
            log.warning("--model and the architecture options are ignored: %s names its own architecture", path)
        img_size = config.img_size or info.img_size
        model = Classifier(
            info.architecture, num_classes, img_size=img_size, in_chans=1, patch_size=info.patch_size,
            embed_dim=info.embed_dim, depth=info.depth, num_heads=info.num_heads,
            drop_path_rate=config.drop_path, feature_dim=feature_dim,
        )
        # Only the input conventions carry over; the encoder's own bookkeeping (epochs, run) stays in its file.
        inherited = {k: v for k, v in info.to_dict().items()
                     if k in ("mean", "std", "resize") or k.startswith(PREPROCESS_PREFIXES)}
        inherited["encoder_source"] = info.source
        if img_size != info.img_size:
            inherited.pop("resize", None)  # a resize chosen for another crop size no longer fits
    else:
        if not config.model:
            raise ValueError(f"{path} does not say which architecture it holds: give --model NAME (and the "
                             "--patch-size/--depth/--embed-dim/--num-heads it was trained with, if not the defaults)")
        model = Classifier(config.model, num_classes, img_size=config.img_size or 224, in_chans=1,
                           drop_path_rate=config.drop_path, feature_dim=feature_dim, **overrides)
        inherited = {}
    report = load_vit_weights(model, path)
    log.info("loaded %s (%d tensors adapted%s)", path, len(report.adapted),
             f": {', '.join(f'{k} {v}' for k, v in report.adapted.items())}" if report.adapted else "")
    inherited["source"] = f"fine-tuned from {path}"
    return model, inherited


PREPROCESS_PREFIXES = ("pad_", "crop_")


def _export_info(path: Path) -> ModelInfo | None:
    """Our export's info when ``path`` is one (encoder or model), else None (a foreign checkpoint)."""
    if not (path.is_dir() or path.suffix in (".safetensors", ".json")):
        return None
    try:
        return ModelInfo.load(path)
    except FileNotFoundError:
        return None


class ClassifierModule(pl.LightningModule):
    """Fine-tunes a :class:`Classifier`: cross-entropy with label smoothing, AdamW with layer-wise lr decay (each
    group's own lr, see ``models.layer_decay_param_groups``), per-step warmup + cosine.

    Logs ``train_loss``, ``lr_block0`` and ``lr_head`` every step (so the decay can be checked in metrics.csv),
    and per epoch ``val_loss``, ``val_macro_f1``, ``val_accuracy``, computed over the whole validation part
    gathered from every rank. After ``validate``/``test``, ``outputs[stage]`` holds the gathered
    ``(object_ids, labels, logits)``.
    """

    def __init__(
        self, model: Classifier, *, lr: float = 2e-3, weight_decay: float = 0.01, layer_decay: float = 0.75,
        warmup_epochs: float = 5.0, label_smoothing: float = 0.1, features: dict[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.features = features  # object_id -> the model's standardised feature input (None: image only)
        self.save_hyperparameters(ignore=["model", "features"])
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self._batches: dict[str, list[tuple[list[str], Tensor, Tensor]]] = {"val": [], "test": []}
        self.outputs: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def _logits(self, batch: dict[str, Any]) -> Tensor:
        if self.features is None:
            return self.model(batch["image"])
        rows = np.stack([self.features[oid] for oid in batch["object_id"]])
        return self.model(batch["image"], torch.from_numpy(rows).to(batch["image"].device))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = layer_decay_param_groups(self.model, hp.lr, hp.weight_decay, hp.layer_decay)
        optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        warmup_steps = round(hp.warmup_epochs * steps_per_epoch)
        scheduler = warmup_cosine_scheduler(optimizer, total_steps, warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.criterion(self._logits(batch), batch["label"])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        # The lr this step is taken with (the scheduler steps after the optimizer): the proof that decay applies.
        groups = self.optimizers().param_groups
        head = max(groups, key=lambda g: g["layer_id"])
        block0 = next(g for g in groups if g["layer_id"] == 1)
        self.log("lr_head", head["lr"], on_step=True, on_epoch=False)
        self.log("lr_block0", block0["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect("test", batch)

    def _collect(self, stage: str, batch: dict[str, Any]) -> None:
        logits = self._logits(batch).float()
        self._batches[stage].append((list(batch["object_id"]), batch["label"].cpu(), logits.cpu()))

    def on_validation_epoch_end(self) -> None:
        ids, labels, logits = self._gather("val")
        if len(labels) == 0 or self.trainer.state.fn != "fit":
            return  # the re-validation of the best checkpoint after fit must not add a row to the curves
        loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                           label_smoothing=self.hparams.label_smoothing)
        scores = M.classification_metrics(labels.tolist(), logits.argmax(1).tolist())
        # Identical on every rank (computed from the gathered outputs): no further sync needed.
        self.log("val_loss", float(loss), on_epoch=True)
        self.log("val_macro_f1", scores["macro_f1"], on_epoch=True, prog_bar=True)
        self.log("val_accuracy", scores["accuracy"], on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self._gather("test")

    def _gather(self, stage: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """This stage's outputs from every rank, in rank order (= stored order for unshuffled loaders)."""
        batches, self._batches[stage] = self._batches[stage], []
        ids = [i for b in batches for i in b[0]]
        labels = torch.cat([b[1] for b in batches]).numpy() if batches else np.zeros(0, np.int64)
        n_classes = self.model.arch["num_classes"]
        logits = torch.cat([b[2] for b in batches]).numpy() if batches else np.zeros((0, n_classes), np.float32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (ids, labels, logits))
            ids = [i for part in parts for i in part[0]]
            labels = np.concatenate([part[1] for part in parts])
            logits = np.concatenate([part[2] for part in parts])
        self.outputs[stage] = (ids, labels, logits)
        return self.outputs[stage]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def precision_thresholds(
    probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str], target_precision: float
) -> tuple[dict[str, float] | None, list[str]]:
    """Per class, the lowest top-class probability at which predictions of that class reach ``target_precision``
    on these (validation) images; predict then calls an image ``unclassified`` below its class's threshold.

    Returns ``(thresholds, unreached)``: classes never predicted here, or never precise enough at any cut, are
    left out of ``thresholds`` and listed in ``unreached``. ``thresholds`` is None without any image.
    """
    if len(labels) == 0:
        return None, list(classes)
    predicted, top = probabilities.argmax(axis=1), probabilities.max(axis=1)
    thresholds, unreached = {}, []
    for index, name in enumerate(classes):
        mine = predicted == index
        order = np.argsort(-top[mine], kind="stable")
        scores, correct = top[mine][order], (labels[mine] == index)[order]
        precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
        # A threshold keeps every score ≥ it, so only the last position of a run of equal scores is a valid cut.
        cut_ends = np.append(scores[1:] != scores[:-1], True) if len(scores) else np.zeros(0, bool)
        ok = np.flatnonzero(cut_ends & (precision >= target_precision))
        if len(ok):
            thresholds[str(name)] = float(scores[ok[-1]])  # the most recall that keeps the precision
        else:
            unreached.append(str(name))
    return thresholds, unreached


# --- one fold ------------------------------------------------------------------------------------------------------


def run_fold(
    config: FinetuneConfig, split: Split, pool: LabelledPool, classes: list[str], dataset_dir: Path,
    dataset_stats: dict[str, Any], dataset_info: dict[str, Any], pool_features: PoolFeatures | None = None,
) -> dict[str, Any] | None:
    """Train, validate and test one fold; write its files. Returns its result (None on ranks other than 0)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from plankton_cli.training import CHECKPOINT_DIR, last_checkpoint, make_trainer, write_json_atomic

    fold_dir = Path(config.out) / f"fold-{split.fold}"
    pl.seed_everything(config.seed + split.fold, workers=True)
    scaling, feature_inputs = pool_features.for_fold(split) if pool_features else (None, None)
    model, inherited = build_classifier(config, len(classes), scaling.width if scaling else 0)
    mean = _scalar(inherited.get("mean", dataset_stats["mean"]))
    std = _scalar(inherited.get("std", dataset_stats["std"]))
    img_size = model.arch["img_size"]
    resize = int(inherited.get("resize") or default_resize(img_size))

    def loader(ids: Sequence[str], train: bool) -> StoreDataLoader:
        transform = (TrainTransform(resize, img_size, mean, std) if train else EvalTransform(resize, img_size, mean, std))
        return store_loader(dataset_dir, ids, classes, transform, train=train, batch_size=config.batch_size,
                            workers=config.workers, seed=config.seed + split.fold)

    train_loader, val_loader, test_loader = loader(split.train, True), loader(split.val, False), loader(split.test, False)
    module = ClassifierModule(model, lr=config.lr, weight_decay=config.weight_decay, layer_decay=config.layer_decay,
                              warmup_epochs=config.warmup_epochs, label_smoothing=config.label_smoothing,
                              features=feature_inputs)
    best_callback = ModelCheckpoint(
        dirpath=str(fold_dir / CHECKPOINT_DIR), filename="best", monitor="val_macro_f1", mode="max", save_top_k=1,
        enable_version_counter=False,
    )
    trainer = make_trainer(
        fold_dir, max_epochs=config.epochs, max_steps=config.max_steps, accelerator=config.accelerator,
        devices=config.devices, num_nodes=config.num_nodes, callbacks=[best_callback],
        # Few labels make short epochs: log every step then, so the loss and lr curves are complete.
        log_every_n_steps=1 if len(train_loader) < 50 else 50,
    )
    resume = last_checkpoint(fold_dir)
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume) if resume.exists() else None)
    # No validation ran (e.g. --max-steps inside the first epoch): test the last weights.
    best = best_callback.best_model_path or None
    trainer.validate(module, val_loader, ckpt_path=best, verbose=False)
    trainer.test(module, test_loader, ckpt_path=best, verbose=False)
    if not trainer.is_global_zero:
        return None

    # Lightning skips validation when a fold has no validation images (tiny or singleton classes): none then.
    no_val = ([], np.zeros(0, np.int64), np.zeros((0, len(classes)), np.float32))
    val_ids, val_labels, val_logits = module.outputs.get("val", no_val)
    thresholds, unreached = precision_thresholds(softmax(val_logits), val_labels, classes, config.target_precision)
    info = ModelInfo.from_dict({
        **inherited, **dataset_info, **model.arch,  # the fine-tuning data's padding is what predict must match
        "format": MODEL_FORMAT, "classes": classes, "mean": [mean], "std": [std], "resize": resize, "crop": img_size,
        "thresholds": thresholds, "threshold_target_precision": config.target_precision,
        "thresholds_unreached": unreached, **(scaling.info_fields() if scaling else {}),
        "source": f"{inherited.get('source', '')}; plankton finetune fold {split.fold} of {config.out}".lstrip("; "),
    }, where=str(fold_dir / "model.json"))
    save_model(fold_dir, module.model.state_dict(), info)

    test_ids, test_labels, test_logits = module.outputs["test"]
    result = _score_fold(split, pool, classes, test_ids, test_labels, test_logits, fold_dir)
    result["best_checkpoint"] = best
    result["val_macro_f1"] = (M.classification_metrics(val_labels.tolist(), val_logits.argmax(1).tolist())["macro_f1"]
                              if len(val_labels) else None)
    result["thresholds"] = thresholds
    if (fold_dir / "metrics.csv").exists():
        try:
            M.plot_learning_curves(fold_dir / "metrics.csv", fold_dir / "learning_curves.png")
        except ValueError as error:  # e.g. --max-steps stopped before any epoch ended
            log.warning("fold %d: no learning curves: %s", split.fold, error)
    write_json_atomic(fold_dir / "result.json", result)  # last: marks the fold as done
    shutil.rmtree(fold_dir / CHECKPOINT_DIR, ignore_errors=True)  # model.safetensors holds the best weights
    return result


def _scalar(value: Any) -> float:
    return float(value[0] if isinstance(value, list | tuple) else value)


def _score_fold(
    split: Split, pool: LabelledPool, classes: list[str], ids: list[str], labels: np.ndarray, logits: np.ndarray,
    fold_dir: Path,
) -> dict[str, Any]:
    """Test metrics of one fold (overall and per instrument), the predictions file and the confusion matrix."""
    instrument_of = dict(zip(pool.object_ids, pool.instruments))
    probabilities = softmax(logits)
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
        "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
        **{name: scores[name] for name in M.HEADLINE_METRICS},
        "per_class": scores["per_class"],
        "absent_classes": scores["absent_classes"],
        "per_instrument": {
            name: {metric: value[metric] for metric in (*M.HEADLINE_METRICS, "n")}
            for name, value in M.per_group_metrics(true, pred, instruments, classes).items()
        },
        "warnings": split.warnings,
    }


# --- the whole run -------------------------------------------------------------------------------------------------


def finetune(config: FinetuneConfig, echo: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Fine-tune and test every fold (or ``config.fold``), then summarise the folds done so far.

    Folds with a ``result.json`` are not trained again; saved splits are reused. Returns the summary document
    (also written to OUT/summary.json).
    """
    from plankton_cli.store import Store
    from plankton_cli.training import is_rank_zero, resolve_dataset, write_run_config

    parse_label_fraction(config.labels)  # fail before any work on a bad spec
    if config.fold is not None and not 0 <= config.fold < config.folds:
        raise ValueError(f"--fold {config.fold} is outside 0..{config.folds - 1}")
    out = Path(config.out)
    _check_config(out, config)
    store = Store(config.store)
    dataset_name = resolve_dataset(store, config.dataset)
    dataset_dir = store.root / dataset_name
    pool = labelled_pool(dataset_dir, config.instruments, config.label_status or None)
    classes = pool.classes
    splits = fold_splits(pool, config)
    counts = label_count_rows(splits, pool)
    if is_rank_zero():
        write_run_config(out, {**config.to_dict(), "dataset": dataset_name, "classes": classes})
        M.write_csv(counts, out / "label_counts.csv")
    echo(f"{dataset_name}: {len(pool.object_ids)} labelled images, {len(classes)} classes; labels {splits[0].label_spec}")
    for split in splits:
        fold_rows = [row for row in counts if row["fold"] == split.fold]
        echo(f"fold {split.fold}: train {describe_counts(fold_rows)} (of {split.train_pool}); "
             f"val {len(split.val)}, test {len(split.test)}")
    echo(_table4(counts))

    stats = load_or_compute_stats(dataset_dir)
    dataset_info = _dataset_info(dataset_dir, dataset_name)
    pool_features = PoolFeatures.resolve(config.features, store.root, dataset_name, pool)
    echo(pool_features.describe(config.features, len(pool.object_ids)) if pool_features
         else f"features: none (--features {config.features})")
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
        result = run_fold(config, split, pool, classes, dataset_dir, stats, dataset_info, pool_features)
        if result is not None:
            echo(f"fold {split.fold}: test accuracy {result['accuracy']:.3f}, balanced accuracy "
                 f"{result['balanced_accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}")
    return summarise_run(out) if is_rank_zero() else {}


def _check_config(out: Path, config: FinetuneConfig) -> None:
    """Refuse to mix folds trained with other settings into one OUT."""
    path = out / "config.json"
    if not path.exists():
        return
    saved, current = json.loads(path.read_text()), config.to_dict()
    differ = [key for key in RESULT_KEYS if key != "dataset" and saved.get(key) != current.get(key)]
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in differ)
        raise ValueError(f"{out} holds a run with other settings ({details}); use another --out")


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


def summarise_run(out: Path) -> dict[str, Any]:
    """Collect every ``fold-*/result.json`` of OUT into summary.{json,csv,md}; returns the summary document."""
    from plankton_cli.training import write_summary

    out = Path(out)
    results = sorted(
        (json.loads(p.read_text()) for p in out.glob("fold-*/result.json")), key=lambda r: r["fold"]
    )
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    if not results:
        return {"config": config, "folds": [], "mean_std": {}, "per_instrument": {}, "complete": False}
    summary = M.summarise_folds(results)
    instruments = sorted({name for r in results for name in r["per_instrument"]})
    per_instrument = {
        name: M.summarise_folds([r["per_instrument"][name] for r in results if name in r["per_instrument"]])
        for name in instruments
    }
    columns = ("fold", "n_train", "n_val", "n_test", *M.HEADLINE_METRICS)
    rows = [{c: r[c] for c in columns} for r in results]
    document = {
        "config": config,
        "folds": rows,
        "mean_std": summary,
        "per_instrument": per_instrument,
        "complete": len(results) == config.get("folds", len(results)),
    }
    write_summary(out, document)
    mean_row = {"fold": "mean ± std", **{m: M.format_mean_std(s["mean"], s["std"]) for m, s in summary.items()}}
    M.write_csv([*rows, {"fold": "mean", **{m: s["mean"] for m, s in summary.items()}},
                 {"fold": "std", **{m: s["std"] for m, s in summary.items()}}], out / "summary.csv", columns)
    (out / "summary.md").write_text(_summary_markdown(config, rows, mean_row, per_instrument), encoding="utf-8")
    return document


def _summary_markdown(config: dict, rows: list[dict], mean_row: dict, per_instrument: dict) -> str:
    shown = [{**row, **{m: f"{row[m] * 100:.2f}" for m in M.HEADLINE_METRICS}} for row in rows]
    lines = [
        f"# Fine-tuning: {config.get('init', '?')}, labels {config.get('labels', '?')}",
        "",
        f"Dataset `{config.get('dataset', '?')}` of `{config.get('store', '?')}`, {len(rows)} of "
        f"{config.get('folds', '?')} folds done; test scores in %, mean ± sample std over folds.",
        "",
        M.format_table_markdown([*shown, mean_row], ["fold", "n_train", "n_val", "n_test", *M.HEADLINE_METRICS]),
    ]
    if len(per_instrument) > 1:
        lines += ["## Per instrument", ""]
        lines.append(M.format_table_markdown([
            {"instrument": name, **{m: M.format_mean_std(s["mean"], s["std"]) for m, s in values.items()}}
            for name, values in per_instrument.items()
        ]))
    return "\n".join(lines)
