"""The classifier a run fine-tunes (built from an encoder export, a foreign checkpoint or scratch), its
LightningModule, and the per-class precision thresholds chosen on validation data."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor, nn

from plankton_cli.train import metrics as M
from plankton_cli.core.errors import UsageError
from plankton_cli.train.finetune.config import SCRATCH, FinetuneConfig
from plankton_cli.train.hub import is_hub_name, resolve
from plankton_cli.train.models import Classifier, is_vit, layer_decay_param_groups, load_vit_weights, warmup_cosine_scheduler
from plankton_cli.train.model_info import ModelInfo

log = logging.getLogger("plankton.finetune")


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

    path = resolve(config.init).path if is_hub_name(config.init) else Path(config.init)
    if not path.exists():
        raise FileNotFoundError(f"--init {path} does not exist (give an encoder export, a checkpoint file or 'scratch')")
    info = _export_info(path)
    if info is None and not config.model and is_hub_name(config.init):  # a timm repository: its config.json
        encoder = resolve(config.init)
        if encoder.architecture:
            overrides = {k: v if v is not None else encoder.model_args.get(k) for k, v in overrides.items()}
            config = replace(config, model=encoder.architecture,
                             img_size=config.img_size or encoder.model_args.get("img_size"))
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
    inherited["source"] = f"fine-tuned from {config.init}"
    return model, inherited


PREPROCESS_PREFIXES = ("pad_", "crop_")


def require_vit(config: FinetuneConfig) -> None:
    """Fine-tuning starts from MAE encoders with layer decay, both ViT-only: a timm CNN (``--model``, or the
    architecture of an ``--init`` model file such as a distilled CNN student) is refused in one line."""
    if is_hub_name(config.init):
        encoder = resolve(config.init)
        info, hub_architecture = _export_info(encoder.path), encoder.architecture
    else:
        path = Path(config.init)
        info = _export_info(path) if config.init != SCRATCH and path.exists() else None
        hub_architecture = None
    architecture = info.architecture if info is not None else config.model or hub_architecture
    if architecture and not is_vit(architecture):
        raise UsageError(f"{architecture} is not a timm ViT: finetune takes ViTs only (MAE encoders, layer decay); "
                         "a timm CNN can be a `plankton distill --student`")


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
    group's own lr, see ``models.layer_decay_param_groups``), per-step warmup (``warmup_steps``, from the
    resolved recipe) + cosine.

    Logs ``train_loss``, ``lr_block0`` and ``lr_head`` every step (so the decay can be checked in metrics.csv),
    and per epoch ``val_loss``, ``val_macro_f1``, ``val_accuracy``, computed over the whole validation part
    gathered from every rank. After ``validate``/``test``, ``outputs[stage]`` holds the gathered
    ``(object_ids, labels, logits)``.
    """

    def __init__(
        self, model: Classifier, *, lr: float = 2e-3, weight_decay: float = 0.01, layer_decay: float = 0.75,
        warmup_steps: int = 0, label_smoothing: float = 0.1, features: dict[str, np.ndarray] | None = None,
        schedule_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.features = features  # object_id -> the model's standardised feature input (None: image only)
        # The cosine schedule's length when training stops before its end (a refit at the chosen epoch: the lr
        # then follows the schedule that epoch was chosen on). None: the trainer's steps.
        self.schedule_steps = schedule_steps
        self.save_hyperparameters(ignore=["model", "features", "schedule_steps"])
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

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW's parameter groups: layer-wise lr decay over the ViT."""
        hp = self.hparams
        return layer_decay_param_groups(self.model, hp.lr, hp.weight_decay, hp.layer_decay)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.param_groups(), lr=hp.lr)
        total_steps = max(1, int(self.schedule_steps or self.trainer.estimated_stepping_batches))
        scheduler = warmup_cosine_scheduler(optimizer, total_steps, min(hp.warmup_steps, total_steps))
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
