"""The model card (``README.md``) of a ``plankton export --format hf`` folder, from what the run wrote.

Read, when present: the model's ``model.json`` (classes, thresholds, instruments, features, provenance), the fold's
``result.json`` beside it (test scores of the model, of every head tried and of the baselines fitted on the same
labels; the label budget) and the run's ``config.json`` (beside it, or one folder up for a fine-tuning fold: the
``--init``, epochs, protocol). What is absent is left out, never guessed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plankton_cli.train.model_info import ModelInfo

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
TRAINING_KEYS = ("init", "model", "epochs", "batch_size", "lr", "layer_decay", "weight_decay", "label_smoothing",
                 "drop_path", "protocol", "folds", "seed", "teacher", "student", "temperature", "alpha", "mask_ratio")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, int | float) else "–"


def model_card(info: ModelInfo, weights: Path, timm_config: dict[str, Any]) -> str:
    result = _json(weights.parent / "result.json")
    config = _json(weights.parent / "config.json") or _json(weights.parent.parent / "config.json")
    kind = "classifier" if info.is_model else "encoder"
    shape = (f"ViT (patch {info.patch_size}, depth {info.depth}, width {info.embed_dim}, {info.num_heads} heads)"
             if info.patch_size is not None else "CNN")
    tags = ["plankton", "plankton-cli", "timm", "image-classification" if info.is_model else "image-feature-extraction"]
    lines = ["---", "library_name: timm", "tags:", *[f"- {tag}" for tag in tags],
             f"pipeline_tag: {tags[-1]}", "---", "",
             f"# Plankton {kind}: {info.architecture}", "",
             f"A {shape} `{info.architecture}` at {info.img_size} px, {info.in_chans} channel(s), exported by "
             f"plankton-cli {info.plankton_cli_version or ''} (`plankton export --format hf`) from `{weights.name}`"
             f" ({info.created or 'date unknown'}).", ""]
    if info.source:
        lines += [f"Provenance: {info.source}.", ""]

    if info.is_model:
        lines += [f"## Classes ({len(info.classes)})", ""]
        if info.thresholds:
            lines += [f"Per-class thresholds reach {_percent(info.threshold_target_precision)} % precision on "
                      "validation images; below its threshold a top class is reported as `unclassified`.", "",
                      "| class | threshold |", "|---|---|"]
            lines += [f"| {name} | {info.thresholds[name]:.3f} |" if name in info.thresholds else
                      f"| {name} | none (target precision not reached) |" for name in info.classes]
        else:
            lines += [", ".join(f"`{name}`" for name in info.classes)]
        lines.append("")

    lines += ["## Data", ""]
    lines.append(f"- Instruments: {', '.join(info.instruments) or 'not recorded'}")
    if info.pad_settings:
        lines.append(f"- Padding (per instrument): {'; '.join(info.pad_settings)}")
    if dataset := info.extra.get("dataset") or config.get("dataset"):
        lines.append(f"- Store dataset: `{dataset}`")
    if result:
        lines.append(f"- Labels: `--labels {result.get('labels', '?')}` ({result.get('protocol', '?')} protocol): "
                     f"{result.get('n_labelled', '?')} labelled objects ({result.get('n_train', '?')} training + "
                     f"{result.get('n_val', '?')} validation), tested on {result.get('n_test', '?')} held-out objects "
                     f"(fold {result.get('fold', '?')})")
    if info.features:
        lines.append(f"- Per-object features beside the image ({len(info.features)}, median/IQR-scaled, clipped to "
                     f"±{info.feature_clip:g}): {', '.join(f'`{name}`' for name in info.features)}")
    lines.append("")

    if result:
        lines += ["## Test metrics", "",
                  "In %, on the fold's held-out test objects; the baselines are fitted on the same labelled objects.",
                  "", "| | accuracy | balanced accuracy | macro-F1 |", "|---|---|---|---|"]
        rows = [(f"**this model** (head `{result.get('head', info.head_kind)}`)", result)]
        rows += [(f"head `{name}`", scores) for name, scores in sorted((result.get("heads") or {}).items())
                 if name != result.get("head")]
        rows += [(f"baseline `{name}`", scores) for name, scores in sorted((result.get("baselines") or {}).items())]
        lines += [f"| {label} | " + " | ".join(_percent(scores.get(m)) for m in METRICS) + " |" for label, scores in rows]
        lines.append("")

    lines += ["## Training", ""]
    lines.append(f"- Head: `{info.head_kind}`" if info.is_model else "- Masked-autoencoder pretraining (MAE)")
    for key in TRAINING_KEYS:
        if config.get(key) is not None:
            lines.append(f"- {key}: `{config[key]}`")
    for key, value in sorted(info.extra.items()):
        if key != "dataset" and isinstance(value, str | int | float | bool):
            lines.append(f"- {key}: `{value}`")
    lines.append("")

    mean, std = timm_config["pretrained_cfg"]["mean"], timm_config["pretrained_cfg"]["std"]
    lines += ["## Use it", "", "Download it (`hf download ORG/NAME --local-dir NAME`), then:", "", "```bash"]
    if info.is_model:
        lines += ["# classify images (folders, EcoTaxa exports, IFCB bins) with the preprocessing it was trained with",
                  "plankton predict --model NAME/classifier.safetensors SOURCE... --to csv --out predictions/"]
    if info.patch_size is not None:
        lines += ["# fine-tune its encoder on your own labels", "plankton finetune --init hf-hub:ORG/NAME --labels 5% "
                  "--out runs/ft"]
    lines += ["```", "", "The encoder alone, in timm (`model.safetensors`, no head):", "", "```python", "import timm",
              'encoder = timm.create_model("hf-hub:ORG/NAME", pretrained=True)  # pooled embedding, '
              f"{info.embed_dim} wide",
              "```", "",
              f"Its input: grey images ({info.in_chans} channel), padded to a square as above, resized to "
              f"{info.data_config()['resize']} px and centre-cropped to {info.img_size} px, scaled to 0-1, normalised "
              f"with mean {mean} and std {std}.", ""]
    return "\n".join(lines)
