"""The settings of one fine-tuning run (defaults: the paper's) and which of them a re-run must agree on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plankton_cli.train.protocol import parse_label_fraction

SCRATCH = "scratch"

# Settings that change what a fold learns: a re-run into the same OUT must agree on all of them.
RESULT_KEYS = (
    "store", "dataset", "init", "model", "img_size", "patch_size", "depth", "embed_dim", "num_heads", "labels",
    "folds", "val_fraction", "seed", "epochs", "batch_size", "lr", "weight_decay", "layer_decay", "warmup_epochs",
    "drop_path", "label_smoothing", "instruments", "label_status", "max_steps", "head", "features",
    "protocol",
)


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs; the defaults are the paper's."""

    store: Path
    init: str  # our encoder export (folder or .safetensors), a timm checkpoint file, or "scratch"
    out: Path
    dataset: str | None = None  # None: padded when the store has it, else objects
    labels: str = "all"
    # budget: --labels is every label the fold uses, validation included; paper: plus a full-size validation set.
    protocol: str = "budget"
    folds: int = 5
    fold: int | None = None  # run only this fold (SLURM arrays); None: all of them
    val_fraction: float = 0.15
    seed: int = 0
    epochs: int = 50
    # None: resolved per fold by ``recipe.resolve_recipe`` (the paper's values at paper scale, scaled below).
    batch_size: int | None = None  # per device; None: the paper's 128, at most an eighth of the labelled images
    lr: float | None = None  # absolute when given; None: the paper's 2e-3 × effective batch / 128
    weight_decay: float = 0.01
    layer_decay: float = 0.75
    warmup_epochs: float | None = None  # None: 10 % of all optimizer steps (the paper's 5 of 50 epochs)
    drop_path: float = 0.2
    label_smoothing: float = 0.1
    target_precision: float = 0.9  # per-class thresholds for predict, chosen on validation data
    workers: int = 4
    instruments: list[str] | None = None
    label_status: list[str] = field(default_factory=lambda: ["validated"])
    max_steps: int | None = None  # smoke tests: stop after this many optimizer steps per fold
    head: str = "finetune"  # finetune | linear | knn (frozen embeddings) | forest | logreg | blend (features) | auto
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
    logger: str = "csv"  # also tensorboard or mlflow (plankton_cli.train.trackers); RUN/metrics.csv is always written
    logger_uri: str | None = None  # MLflow's tracking URI

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["store"], data["out"] = str(Path(self.store).resolve()), str(Path(self.out).resolve())
        data["labels"] = str(parse_label_fraction(self.labels))
        return data
