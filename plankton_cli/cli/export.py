"""`plankton export`."""

from __future__ import annotations

from pathlib import Path

import click

from plankton_cli.cli.options import Command, json_option
from plankton_cli.cli.output import emit_json

FORMATS = ("onnx", "hf")  # plankton_cli.publish.export.FORMATS, spelled out so that --help does not import torch


@click.command(cls=Command, epilog="""\b
Examples:
  plankton export runs/ft-5/fold-0/model.safetensors --format onnx onnx/
  plankton export runs/ft-5/fold-0 --format hf hub/plankton-uvp6-vit-s && hf upload ORG/NAME hub/plankton-uvp6-vit-s
  plankton export runs/mae/encoder.safetensors --format hf hub/plankton-mae-vit-b   # an encoder alone

\b
onnx: OUT/model.onnx (images and, for a model trained with --features, features in;
class probabilities out; any batch size) and OUT/preprocessing.json (size, resize, crop,
mean/std, padding per instrument, feature names and median/IQR scaling, classes, thresholds):
what another runtime needs to reproduce `plankton predict`. Every head exports (a forest
model has the feature input only). Needs the onnx extra (pip install 'plankton-cli[onnx]').

\b
hf: a folder to upload to the Hugging Face Hub: model.safetensors + config.json (the encoder,
as timm.create_model("hf-hub:ORG/NAME") and `--init hf-hub:ORG/NAME` load it),
classifier.safetensors + classifier.json (the whole model, for `plankton predict --model`)
and README.md (the model card: classes, instruments, data, labels, test metrics beside the
baselines, training, how to use it). A forest model has no encoder to publish: refused.

Exit codes: 0 written, 2 bad MODEL or format (named), 73 OUT cannot be written.""")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="onnx or hf (Hugging Face Hub folder).")
@json_option
def export(model: Path, out: Path, fmt: str, as_json: bool) -> None:
    """Write a model as ONNX, or as a Hugging Face Hub folder with its model card.

    MODEL is a fine-tuned or distilled model (model.safetensors, its .json or its folder); for
    hf, an encoder exported by `plankton pretrain` too.
    """
    from plankton_cli.publish.export import export as run_export

    summary = run_export(model, fmt, out)
    if as_json:
        emit_json(summary)
        return
    if fmt == "onnx":
        check = (f"; ONNX Runtime agrees with torch to {summary['max_abs_diff']:.1e}" if "max_abs_diff" in summary
                 else "")
        click.echo(f"wrote {summary['onnx']} (inputs: {', '.join(summary['inputs'])}; {summary['classes']} classes"
                   f"{check}) and {summary['preprocessing']}")
    else:
        click.echo(f"wrote {', '.join(summary['files'])} into {summary['out']}; upload with: {summary['upload']}")
