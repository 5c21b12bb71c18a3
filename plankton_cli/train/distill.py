"""`plankton distill` as a library function: a fine-tuned teacher's knowledge into a small, fast student.

Stations classify on CPU; the models worth deploying are trained on a GPU. Distillation (Hinton et al. 2015)
trains a small timm ViT (or CNN) on the store's images to match the teacher's softened class probabilities (temperature
T, loss KL·T²), and on the images that carry a validated label, on the label too (cross-entropy, weight
``alpha``). The student is an ordinary model file: ``plankton predict``, the thresholds, ``evaluate`` and every
writer use it unchanged.

Teacher targets are computed once, on the teacher's own eval view of every image, and cached in
OUT/teacher_logits.parquet; the student then trains with the paper's augmentations against them. On CPU this is
what makes distillation affordable (one teacher pass instead of one per epoch); the price is that the target
of an augmented crop is the teacher's answer for the whole image.

Held-out images are never trained on. When the teacher is a ``plankton finetune`` fold (a ``split.json`` beside
it), they are that fold's validation and test images, so the student's test scores compare with the teacher's
on the same images, without the student ever seeing a test label; otherwise a seeded ``held_out`` fraction.
``model.json`` records the teacher's hash and the top-1 agreement with the teacher measured on them.

A teacher that reads per-object features beside the image (``finetune --features``) answers with its own feature
inputs: the names and median/IQR scaling its model.json records, read from the store by the same
``features.inputs.feature_matrix`` finetune's inputs come from. The student gets exactly the same inputs (it is
not refitted: a refit on other images would give other medians), so its model.json records the teacher's
``features``/scaling and ``plankton predict`` feeds it as it feeds the teacher.

    OUT/config.json              the settings (a re-run with other settings is refused)
    OUT/teacher_logits.parquet   object_id, logits: the teacher's answers (reused on resume)
    OUT/model.safetensors        + model.json: the student, with teacher_hash and teacher_agreement
    OUT/metrics.csv              train_loss, train_kd, lr_head per step; val_agreement per epoch
    OUT/summary.json             what the run did; its presence marks the run as done

Imports torch and Lightning: keep it out of modules that ``plankton --help`` loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from plankton_cli.train import metrics as M
from plankton_cli.core.errors import UsageError
from plankton_cli.prepare.data import EvalTransform, StoreDataLoader, StoreDataset, TrainTransform, list_row_groups
from plankton_cli.train.finetune import (
    ClassifierModule,
    default_resize,
    labelled_pool,
    precision_thresholds,
    softmax,
)
from plankton_cli.prepare.features.inputs import PREFIX, FeatureScaling, feature_matrix
from plankton_cli.train.finetune.model import PREPROCESS_PREFIXES
from plankton_cli.train.hub import local_init
from plankton_cli.train.model_info import ModelInfo
from plankton_cli.train.models import Classifier, is_vit, load_model, load_vit_weights, param_groups_weight_decay, save_model
from plankton_cli.train.models.classifier import contains_vit

log = logging.getLogger("plankton.distill")

DEFAULT_STUDENT = "mobilenetv3_small_100"
DEFAULT_IMG_SIZE = 112
"""The default student, chosen by ``bench/predict_cpu.py`` on 2 cores: as good as a ViT-Ti/16 student at 112 px on
UVP6, 5.8 × faster forward and 3.8 × end to end (the README's tables)."""

TEACHER_LOGITS = "teacher_logits.parquet"

# Settings that change what the student learns: a re-run into the same OUT must agree on all of them.
RESULT_KEYS = (
    "store", "dataset", "teacher", "student", "init", "img_size", "patch_size", "depth", "embed_dim", "num_heads",
    "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "drop_path", "temperature", "alpha",
    "held_out", "seed", "instruments", "label_status", "max_steps",
)


@dataclass
class DistillConfig:
    """Everything one distillation run needs."""

    store: Path
    teacher: Path  # a fine-tuned model: model.safetensors (model.json beside it) or its folder
    out: Path
    student: str = DEFAULT_STUDENT  # a timm ViT or CNN name, e.g. mobilenetv3_small_100
    init: str | None = None  # a ViT student's starting weights: a local file or a hub name (plankton_cli.train.hub)
    img_size: int = DEFAULT_IMG_SIZE
    dataset: str | None = None  # None: the teacher's dataset when the store has it, else padded, else objects
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3  # absolute, AdamW, warmup + cosine; a student trains from scratch, so no layer decay
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    drop_path: float = 0.0
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the label loss on labelled images (1 − alpha on the teacher's)
    held_out: float = 0.1  # fraction held out when the teacher has no split.json
    target_precision: float = 0.9
    seed: int = 0
    workers: int = 4
    instruments: list[str] | None = None
    label_status: list[str] = field(default_factory=lambda: ["validated"])
    max_steps: int | None = None
    checkpoint_every: int | str = "10min"  # optimizer steps, or training time (core.cadence)
    # Architecture overrides of a ViT student (small test models); refused for a CNN.
    patch_size: int | None = None
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    logger: str = "csv"  # also tensorboard or mlflow (plankton_cli.train.trackers); RUN/metrics.csv is always written
    logger_uri: str | None = None  # MLflow's tracking URI

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("store", "out", "teacher"):
            data[key] = str(Path(data[key]).resolve())
        return data


# --- which images do what ------------------------------------------------------------------------------------------


@dataclass
class Parts:
    """Object ids by role: ``train`` (distilled on), ``held_out`` (never trained on, agreement measured on),
    ``thresholds`` (held-out images whose labels set per-class thresholds) and ``test`` (held-out images scored
    against their labels, the teacher's test part when there is one)."""

    train: list[str]
    held_out: list[str]
    thresholds: list[str]
    test: list[str]
    source: str


def split_images(ids: Sequence[str], teacher_weights: Path, held_out: float, seed: int) -> Parts:
    """Held-out images: the teacher fold's validation + test part when ``split.json`` is beside the teacher,
    else a seeded ``held_out`` fraction of ``ids`` (by a hash of the id, so adding images never moves others)."""
    from plankton_cli.train.protocol import load_split

    split_path = teacher_weights.parent / "split.json"
    present = set(ids)
    if split_path.exists():
        split = load_split(split_path)
        val = [i for i in split.val if i in present]
        test = [i for i in split.test if i in present]
        held_out_ids = set(val) | set(test)
        return Parts([i for i in ids if i not in held_out_ids], sorted(held_out_ids), val, test,
                     f"validation + test of {split_path}")
    held = [i for i in ids if _unit_hash(i, seed) < held_out]
    held_set = set(held)
    return Parts([i for i in ids if i not in held_set], held, held, held, f"{held_out:.0%} of the images, seed {seed}")


def _unit_hash(object_id: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{object_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def dataset_ids(dataset_dir: Path, instruments: Sequence[str] | None) -> list[str]:
    """Object ids of the rows with an image, sorted."""
    ids: list[str] = []
    for group in list_row_groups(dataset_dir, instruments=instruments):
        with pq.ParquetFile(group.path) as file:
            column = file.read_row_group(group.index, columns=["object_id"]).column("object_id")
        ids += column.take(pa.array(group.rows)).to_pylist()
    return sorted(ids)


def accepted_labels(dataset_dir: Path, instruments: Sequence[str] | None, label_status: Sequence[str]) -> set[str]:
    """Ids whose label counts as truth (finetune's rule: ``label_status``, default validated only)."""
    try:
        return set(labelled_pool(dataset_dir, instruments, label_status or None).object_ids)
    except ValueError:  # no labelled image at all: distil from the teacher alone
        return set()


# --- the teacher's feature inputs ----------------------------------------------------------------------------------


def feature_inputs(
    described: ModelInfo, store_root: Path, dataset: str, ids: Sequence[str], where: Path,
) -> tuple[FeatureScaling | None, dict[str, np.ndarray] | None]:
    """The teacher's feature scaling and every image's feature input under it (None, None: image only).

    The rows come from ``feature_matrix``, the reader finetune's inputs come from, scaled with the teacher's own
    recorded median/IQR; teacher and student both train on these rows. A feature the store holds for none of the
    images is a UsageError: the teacher's answers would then rest on inputs it never saw at training time.
    """
    scaling = FeatureScaling.from_info(described)
    if scaling is None:
        return None, None
    from plankton_cli.store import Store

    store = Store(store_root)
    measured = [name for name in scaling.names if name.startswith(PREFIX)]
    if measured and not store.files("features"):
        raise UsageError(f"{where} reads {', '.join(measured)}, which this store lacks: "
                         f"run `plankton features --store {store_root}` first")
    matrix = feature_matrix(store_root, ids, scaling, dataset)
    # The missing indicators are the right half of each row (FeatureScaling.transform): all 1 = no image has it.
    absent = [name for name, column in zip(scaling.names, matrix[:, len(scaling.names):].T) if column.all()]
    if absent and len(ids):
        raise UsageError(f"{where} reads {', '.join(absent)}, which no image of {dataset} in {store_root} has: "
                         "distil on the store the teacher was fine-tuned on")
    return scaling, dict(zip(ids, matrix))


def _rows(features: dict[str, np.ndarray], ids: Sequence[str]) -> Tensor:
    return torch.from_numpy(np.stack([features[i] for i in ids]))


# --- the teacher's answers -----------------------------------------------------------------------------------------


def teacher_logits(
    teacher: Classifier, info: dict[str, Any], dataset_dir: Path, ids: Sequence[str], path: Path, *,
    batch_size: int, workers: int, features: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The teacher's logits on its own eval view of each image (and its feature input, when it reads
    ``features``: object_id → row of ``feature_inputs``), cached in ``path`` (atomic write)."""
    from plankton_cli.core.atomic import atomic_path

    if path.exists():
        table = pq.read_table(path)
        cached = dict(zip(table.column("object_id").to_pylist(), np.array(table.column("logits").to_pylist(),
                                                                           dtype=np.float32)))
        if set(ids) <= set(cached):
            return cached
        log.warning("%s lacks some images of this run; computing the teacher's answers again", path)
    transform = EvalTransform(int(info.get("resize") or default_resize(info["img_size"])), int(info["img_size"]),
                              _scalar(info["mean"]), _scalar(info["std"]))
    dataset = StoreDataset(dataset_dir, transform, object_ids=ids, shuffle=False)
    loader = StoreDataLoader(dataset, batch_size=batch_size, num_workers=workers)
    device = next(teacher.parameters()).device
    out_ids: list[str] = []
    out_logits: list[np.ndarray] = []
    started = time.monotonic()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for batch in loader:
            batch_ids = list(batch["object_id"])
            extra = None if features is None else _rows(features, batch_ids).to(device)
            out_ids += batch_ids
            out_logits.append(teacher(batch["image"].to(device), extra).float().cpu().numpy())
    logits = np.concatenate(out_logits) if out_logits else np.zeros((0, info["num_classes"]), np.float32)
    log.info("teacher answered %d images in %.0f s", len(out_ids), time.monotonic() - started)
    table = pa.table({"object_id": pa.array(out_ids, pa.string()),
                      "logits": pa.array(logits.tolist(), pa.list_(pa.float32()))})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return dict(zip(out_ids, logits))


def _scalar(value: Any) -> float:
    return float(np.mean(value))


def _wait_for(path: Path, timeout_s: float = 24 * 3600) -> None:
    """Other DDP ranks wait for rank 0's teacher pass."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 never wrote {path}")
        time.sleep(2)


# --- the student ---------------------------------------------------------------------------------------------------


class DistillModule(ClassifierModule):
    """Trains the student: per image (1 − alpha)·T²·KL(teacher_T ‖ student_T), plus alpha·cross-entropy on images
    with an accepted label. Optimiser and schedule are finetune's (AdamW, warmup + cosine per step) with layer
    decay 1, a student starting from scratch (a CNN student: plain weight-decay groups, ``param_groups``).
    Validation logs ``val_agreement``: top-1 agreement with the teacher on the held-out images. ``features`` (object_id → the teacher's feature input) feed a student that reads
    features, through finetune's ``_logits``."""

    def __init__(self, model: Classifier, targets: dict[str, np.ndarray], labelled: set[str], *, lr: float,
                 weight_decay: float, warmup_steps: int, temperature: float, alpha: float,
                 features: dict[str, np.ndarray] | None = None) -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, layer_decay=1.0, warmup_steps=warmup_steps,
                         label_smoothing=0.0, features=features)
        self.save_hyperparameters(ignore=["model", "targets", "labelled", "features"])
        self.targets, self.labelled = targets, labelled

    def param_groups(self) -> list[dict[str, Any]]:
        """finetune's groups (layer decay 1) for a ViT student, so its checkpoints resume as before; a CNN student
        (no ViT layers to decay over): weight decay on weight matrices and kernels, none on norms and biases."""
        if contains_vit(self.model):
            return super().param_groups()
        return param_groups_weight_decay(self.model, self.hparams.weight_decay)

    def _teacher(self, ids: Sequence[str]) -> Tensor:
        return torch.from_numpy(np.stack([self.targets[i] for i in ids])).to(self.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        hp = self.hparams
        logits = self._logits(batch)
        ids = list(batch["object_id"])
        t = hp.temperature
        kd = nn.functional.kl_div(
            nn.functional.log_softmax(logits / t, dim=1), nn.functional.log_softmax(self._teacher(ids) / t, dim=1),
            reduction="none", log_target=True,
        ).sum(dim=1) * t * t
        labels = batch["label"].clone()
        labels[torch.tensor([i not in self.labelled for i in ids], device=labels.device)] = -1
        ce = nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none") * (labels >= 0)
        loss = ((1 - hp.alpha) * kd + hp.alpha * ce).mean()
        n = len(ids)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train_kd", kd.mean(), on_step=True, on_epoch=False, batch_size=n)
        self.log("lr_head", self.optimizers().param_groups[-1]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_validation_epoch_end(self) -> None:
        ids, _, logits = self._gather("val")
        if len(ids) and self.trainer.state.fn == "fit":
            self.log("val_agreement", agreement(logits, np.stack([self.targets[i] for i in ids])), on_epoch=True,
                     prog_bar=True)


def agreement(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Fraction of images on which student and teacher give the same top-1 class."""
    return float(np.mean(student_logits.argmax(1) == teacher_logits.argmax(1)))


def student_overrides(config: DistillConfig) -> dict[str, int]:
    """The ViT overrides given for the student; refused in one line for a timm CNN (which has no such shape, and
    takes no ``--init``)."""
    overrides = {k: v for k, v in dict(patch_size=config.patch_size, depth=config.depth, embed_dim=config.embed_dim,
                                       num_heads=config.num_heads).items() if v is not None}
    vit = is_vit(config.student)  # an unknown name fails here, before the teacher answers
    if overrides and not vit:
        options = ", ".join(f"--{key.replace('_', '-')}" for key in overrides)
        raise UsageError(f"--student {config.student} is not a timm ViT: {options} shape a ViT student only")
    if config.init is not None and not vit:
        raise UsageError(f"--init loads ViT encoders: --student {config.student} is not a timm ViT")
    return overrides


def build_student(config: DistillConfig, num_classes: int, feature_dim: int = 0) -> Classifier:
    """The student (a timm ViT or CNN); ``feature_dim`` > 0 gives its head the teacher's feature input beside the
    image."""
    overrides = student_overrides(config)
    student = Classifier(config.student, num_classes, img_size=config.img_size, in_chans=1,
                         drop_path_rate=config.drop_path, feature_dim=feature_dim, **overrides)
    if config.init is not None:
        report = load_vit_weights(student, local_init(config.init))
        log.info("student encoder initialised from %s%s", config.init,
                 "".join(f"; {k}: {v}" for k, v in report.adapted.items()))
    return student


# --- the run -------------------------------------------------------------------------------------------------------


def distill(config: DistillConfig, echo: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Distil ``config.teacher`` into a student in ``config.out``; resumes a killed run from its last checkpoint.
    Returns the summary (also OUT/summary.json); a finished run is not trained again."""
    from plankton_cli.store.layout import checksum as file_hash  # the teacher is hashed as predict hashes a model
    from plankton_cli.store import Store
    from plankton_cli.train.training import (
        CHECKPOINT_DIR,
        SUMMARY_FILE,
        is_rank_zero,
        last_checkpoint,
        make_trainer,
        refuse_other_settings,
        resolve_dataset,
        write_run_config,
        write_summary,
    )

    from plankton_cli.train.trackers import Tracker

    student_overrides(config)  # a bad --student or ViT options on a CNN fail before any work
    tracker = Tracker.of(config, "distill")
    out = Path(config.out)
    refuse_other_settings(out, config.to_dict(), RESULT_KEYS)
    if (out / SUMMARY_FILE).exists():
        echo(f"already done ({out / SUMMARY_FILE}), not trained again")
        return json.loads((out / SUMMARY_FILE).read_text())
    teacher_weights = _weights(Path(config.teacher))
    teacher, described = load_model(teacher_weights, device="cuda" if torch.cuda.is_available() else "cpu")
    teacher_info = described.to_dict()
    store = Store(config.store)
    teacher_dataset = teacher_info.get("dataset")
    wanted = config.dataset or (teacher_dataset if teacher_dataset in store.datasets() else None)
    dataset_name = resolve_dataset(store, wanted)
    dataset_dir = store.root / dataset_name
    classes = list(teacher_info["classes"])
    ids = dataset_ids(dataset_dir, config.instruments)
    if not ids:
        raise ValueError(f"{dataset_dir} has no images to distil on")
    # Before anything is written: a store that cannot supply the teacher's features is refused right away.
    scaling, features = feature_inputs(described, store.root, dataset_name, ids, teacher_weights)
    parts = split_images(ids, teacher_weights, config.held_out, config.seed)
    if not parts.train:
        raise ValueError("every image is held out: nothing left to distil on")
    labelled = accepted_labels(dataset_dir, config.instruments, config.label_status) - set(parts.held_out)
    teacher_hash = file_hash(teacher_weights)
    if is_rank_zero():
        write_run_config(out, {**config.to_dict(), "dataset": dataset_name, "classes": classes,
                               "teacher_hash": teacher_hash})
    echo(f"{dataset_name}: {len(parts.train)} images to distil on ({len(labelled)} labelled), "
         f"{len(parts.held_out)} held out ({parts.source}); teacher {teacher_info['architecture']} "
         f"{teacher_info['img_size']} px → student {config.student} {config.img_size} px")

    cache = out / TEACHER_LOGITS
    if not is_rank_zero():
        _wait_for(cache)  # rank 0 computes the answers once; the others read them
    targets = teacher_logits(teacher, teacher_info, dataset_dir, ids, cache, batch_size=config.batch_size,
                             workers=config.workers, features=features)
    del teacher  # the cached answers are all the student needs

    pl.seed_everything(config.seed, workers=True)
    student = build_student(config, len(classes), scaling.width if scaling else 0)
    mean, std = _scalar(teacher_info["mean"]), _scalar(teacher_info["std"])
    resize = default_resize(config.img_size)

    def loader(part: list[str], train: bool) -> StoreDataLoader:
        transform = (TrainTransform if train else EvalTransform)(resize, config.img_size, mean, std)
        dataset = StoreDataset(dataset_dir, transform, classes=classes, object_ids=part, shuffle=train,
                               seed=config.seed, shuffle_window=32 if train else 1)
        return StoreDataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers,
                               persistent_workers=config.workers > 0)

    train_loader = loader(parts.train, True)
    # Per-step warmup, as finetune's module takes it (the loader's length is this rank's batches per epoch).
    warmup_steps = round(config.warmup_epochs * len(train_loader))
    module = DistillModule(student, targets, labelled, lr=config.lr, weight_decay=config.weight_decay,
                           warmup_steps=warmup_steps, temperature=config.temperature, alpha=config.alpha,
                           features=features)
    held_loader = loader(parts.held_out, False) if parts.held_out else None
    trainer = make_trainer(out, max_epochs=config.epochs, max_steps=config.max_steps,
                           accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
                           checkpoint_every=config.checkpoint_every,
                           log_every_n_steps=1 if len(train_loader) < 50 else 50,
                           tracker_logger=tracker.logger(out))
    if trainer.is_global_zero:
        tracker.log_params(out, {"config": config.to_dict()})
    resume = last_checkpoint(out)
    resumed_from = str(resume) if resume.exists() else None
    trainer.fit(module, train_loader, held_loader, ckpt_path=resumed_from)
    if held_loader is not None:
        trainer.validate(module, held_loader, verbose=False)  # the final weights on the held-out images
    if not trainer.is_global_zero:
        return {}

    info, scores = _student_info(config, module, teacher_info, teacher_weights, teacher_hash, targets, parts,
                                 dataset_dir, dataset_name, resize, scaling)
    weights = save_model(out, module.model.state_dict(), info)
    summary = {
        "out": str(out), "model": str(weights), "teacher": str(teacher_weights), "teacher_hash": teacher_hash,
        "student": config.student, "img_size": config.img_size, "dataset": dataset_name,
        "n_train": len(parts.train), "n_labelled": len(labelled), "n_held_out": len(parts.held_out),
        "held_out": parts.source, "global_step": trainer.global_step, "epochs": trainer.current_epoch,
        "resumed_from": resumed_from, **scores,
    }
    tracker.log_results(out, {"summary": summary}, step=trainer.global_step)
    write_summary(out, summary)  # last: marks the run as done
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)  # model.safetensors holds the weights
    return summary


def _student_info(
    config: DistillConfig, module: DistillModule, teacher_info: dict[str, Any], teacher_weights: Path,
    teacher_hash: str, targets: dict[str, np.ndarray], parts: Parts, dataset_dir: Path, dataset_name: str,
    resize: int, scaling: FeatureScaling | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """model.json of the student (the teacher's preprocessing at the student's size, and its feature inputs and
    scaling when it reads features) and its held-out scores."""
    ids, labels, logits = module.outputs.get("val", ([], np.zeros(0, np.int64), np.zeros((0, 0), np.float32)))
    classes = list(teacher_info["classes"])
    row = {object_id: k for k, object_id in enumerate(ids)}
    teacher = np.stack([targets[i] for i in ids]) if ids else np.zeros((0, len(classes)), np.float32)
    scores: dict[str, Any] = {"teacher_agreement": agreement(logits, teacher) if ids else None}
    label_of = _labels(dataset_dir, config)

    def labelled(part: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """True class indices of ``part``'s labelled images, with the student's and the teacher's logits."""
        keep = [i for i in part if i in row and label_of.get(i) in classes]
        rows = np.array([row[i] for i in keep], dtype=np.int64)
        truth = np.array([classes.index(label_of[i]) for i in keep], dtype=np.int64)
        return truth, logits.reshape(-1, len(classes))[rows], teacher[rows]

    truth, student_test, teacher_test = labelled(parts.test)
    if len(truth):
        for who, values in (("student", student_test), ("teacher", teacher_test)):
            result = M.classification_metrics([classes[i] for i in truth], [classes[i] for i in values.argmax(1)],
                                              classes)
            scores[f"{who}_test"] = {name: result[name] for name in M.HEADLINE_METRICS}
        scores["n_test_labelled"] = int(len(truth))
    truth, student_val, _ = labelled(parts.thresholds)
    thresholds, unreached = precision_thresholds(softmax(student_val), truth, classes, config.target_precision) \
        if len(truth) else (None, list(classes))

    inherited = {k: v for k, v in teacher_info.items()
                 if k in ("mean", "std", "pad_settings", "instruments", "dataset") or k.startswith(PREPROCESS_PREFIXES)}
    info = {
        **inherited, **module.model.arch, "dataset": dataset_name, **(scaling.info_fields() if scaling else {}),
        "classes": classes, "resize": resize, "crop": config.img_size,
        "thresholds": thresholds, "threshold_target_precision": config.target_precision,
        "thresholds_unreached": unreached,
        "teacher": str(teacher_weights), "teacher_hash": teacher_hash,
        "teacher_architecture": teacher_info["architecture"], "teacher_img_size": teacher_info["img_size"],
        "teacher_agreement": scores["teacher_agreement"], "teacher_agreement_images": len(ids),
        "teacher_agreement_on": parts.source,
        "source": f"plankton distill of {teacher_weights} into {config.out}",
    }
    return info, scores


def _labels(dataset_dir: Path, config: DistillConfig) -> dict[str, str]:
    try:
        return labelled_pool(dataset_dir, config.instruments, config.label_status or None).label_of()
    except ValueError:
        return {}


def _weights(path: Path) -> Path:
    weights = path / "model.safetensors" if path.is_dir() else path.with_suffix(".safetensors")
    if not weights.exists():
        raise FileNotFoundError(f"--teacher {path}: no {weights.name} there (give a fine-tuned model file)")
    return weights


