"""The typed description of an exported encoder or model: what ``encoder.json`` / ``model.json`` hold.

Like timm's pretrained config (which ``resolve_data_config`` turns into the input pipeline), this one object is
everything needed to use the weights without the code that trained them: the architecture, the input (size,
channels, mean/std, resize, the per-instrument crop and padding rules), the classes and thresholds, the
per-object features and their scaling, and the provenance. Pretrain, finetune and predict write and read only
this; ``data_config()`` is what predict's preprocessing is built from.

The file stays one flat JSON object (only ``thresholds`` is a mapping), so files written before this class
existed load unchanged: scalar ``mean``/``std`` become one-element lists, and keys this class does not name
(provenance such as ``source_run`` or ``epochs``, a plug-in's own settings) are kept in ``extra`` and written
back as they were. Every problem is reported as one ``ModelInfoError`` naming the file and the key.

Torch-free: ``plankton --help`` and the store commands may import it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from plankton_cli.core.atomic import atomic_write_bytes
from plankton_cli.core.errors import UsageError

FORMAT_VERSION = 1
ENCODER_FORMAT = "plankton-cli/encoder"
MODEL_FORMAT = "plankton-cli/model"
HEADS = ("finetune", "linear", "knn", "forest", "logreg", "blend")
# Heads that read the per-object feature input alone: the encoder takes no part in their answers.
FEATURE_ONLY_HEADS = ("forest", "logreg", "blend")
ARCH_KEYS = ("architecture", "img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads")
VIT_KEYS = ("patch_size", "depth", "num_heads")  # a ViT's shape; None (absent) for a CNN


class ModelInfoError(UsageError, ValueError):
    """A model description that cannot be used (exit 2); the message names the file and the key."""


@dataclass
class ModelInfo:
    """One encoder or model description; ``format`` says which (``ENCODER_FORMAT`` or ``MODEL_FORMAT``)."""

    # architecture: Classifier / create_vit(**arch) rebuilds the encoder
    architecture: str
    img_size: int
    in_chans: int
    embed_dim: int  # a ViT's width; a CNN's embedding width (timm's head_hidden_size)
    # input
    mean: list[float]  # per channel (one value for grey inputs)
    std: list[float]
    # a ViT's shape (VIT_KEYS): all three or, for a timm CNN (a distilled student), none
    patch_size: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    resize: int | None = None  # short side before the centre crop; None: img_size
    crop: int | None = None
    pad_settings: list[str] = field(default_factory=list)  # "<instrument>: <pad settings>", see padding_rules
    instruments: list[str] = field(default_factory=list)  # of the labelled images it was fine-tuned on; []: unknown
    # model only: the head and what its outputs mean
    classes: list[str] = field(default_factory=list)
    num_classes: int | None = None
    head: str | None = None  # finetune (also None): the bottleneck; linear | knn | forest | logreg | blend: fitted_heads
    hidden_dim: int | None = None  # the bottleneck's width
    thresholds: dict[str, float] | None = None  # class -> lowest top probability that keeps target precision
    threshold_target_precision: float | None = None
    thresholds_unreached: list[str] = field(default_factory=list)
    # per-object features fed beside the image (see plankton_cli.prepare.features.inputs): names and robust scaling
    features: list[str] = field(default_factory=list)
    feature_center: list[float] = field(default_factory=list)  # median of each feature on the training images
    feature_scale: list[float] = field(default_factory=list)  # its IQR (1 where the IQR is 0)
    feature_clip: float | None = None  # standardised values are clipped to ±this
    # provenance
    format: str = ENCODER_FORMAT
    format_version: int = FORMAT_VERSION
    created: str | None = None
    plankton_cli_version: str | None = None
    source: str | None = None  # free text: run, data, epochs
    extra: dict[str, Any] = field(default_factory=dict)  # every other key of the file, written back verbatim

    # --- derived views -------------------------------------------------------------------------------------------

    @property
    def arch(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in ARCH_KEYS}

    @property
    def is_model(self) -> bool:
        return self.format == MODEL_FORMAT

    @property
    def head_kind(self) -> str:
        """The model's head: ``finetune`` (the bottleneck; files written before heads were stored say nothing)
        or a fitted ``linear``/``knn``/``forest``/``logreg`` head."""
        return self.head or "finetune"

    @property
    def feature_dim(self) -> int:
        """Width of the feature input of the head: a standardised value and a missing indicator per feature."""
        return 2 * len(self.features)

    def data_config(self) -> dict[str, Any]:
        """What the input pipeline needs (timm's ``resolve_data_config`` analogue): resize, crop, mean, std."""
        return {"resize": self.resize or self.img_size, "crop": self.crop or self.img_size,
                "mean": list(self.mean), "std": list(self.std)}

    # --- (de)serialisation ---------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model info") -> ModelInfo:
        """Validate a flat description (a parsed ``model.json``); ``where`` names it in errors."""
        if not isinstance(data, dict):
            raise ModelInfoError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        required = [key for key in ARCH_KEYS if key not in VIT_KEYS]
        if data.get("format", ENCODER_FORMAT) == ENCODER_FORMAT or any(data.get(k) is not None for k in VIT_KEYS):
            required += VIT_KEYS  # an encoder is an MAE ViT; a model file gives a ViT's shape whole or not at all
        missing = [key for key in (*required, "mean", "std") if data.get(key) is None]
        if missing:
            raise ModelInfoError(f"{where}: lacks required key(s) {', '.join(missing)}")
        values = {key: data[key] for key in known if data.get(key) is not None}
        extra = {key: value for key, value in data.items() if key not in known}
        for key, value in extra.items():
            if isinstance(value, dict):
                raise ModelInfoError(f"{where}: must be flat; {key!r} is a mapping")
        for key in ("mean", "std"):
            values[key] = values[key] if isinstance(values[key], list) else [values[key]]
        info = cls(**values, extra=extra)
        info.validate(where)
        return info

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object: set fields, then ``extra``; empty lists and None are left out."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data = {key: value for key, value in data.items() if value is not None and value != []}
        return {**data, **self.extra}

    def validate(self, where: str = "model info") -> None:
        def fail(key: str, why: str) -> None:
            raise ModelInfoError(f"{where}: {key} {why}")

        if self.format not in (ENCODER_FORMAT, MODEL_FORMAT):
            fail("format", f"is {self.format!r}, expected {ENCODER_FORMAT!r} or {MODEL_FORMAT!r}")
        if not isinstance(self.architecture, str) or not self.architecture:
            fail("architecture", "must be a timm model name")
        for key in ("img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads", "resize", "crop",
                    "num_classes", "hidden_dim"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                fail(key, f"must be a positive integer, got {value!r}")
        if not self.is_model or any(getattr(self, key) is not None for key in VIT_KEYS):
            for key in VIT_KEYS:  # an encoder is an MAE ViT; a model's ViT shape is whole or absent (a CNN)
                if getattr(self, key) is None:
                    fail(key, "is required for a ViT (patch_size, depth and num_heads go together)")
        for key in ("mean", "std", "feature_center", "feature_scale"):
            values = getattr(self, key)
            if not all(_finite(v) for v in values):
                fail(key, f"must be a list of finite numbers, got {values!r}")
        if len(self.mean) not in (1, self.in_chans) or len(self.std) != len(self.mean):
            fail("mean/std", f"need 1 or in_chans ({self.in_chans}) values each, got {self.mean!r} / {self.std!r}")
        if any(v <= 0 for v in self.std):
            fail("std", f"must be positive, got {self.std!r}")
        if not all(isinstance(r, str) for r in self.pad_settings):
            fail("pad_settings", "must be a list of '<instrument>: <settings>' lines")
        if not all(isinstance(i, str) for i in self.instruments):
            fail("instruments", "must be a list of instrument names")
        if self.is_model:
            if self.head_kind not in HEADS:
                fail("head", f"is {self.head!r}, expected one of {', '.join(HEADS)}")
            for key in ("num_classes", *(("hidden_dim",) if self.head_kind == "finetune" else ())):
                if getattr(self, key) is None:
                    fail(key, "is required in a model file")
            if len(self.classes) != self.num_classes or not all(isinstance(c, str) for c in self.classes):
                fail("classes", f"must list exactly num_classes ({self.num_classes}) names")
        if self.thresholds is not None:
            if not isinstance(self.thresholds, dict) or not all(_finite(v) for v in self.thresholds.values()):
                fail("thresholds", "must map class names to probabilities")
            if unknown := sorted(set(self.thresholds) - set(self.classes)):
                fail("thresholds", f"name classes the model does not have: {', '.join(unknown)}")
        n = len(self.features)
        if len(self.feature_center) != n or len(self.feature_scale) != n:
            fail("feature_center/feature_scale", f"need one value per feature ({n}), got "
                 f"{len(self.feature_center)} and {len(self.feature_scale)}")
        if any(v <= 0 for v in self.feature_scale):
            fail("feature_scale", "must be positive")
        if n and not (_finite(self.feature_clip) and self.feature_clip > 0):
            fail("feature_clip", f"must be a positive number when features are used, got {self.feature_clip!r}")

    @classmethod
    def load(cls, path: str | Path) -> ModelInfo:
        """The description of an export: ``path`` is its folder, its ``.safetensors`` or its ``.json``.

        Reads the JSON without importing torch (summaries and warnings need no model); only an export without
        its JSON has the description read from the safetensors header."""
        path = Path(path)
        json_path = _json_path(path)
        try:
            if json_path.suffix == ".json" and json_path.exists():
                data = json.loads(json_path.read_text(encoding="utf-8"))
            else:
                data = load_encoder_info(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ModelInfoError(f"{json_path}: not valid JSON ({error})", path=json_path) from error
        return cls.from_dict(data, where=str(json_path))

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (``path`` is the ``.json`` file); returns it."""
        path = Path(path)
        self.validate(str(path))
        atomic_write_bytes(path, (self.to_json() + "\n").encode())
        return path

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)  # fails early on values JSON cannot hold


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _json_path(path: Path) -> Path:
    if path.is_dir():
        return next((p for p in (path / "encoder.json", path / "model.json") if p.exists()), path)
    return path.with_suffix(".json")


def load_encoder_info(path: Path) -> dict[str, Any]:
    """The raw info of an export: its ``.json``, else the safetensors header; ``path`` may be
    the folder, the ``.safetensors`` or the ``.json``. ``ModelInfo.load`` validates and types it."""
    from safetensors import safe_open  # only for an export without its JSON

    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "encoder.json", path / "model.json") if p.exists()]
        if not found:
            raise FileNotFoundError(f"no encoder.json or model.json in {path}")
        path = found[0]
    json_path = path.with_suffix(".json")
    if json_path.exists():
        with _model_file(json_path):
            info = json.loads(json_path.read_text(encoding="utf-8"))
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
            return info
    weights = path.with_suffix(".safetensors")
    if weights.exists():
        with _model_file(weights), safe_open(str(weights), framework="pt") as f:
            text = (f.metadata() or {}).get("plankton_info")
        if text:
            with _model_file(weights):
                return json.loads(text)
    raise FileNotFoundError(f"no export info next to {path}")


class ModelFileError(UsageError, ValueError):
    """A model or encoder file that cannot be read (truncated, not safetensors, wrong JSON): exit 2, naming it."""


@contextmanager
def _model_file(path: Path) -> Iterator[None]:
    """Turn whatever a broken weights or info file makes its parser raise into one `ModelFileError` naming it."""
    try:
        yield
    except (ModelFileError, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors, json, torch and pickle each raise their own types
        raise ModelFileError(f"{path}: not a readable model file ({type(exc).__name__}: {exc})", path=path) from exc
