"""Safe export and loading of pretrained encoders and fine-tuned classifiers.

Safety: weights are written as safetensors; torch files are read with ``weights_only=True``
(no arbitrary unpickling); nothing is ever downloaded. Every export is a pair of files
written atomically (temporary file + ``os.replace``), weights first:

- ``encoder.safetensors`` + ``encoder.json``: a plain timm ViT state dict (MAE encoder);
  loads strictly into ``create_vit(**arch, num_classes=0)``.
- ``model.safetensors`` + ``model.json``: a fine-tuned :class:`Classifier` (``encoder.*``,
  ``head.*``; the encoder a timm ViT or, for a distilled student, a timm CNN); ``load_model`` rebuilds and
  loads it strictly.

The JSON is one flat object (values are scalars or lists of scalars; only ``thresholds``
may be a mapping), typed and validated by :class:`plankton_cli.train.model_info.ModelInfo`. The info
also travels inside the safetensors header metadata.

========================  =========================================================
key                       meaning
========================  =========================================================
format                    "plankton-cli/encoder" or "plankton-cli/model" (set here)
format_version            1 (set here)
created                   ISO-8601 UTC time of the export (set here)
plankton_cli_version      package version that wrote it (set here)
architecture              timm model name, e.g. "vit_large_patch16_224"   (required)
img_size                  square input side in pixels                        (required)
in_chans                  input channels, 1 for grayscale                    (required)
embed_dim                 a ViT's width; a CNN's embedding width             (required)
patch_size, depth,        resolved ViT shape, override the timm defaults     (required for a ViT;
num_heads                 absent for a timm CNN, e.g. "mobilenetv3_small_100")
mean, std                 per-channel normalisation of the input tensors     (required)
pad_*, resize, crop_*     preprocessing settings, as the data module names them (optional)
source                    free-text provenance: run, data set, epochs, ...   (optional)
classes                   model only: list of class names, index = logit     (required)
num_classes               model only: number of classes                      (required)
head                      model only: finetune (bottleneck, default), linear, knn or forest
                          (``fitted_heads``: their tensors are the model's ``head.*``)
hidden_dim                model only: the bottleneck's width                 (required for finetune)
thresholds                model only: null or {class name: min probability}  (optional)
features                  model only: per-object feature names fed to the head (optional)
feature_center/_scale     their median and IQR on the training images; feature_clip the clip
other keys                provenance (source_run, epochs, ...), kept verbatim in ``ModelInfo.extra``
========================  =========================================================

``load_vit_weights`` adapts foreign checkpoints (timm, MAE repository, lightly/Lightning)
to a target ViT; see its docstring for what it changes.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import adapt_input_conv
from torch import Tensor, nn

from plankton_cli.core.atomic import atomic_path
from plankton_cli.train.models.classifier import Classifier, find_vit, is_vit
from plankton_cli.train.models.fitted_heads import head_from_state
from plankton_cli.train.model_info import (  # re-exported: the readers of an export's info live with its format
    ENCODER_FORMAT,
    FORMAT_VERSION,
    MODEL_FORMAT,
    ModelFileError,
    ModelInfo,
    _model_file,
    load_encoder_info,
)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")

# Checkpoint wrappers seen in the wild: Lightning ("state_dict"), MAE/timm train scripts
# ("model"), DeepSpeed/DDP dumps ("module").
WRAPPER_KEYS = ("state_dict", "model", "module")
PATCH_WEIGHT = "patch_embed.proj.weight"

# Plain-data classes found next to the weights, allowed for ``weights_only=True`` loading:
# MAE's training checkpoints store ``args`` (a Namespace), Lightning hyper-parameters often
# hold paths. Any other non-tensor object makes the load fail instead of running code.
INERT_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


# --------------------------------------------------------------------------- writing


def save_encoder(path: Path, state_dict: dict[str, Tensor], info: ModelInfo | dict[str, Any]) -> Path:
    """Write ``encoder.safetensors`` + ``encoder.json``; ``path`` is that file or its folder."""
    return _save_pair(_weights_path(Path(path), "encoder"), state_dict, info, ENCODER_FORMAT)


def save_model(path: Path, state_dict: dict[str, Tensor], info: ModelInfo | dict[str, Any]) -> Path:
    """Write ``model.safetensors`` + ``model.json`` for a fine-tuned :class:`Classifier`.

    ``info``: a :class:`ModelInfo` (or its flat dict: ``classifier.arch`` merged with ``classes``, ``mean``,
    ``std`` and the preprocessing settings).
    """
    weights = _weights_path(Path(path), "model")
    info = _as_info(info, MODEL_FORMAT, weights)
    logits = state_dict.get("head.3.weight")  # Classifier's last layer
    if logits is not None and logits.shape[0] != info.num_classes:
        raise ValueError(f"the head has {logits.shape[0]} outputs but info lists {info.num_classes} classes")
    return _save_pair(weights, state_dict, info, MODEL_FORMAT)


def _as_info(info: ModelInfo | dict[str, Any], fmt: str, weights: Path) -> ModelInfo:
    """A validated :class:`ModelInfo` of format ``fmt``, stamped with the time and the package version."""
    data = info.to_dict() if isinstance(info, ModelInfo) else dict(info)
    data.update(format=fmt, format_version=FORMAT_VERSION, plankton_cli_version=_package_version(),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return ModelInfo.from_dict(data, where=f"info for {weights}")


def _save_pair(weights: Path, state_dict: dict[str, Tensor], info: ModelInfo | dict[str, Any], fmt: str) -> Path:
    info = _as_info(info, fmt, weights)
    text = info.to_json()
    # Cloned and contiguous: safetensors refuses views and tensors sharing storage.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    weights.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "plankton_info": text})
    info.save(weights.with_suffix(".json"))
    return weights


def _weights_path(path: Path, stem: str) -> Path:
    return path if path.suffix == ".safetensors" else path / f"{stem}.safetensors"


def _package_version() -> str:
    try:
        return version("plankton-cli")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- reading


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[Classifier, ModelInfo]:
    """Rebuild a fine-tuned :class:`Classifier` from ``model.safetensors`` + ``model.json``
    (strict load, eval mode, drop path off)."""
    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path.with_suffix(".safetensors")
    info = ModelInfo.load(weights)
    if not info.is_model:
        raise ModelFileError(f"{weights} is a {info.format!r} export, not a fine-tuned model", path=weights)
    with _model_file(weights):
        state = load_file(str(weights))
    with _model_file(weights.with_suffix(".json")):
        model = _classifier(info, state)
    with _model_file(weights):
        model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


def _classifier(info: ModelInfo, state: dict[str, Tensor]) -> Classifier:
    # A ViT is rebuilt with its recorded shape; a CNN (no ViT keys) from its timm name alone.
    vit_shape = info.patch_size is not None
    if not vit_shape and is_vit(info.architecture):
        raise ModelFileError(f"{info.architecture} is a ViT: the model file lacks patch_size, depth and num_heads")
    shape = dict(patch_size=info.patch_size, embed_dim=info.embed_dim, depth=info.depth,
                 num_heads=info.num_heads) if vit_shape else {}
    model = Classifier(
        info.architecture,
        info.num_classes,
        img_size=info.img_size,
        in_chans=info.in_chans,
        **shape,
        hidden_dim=info.hidden_dim or 512,
        feature_dim=info.feature_dim,
        drop_path_rate=0.0,
    )
    if info.head_kind != "finetune":  # a fitted head's shapes (training images, tree sizes) are its tensors'
        model.use_fitted_head(head_from_state(info.head_kind, {k.removeprefix("head."): v for k, v in state.items()
                                                               if k.startswith("head.")}))
    return model


@dataclass
class LoadReport:
    """What ``load_vit_weights`` did; ``missing`` keys kept their fresh initialisation."""

    path: Path
    prefix: str  # key prefix stripped from the checkpoint ('' for plain timm)
    missing: list[str] = field(default_factory=list)  # in the model, not loaded
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not used
    adapted: dict[str, str] = field(default_factory=dict)  # model key -> what was changed
    info: dict[str, Any] | None = None  # our export's info, when there is one


def load_vit_weights(
    model: nn.Module,
    path: Path,
    *,
    strict_head: bool = False,
    map_norm_to_fc_norm: bool = False,
) -> LoadReport:
    """Load a local ViT checkpoint into the first timm ViT inside ``model``, adapting it.

    Accepts our ``encoder``/``model`` exports, timm checkpoints (``.safetensors``, or
    ``.pth``/``.pt``/``.bin`` as a plain state dict or under ``model``/``state_dict``/
    ``module``), MAE repository checkpoints (decoder keys ignored) and lightly/Lightning
    checkpoints (the ``…backbone.vit.``/``vit.``/``encoder.`` prefix in front of
    ``patch_embed`` is found and stripped).

    Adaptations: ``pos_embed`` resampled to the model's grid (bicubic, no antialias, as
    MAE fine-tuning); the patch-embedding kernel resampled to another patch size; RGB
    kernels summed for a 1-channel model (1-channel kernels repeated and divided by 3 the
    other way, timm's ``adapt_input_conv``).

    Norms: an MAE encoder has ``norm.*``, an average-pool classifier wants ``fc_norm.*``.
    By default ``fc_norm`` keeps its fresh init (weight 1, bias 0) and ``norm.*`` is
    reported unexpected, which is what MAE fine-tuning does; ``map_norm_to_fc_norm=True``
    copies ``norm`` into ``fc_norm`` instead.

    Only ``head.*`` and ``fc_norm.*`` may stay missing (none with ``strict_head``); a head
    of another shape is skipped (an error with ``strict_head``). Any other missing key or
    shape mismatch raises ``ValueError``: a wrong file must not load silently.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; only local files are loaded (hub names are never downloaded)"
        )
    state, info = _read_state_dict(path)
    prefix = _vit_prefix(state, path)
    report = LoadReport(path=path, prefix=prefix, info=info)
    report.unexpected = [k for k in state if not k.startswith(prefix)]
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    _, vit = find_vit(model)
    target = vit.state_dict()
    state = _adapt(state, vit, report)

    if map_norm_to_fc_norm and "fc_norm.weight" in target and "norm.weight" not in target:
        for name in ("weight", "bias"):
            if f"norm.{name}" in state and f"fc_norm.{name}" not in state:
                state[f"fc_norm.{name}"] = state.pop(f"norm.{name}")
                report.adapted[f"fc_norm.{name}"] = f"copied from norm.{name}"

    loadable: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif value.shape != target[key].shape:
            if key.startswith("head.") and not strict_head:
                report.unexpected.append(key)  # e.g. an ImageNet-1k head: start a fresh one
            else:
                have, need = tuple(value.shape), tuple(target[key].shape)
                raise ValueError(f"{path}: {key} has shape {have}, the model needs {need}")
        else:
            loadable[key] = value
    report.missing = [k for k in target if k not in loadable]
    allowed = () if strict_head else ("head.", "fc_norm.")
    fatal = [k for k in report.missing if not k.startswith(allowed)]
    if fatal:
        raise ValueError(f"{path} lacks weights the model needs: {fatal[:8]}{' …' if len(fatal) > 8 else ''}")
    vit.load_state_dict(loadable, strict=False)
    return report


def _read_state_dict(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Tensors of a checkpoint file (or export folder), unwrapped; plus our export info."""
    if path.is_dir():
        candidates = [path / "encoder.safetensors", path / "model.safetensors"]
        path = next((p for p in candidates if p.exists()), candidates[0])
    elif path.suffix == ".json":
        path = path.with_suffix(".safetensors")

    info = None
    if path.suffix == ".safetensors":
        with _model_file(path):
            state: Any = load_file(str(path), device="cpu")
        try:
            info = load_encoder_info(path)
        except FileNotFoundError:
            pass  # a timm .safetensors: no info, which is fine
    elif path.name.endswith(TORCH_SUFFIXES):
        with _model_file(path), torch.serialization.safe_globals(INERT_GLOBALS):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as error:
                raise ModelFileError(
                    f"{path} holds Python objects besides tensors and is not loaded (weights_only=True); "
                    "export its weights to safetensors first", path=path
                ) from error
    else:
        raise ModelFileError(f"{path}: unknown checkpoint type (use .safetensors, .pth, .pt, .bin or .ckpt)", path=path)

    unwrapped = True
    while unwrapped and isinstance(state, dict):
        unwrapped = False
        for key in WRAPPER_KEYS:
            if isinstance(state.get(key), dict) and not any(k.endswith(PATCH_WEIGHT) for k in state):
                state, unwrapped = state[key], True
                break
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}, info


def _vit_prefix(state: dict[str, Tensor], path: Path) -> str:
    """Prefix in front of the encoder's keys: '' (timm, MAE), 'vit.', 'backbone.vit.', …"""
    prefixes = [k[: -len(PATCH_WEIGHT)] for k in state if k.endswith(PATCH_WEIGHT)]
    if not prefixes:
        raise ValueError(f"{path} holds no ViT: no '{PATCH_WEIGHT}' key")
    # A Lightning module may hold a decoder, an EMA or teacher copy too: prefer the plain encoder.
    side_copies = ("decoder", "teacher", "ema", "momentum")
    return min(prefixes, key=lambda p: (any(s in p for s in side_copies), len(p)))


def _adapt(state: dict[str, Tensor], vit: nn.Module, report: LoadReport) -> dict[str, Tensor]:
    """Resample the patch kernel and position embedding of ``state`` to fit ``vit``."""
    state = dict(state)
    weight = state.get(PATCH_WEIGHT)
    if weight is not None:
        out_ch, in_ch, kh, kw = vit.patch_embed.proj.weight.shape
        if weight.ndim == 4 and weight.shape[-2:] != (kh, kw):
            report.adapted[PATCH_WEIGHT] = f"kernel resampled {tuple(weight.shape[-2:])} -> {(kh, kw)}"
            weight = resample_patch_embed(weight, [kh, kw], interpolation="bicubic", antialias=True)
        if weight.ndim == 4 and weight.shape[1] != in_ch:
            note = f"channels {weight.shape[1]} -> {in_ch} ({'summed' if in_ch == 1 else 'repeated, rescaled'})"
            report.adapted[PATCH_WEIGHT] = "; ".join(filter(None, [report.adapted.get(PATCH_WEIGHT), note]))
            weight = adapt_input_conv(in_ch, weight, base_chans=weight.shape[1])
        state[PATCH_WEIGHT] = weight

    pos = state.get("pos_embed")
    if pos is not None and vit.pos_embed is not None and pos.shape != vit.pos_embed.shape:
        prefix_tokens = 0 if vit.no_embed_class else vit.num_prefix_tokens
        old = pos.shape[1] - prefix_tokens
        side = int(round(old**0.5))
        if side * side != old:
            raise ValueError(f"{report.path}: pos_embed of {old} patches is not a square grid")
        new = list(vit.patch_embed.grid_size)
        state["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=new, old_size=[side, side], num_prefix_tokens=prefix_tokens,
            interpolation="bicubic", antialias=False,  # MAE util/pos_embed.py
        )
        report.adapted["pos_embed"] = f"resampled {side}x{side} -> {new[0]}x{new[1]}"
    return state
