"""`plankton export` as a library function: a model file in a form other runtimes and model hubs take.

``onnx`` → ``OUT/model.onnx`` + ``OUT/preprocessing.json``. The graph is the model as ``plankton predict`` runs it
in fp32: the normalised image (and, for a model fine-tuned with ``--features``, the standardised feature input) in,
the class probabilities out (softmax included), batch size free. Every head exports: the fitted linear, kNN,
forest, logreg and blend heads are torch modules (``fitted_heads``), so the forest's trees become gathers in the graph;
a forest, logreg or blend model, which never runs its encoder, has the feature input only. What happens before the graph (decoding, the
instrument's crop and square padding, resize and centre crop, mean/std; the features' names, median/IQR scaling,
clipping and missing indicators) and after it (per-class thresholds, ``unclassified``) is written to
``preprocessing.json``, so that another runtime reproduces predict. The export is checked by running the graph
with ONNX Runtime on the example batch when it is installed (``max_abs_diff`` in the summary).

``hf`` → a folder to upload to the Hugging Face Hub (``hf upload ORG/NAME OUT``):

- ``model.safetensors``: the encoder alone, in timm's key layout, with our encoder info in its header, so that
  ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` and ``plankton finetune --init hf-hub:ORG/NAME``
  (``plankton_cli.train.hub``) both load it;
- ``config.json``: timm's hub config (``architecture``, ``model_args`` for the shape, ``pretrained_cfg`` with the
  input size, mean and std);
- ``classifier.safetensors`` + ``classifier.json``: the whole model file, for ``plankton predict --model``;
- ``README.md``: the model card (classes, instruments, data, label fraction, test metrics beside their baselines,
  how it was trained, the commands to use it), from model.json and the run's files beside it.

A forest, logreg or blend model is refused for ``hf``: its encoder takes no part in its answers, so there is none to publish.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from plankton_cli.core.atomic import atomic_path, atomic_write_bytes
from plankton_cli.core.errors import CantCreate, UsageError
from plankton_cli.publish.model_card import model_card
from plankton_cli.train.model_info import ENCODER_FORMAT, FEATURE_ONLY_HEADS, ModelInfo
from plankton_cli.train.models import Classifier, load_model
from plankton_cli.store.layout import checksum

log = logging.getLogger("plankton.export")

FORMATS = ("onnx", "hf", "cytoprocess")
ONNX_FORMAT = "plankton-cli/onnx"
UNCLASSIFIED = "unclassified"  # predict's label for a top class below its threshold (writers.UNCLASSIFIED)
EXAMPLE_BATCH = 2  # the batch traced; any other size runs (a batch of 1 would be specialised away)


def weights_path(path: Path) -> Path:
    """A model or encoder file given as its folder, its ``.safetensors`` or its ``.json``."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("model.safetensors", "encoder.safetensors") if (path / name).exists()]
        if not found:
            raise UsageError(f"{path}: holds no model.safetensors or encoder.safetensors", path=path)
        return found[0]
    weights = path.with_suffix(".safetensors")
    if not weights.exists():
        raise UsageError(f"{weights}: no such model file", path=weights)
    return weights


def export(model: Path, fmt: str, out: Path) -> dict[str, Any]:
    """Write ``model`` (a model or, for ``hf``, an encoder file) as ``fmt`` into the folder ``out``."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    weights = weights_path(model)
    info = ModelInfo.load(weights)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CantCreate(f"{out}: cannot write the export there ({error.strerror or error})", path=out) from error
    if fmt == "cytoprocess":
        return export_cytoprocess(weights, info, out)
    return export_onnx(weights, info, out) if fmt == "onnx" else export_hf(weights, info, out)


def export_cytoprocess(weights: Path, info: ModelInfo, out: Path) -> dict[str, Any]:
    """``OUT/model.py``: CytoProcess's ``predict --model OUT/model.py::classify`` serves the model (it names the
    model file; plankton-cli must be installed where CytoProcess runs)."""
    from plankton_cli.infer.cytoprocess import write_model_py

    if not info.is_model:
        raise UsageError(f"{weights} is an encoder: CytoProcess needs a fine-tuned model (its classes are the answers)",
                         path=weights)
    model_py = write_model_py(weights, out / "model.py")
    return {"format": "cytoprocess", "model": str(weights), "model_py": str(model_py),
            "use": f"cytoprocess predict --model {model_py}::classify PROJECT"}


# --- ONNX ----------------------------------------------------------------------------------------------------------


def export_onnx(weights: Path, info: ModelInfo, out: Path) -> dict[str, Any]:
    if not info.is_model:
        raise UsageError(f"{weights} is an encoder: ONNX export takes a fine-tuned model (its classes are the output)",
                         path=weights)
    try:
        import onnxscript  # noqa: F401  - torch.onnx's exporter needs it; say so before tracing
    except ImportError as error:
        raise UsageError("ONNX export needs the onnx extra: pip install 'plankton-cli[onnx]'") from error
    model, info = load_model(weights)
    probabilities = Probabilities(model).eval()
    example = probabilities.example_inputs(EXAMPLE_BATCH)
    batch = torch.export.Dim("batch", min=1)
    target = out / "model.onnx"
    with atomic_path(target) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "# The axis name", UserWarning)  # images and features share `batch`
        program = torch.onnx.export(probabilities, (), kwargs=example, input_names=list(example),
                                    output_names=["probabilities"], dynamo=True, optimize=True, verbose=False,
                                    dynamic_shapes={name: {0: batch} for name in example})
        program.save(str(tmp))
    recipe = preprocessing(info, weights, {name: list(t.shape[1:]) for name, t in example.items()})
    atomic_write_bytes(out / "preprocessing.json", (json.dumps(recipe, indent=2) + "\n").encode())
    summary: dict[str, Any] = {"format": "onnx", "model": str(weights), "onnx": str(target),
                               "preprocessing": str(out / "preprocessing.json"), "inputs": list(example),
                               "head": info.head_kind, "classes": len(info.classes)}
    try:
        import onnxruntime
    except ImportError:
        log.info("onnxruntime is not installed: the exported graph was not run")
        return summary
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = probabilities(**example).numpy()
    got = session.run(None, {name: t.numpy() for name, t in example.items()})[0]
    summary["max_abs_diff"] = float(np.abs(got - expected).max())  # ONNX Runtime against torch, example batch
    return summary


class Probabilities(nn.Module):
    """What the ONNX graph computes: a `Classifier`'s class probabilities from the inputs it reads (a forest model
    reads no image; a model without ``--features`` no feature input)."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model
        self.reads_image = model.reads_image
        self.reads_features = model.feature_dim > 0

    def example_inputs(self, batch: int) -> dict[str, Tensor]:
        arch = self.model.arch
        seeded = torch.Generator().manual_seed(0)  # random, so that the check after the export tests something
        inputs = {}
        if self.reads_image:
            inputs["images"] = torch.randn(batch, arch["in_chans"], arch["img_size"], arch["img_size"], generator=seeded)
        if self.reads_features:
            inputs["features"] = torch.randn(batch, self.model.feature_dim, generator=seeded)
        return inputs

    def forward(self, images: Tensor | None = None, features: Tensor | None = None) -> Tensor:
        embedding = self.model.forward_features(images) if self.reads_image else None
        return torch.softmax(self.model.classify(embedding, features), dim=1)


def preprocessing(info: ModelInfo, weights: Path, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """``preprocessing.json``: everything between an image on disk and the graph's input, and after its output."""
    config = info.data_config()
    recipe: dict[str, Any] = {
        "format": ONNX_FORMAT, "format_version": 1, "graph": "model.onnx",
        "source_model": weights.name, "source_model_hash": checksum(weights),  # predict's model_hash (BLAKE2b-128)
        "inputs": {name: {"shape": ["batch", *shape], "dtype": "float32"} for name, shape in shapes.items()},
        "outputs": {"probabilities": {"shape": ["batch", len(info.classes)], "dtype": "float32",
                                      "meaning": "softmax over classes, in the order of `classes`"}},
        "classes": list(info.classes),
        "thresholds": info.thresholds,
        "threshold_target_precision": info.threshold_target_precision,
        "below_threshold_label": UNCLASSIFIED,
        "postprocess": ("label = classes[argmax(probabilities)]; when its probability is below thresholds[label] "
                        f"(a class without a threshold keeps its label), the label is '{UNCLASSIFIED}'"),
        "head": info.head_kind,
        "architecture": info.architecture,
        "instruments": list(info.instruments),
    }
    if "images" in shapes:
        mean, std = float(sum(config["mean"]) / len(config["mean"])), float(sum(config["std"]) / len(config["std"]))
        recipe["image"] = {
            "channels": info.in_chans, "size": info.img_size, "resize": config["resize"], "crop": config["crop"],
            "mean": mean, "std": std, "pad_settings": list(info.pad_settings),
            "steps": [
                "decode to 8-bit grey (16-bit images scaled to 0-255, colour converted with Pillow's 'L')",
                "pad_settings non-empty: crop the instrument's legend/banner and pad to a square with the image's "
                "own background colour and noise, as `plankton pad` with the rule of the image's instrument "
                "(plankton_cli.prepare.square_pad.pad_to_square; an instrument not listed: `plankton pad --preset auto`)",
                f"resize to {config['resize']}x{config['resize']} (aspect not kept) and take the centre "
                f"{config['crop']}x{config['crop']}, in one Pillow BILINEAR resampling of that box (antialiased)",
                f"x = (pixel / 255 - {mean}) / {std}, float32, shape (1, {info.img_size}, {info.img_size})",
            ],
        }
    if "features" in shapes:
        recipe["features"] = {
            "names": list(info.features), "center": list(info.feature_center), "scale": list(info.feature_scale),
            "clip": info.feature_clip,
            "steps": [
                "object_* and adc.* from the object's metadata (EcoTaxa, IFCB ADC; IFCB's -999 is missing); "
                "features.* measured from the pixels as `plankton features` does",
                "v = clip((value - center) / scale, -clip, clip); a missing value: v = 0",
                "input = [v for each name] + [1 if missing else 0 for each name], float32",
            ],
        }
    return recipe


# --- Hugging Face --------------------------------------------------------------------------------------------------


def export_hf(weights: Path, info: ModelInfo, out: Path) -> dict[str, Any]:
    if info.head_kind in FEATURE_ONLY_HEADS and info.is_model:
        kind = {"forest": "random-forest", "logreg": "logistic-regression",
                "blend": "blend (forest + logistic regression)"}[info.head_kind]
        raise UsageError(f"{weights}: a {kind} model answers from per-object features alone; its encoder "
                         "takes no part, so there is no encoder to publish (share the model file itself)",
                         path=weights)
    state = load_file(str(weights))
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")} \
        if info.is_model else state
    header = {"format": "pt"}
    if info.patch_size is not None:  # a ViT: our encoder info travels in the header (--init hf-hub: reads it)
        header["plankton_info"] = encoder_info(info).to_json()
    with atomic_path(out / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in encoder.items()}, str(tmp), metadata=header)
    config = timm_config(info)
    atomic_write_bytes(out / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    files = ["model.safetensors", "config.json"]
    if info.is_model:
        with atomic_path(out / "classifier.safetensors") as tmp:
            shutil.copyfile(weights, tmp)
        with atomic_path(out / "classifier.json") as tmp:
            shutil.copyfile(weights.with_suffix(".json"), tmp)
        files += ["classifier.safetensors", "classifier.json"]
    atomic_write_bytes(out / "README.md", model_card(info, weights, config).encode())
    files.append("README.md")
    return {"format": "hf", "model": str(weights), "out": str(out), "files": files,
            "upload": f"hf upload ORG/NAME {out}"}


def encoder_info(info: ModelInfo) -> ModelInfo:
    """The encoder's description (what ``encoder.json`` holds) of a model or encoder."""
    data = {k: v for k, v in info.to_dict().items()
            if k in ("architecture", "img_size", "in_chans", "embed_dim", "patch_size", "depth", "num_heads", "mean",
                     "std", "resize", "crop", "pad_settings", "instruments", "source")
            or k.startswith(("pad_", "crop_"))}
    return ModelInfo.from_dict({**data, "format": ENCODER_FORMAT}, where="encoder info")


def timm_config(info: ModelInfo) -> dict[str, Any]:
    """timm's ``config.json`` for the encoder: ``timm.create_model("hf-hub:ORG/NAME")`` builds this shape (a
    model's encoder pools the patch tokens: ``global_pool="avg"``; an MAE encoder keeps timm's default)."""
    model_args: dict[str, Any] = {"in_chans": info.in_chans}
    if info.patch_size is not None:  # a ViT's shape; a CNN takes any input size and has no such keys
        model_args.update(img_size=info.img_size, patch_size=info.patch_size, embed_dim=info.embed_dim,
                          depth=info.depth, num_heads=info.num_heads)
        if info.is_model:
            model_args["global_pool"] = "avg"
    config = info.data_config()
    return {
        "architecture": info.architecture,
        "num_classes": 0,
        "num_features": info.embed_dim,
        **({"global_pool": model_args["global_pool"]} if "global_pool" in model_args else {}),
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [info.in_chans, info.img_size, info.img_size],
            "fixed_input_size": info.patch_size is not None,
            "interpolation": "bilinear",
            "crop_pct": round(config["crop"] / config["resize"], 4),
            "crop_mode": "center",
            "mean": [float(v) for v in info.mean] * (info.in_chans // len(info.mean)),
            "std": [float(v) for v in info.std] * (info.in_chans // len(info.std)),
            "num_classes": 0,
            "classifier": "head",
            **({"first_conv": "patch_embed.proj"} if info.patch_size is not None else {}),
        },
    }
