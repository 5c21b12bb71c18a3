"""A plankton model served by DEEPaaS, the REST API of the EOSC/iMagine platform (`pip install 'plankton-cli[deepaas]'`).

DEEPaaS finds this module through its `deepaas.v2.model` entry point `plankton` and calls the functions below (its V2
model API). Which model it serves is `$PLANKTON_DEEPAAS_MODEL` (a fine-tuned `model.safetensors` or its folder)::

    PLANKTON_DEEPAAS_MODEL=runs/ft/fold-0/model.safetensors deepaas-run --listen-ip 0.0.0.0 --model-name plankton
    curl -F image=@vignette.jpg http://localhost:5000/v2/models/plankton/predict/

- `get_metadata`: the model's classes, instruments, head and input, and, when its fold's `result.json` lies beside
  it, the test metrics and the baselines fitted on the same labels.
- `predict`: one image, or a zip of images, classified exactly as `plankton predict` classifies the same files (its
  `Scorer`, the folders reader): the top-k classes with their probabilities, the label after the model's
  thresholds. An object's id (which seeds its padding noise) is `upload/<file name>` for an image and
  `<zip name>/<path in the zip>` for a zip's, what `plankton predict` gives for the same files in a folder of that
  name. An unreadable image is answered with its error, not a failed request.
- `train`: `plankton finetune` on a store on the server, with its arguments (`options` takes any more of them).
- `warm`: loads the model once in DEEPaaS's worker process; every request then reuses it.

DEEPaaS pins old web libraries (Werkzeug < 3, webargs < 6, marshmallow < 4, oslo.config < 9, stevedore < 4): keep
it in its own environment if another tool needs newer ones (MLflow's tracking server needs Werkzeug ≥ 3).
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from marshmallow import fields, validate  # DEEPaaS's own dependency: this module is imported by DEEPaaS only

from plankton_cli import __version__
from plankton_cli.core.errors import DataError
from plankton_cli.train.metrics import HEADLINE_METRICS

MODEL_VARIABLE = "PLANKTON_DEEPAAS_MODEL"
UPLOAD_COLLECTION = "upload"  # the folder name an uploaded image is classified under (its id: upload/<name>)
MAX_UNZIPPED = 4 << 30  # a zip that would unpack to more is refused (a zip bomb)


def _model_path() -> Path:
    from plankton_cli.infer.image_files import model_from_env

    return model_from_env(MODEL_VARIABLE)


def warm() -> None:
    """Load the model in this (DEEPaaS worker) process, once."""
    from plankton_cli.infer.image_files import scorer

    scorer(_model_path())


def get_metadata() -> dict[str, Any]:
    """What DEEPaaS shows at /v2/models/plankton/: ours, then the served model's (from its model.json and its fold's
    result.json; torch is not imported)."""
    from plankton_cli.train.model_info import ModelInfo

    path = _model_path()
    info = ModelInfo.load(path)
    weights = path / "model.safetensors" if path.is_dir() else path.with_suffix(".safetensors")
    model: dict[str, Any] = {
        "file": str(weights), "classes": info.classes, "instruments": info.instruments, "head": info.head_kind,
        "architecture": info.architecture, "img_size": info.img_size, "features": info.features,
        "thresholds": info.thresholds, "source": info.source, "created": info.created,
    }
    result_file = weights.parent / "result.json"  # `plankton finetune` writes it beside each fold's model
    if result_file.exists():
        result = json.loads(result_file.read_text())
        model["labels"] = result.get("labels")
        model["labelled_objects"] = result.get("n_labelled")
        model["test_objects"] = result.get("n_test")
        model["metrics"] = {key: result[key] for key in HEADLINE_METRICS if key in result}
        model["baselines"] = result.get("baselines")
    return {
        "name": "plankton",
        "description": "A plankton classifier from plankton-cli: a ViT pretrained as a masked autoencoder on "
                       "plankton images and fine-tuned with few labels.",
        "author": "plankton-cli", "license": "MIT", "version": __version__,
        "url": "https://github.com/plankton-cli/plankton-cli",
        "model": model,
    }


def get_predict_args() -> dict[str, Any]:
    return {
        "image": fields.Field(required=True, metadata={
            "description": "One image (PNG, JPEG, TIFF...) or a zip of images.", "location": "form", "type": "file"}),
        "top_k": fields.Int(load_default=3, validate=validate.Range(min=1),
                            metadata={"description": "How many classes (with their probabilities) per image."}),
        "instrument": fields.Str(load_default=None, allow_none=True, metadata={
            "description": "The images' instrument (EcoTaxa name, e.g. IFCB, UVP6): chooses the crop and padding "
                           "the model was trained with; like `plankton predict --instrument`."}),
    }


_TOP = {"label": fields.Str(required=True), "probability": fields.Float(required=True)}
_ANSWER = {
    "file": fields.Str(required=True, metadata={"description": "The file name (in the zip)."}),
    "object_id": fields.Str(required=True),
    "label": fields.Str(required=True, metadata={"description": "After the model's thresholds: 'unclassified' "
                                                                "below its class's threshold."}),
    "label_auto": fields.Str(required=True, metadata={"description": "The most probable class."}),
    "top": fields.List(fields.Nested(_TOP), required=True),
    "error": fields.Str(allow_none=True, metadata={"description": "Why an image could not be classified."}),
}
schema = {"status": fields.Str(required=True), "model": fields.Str(required=True),
          "predictions": fields.List(fields.Nested(_ANSWER), required=True)}
"""The predict response, which DEEPaaS validates every answer against and documents in its OpenAPI page."""


def predict(**kwargs: Any) -> dict[str, Any]:
    """Classify the uploaded image or zip of images (DEEPaaS passes an `UploadedFile` as `image`)."""
    from plankton_cli.infer.image_files import classify_files, scorer

    upload = kwargs["image"]
    model = scorer(_model_path())
    with tempfile.TemporaryDirectory(prefix="plankton-deepaas-") as tmp:
        folder, paths, names = _unpack(Path(upload.filename), upload.original_filename or "image", Path(tmp))
        answers = classify_files(model, paths, folder=folder, instrument=kwargs.get("instrument"))
    top_k = int(kwargs.get("top_k") or 3)
    return {"status": "OK", "model": str(model.weights), "predictions": [
        {"file": name, "object_id": a.object_id, "label": a.label, "label_auto": a.label_auto,
         "top": [{"label": c, "probability": p} for c, p in a.top(model.classes, top_k)], "error": a.error}
        for name, a in zip(names, answers)]}


def _unpack(upload: Path, original_name: str, tmp: Path) -> tuple[Path, list[Path], list[str]]:
    """The folder to classify (`upload/` for an image, the zip's name for a zip), its image files and their names
    as uploaded."""
    from plankton_plugins.folders.reader import is_image_name

    name = PurePosixPath(original_name).name or "image"
    if not zipfile.is_zipfile(upload):
        target = tmp / UPLOAD_COLLECTION / name
        target.parent.mkdir()
        shutil.copyfile(upload, target)
        return target.parent, [target], [name]
    folder = tmp / (PurePosixPath(name).stem or "zip")
    with zipfile.ZipFile(upload) as archive:
        members = [m for m in archive.infolist() if not m.is_dir() and is_image_name(PurePosixPath(m.filename).name)
                   and not any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(m.filename).parts)]
        unsafe = [m.filename for m in members if PurePosixPath(m.filename).is_absolute() or
                  ".." in PurePosixPath(m.filename).parts]
        if unsafe:
            raise DataError(f"{original_name}: refused, a path leaves the zip: {unsafe[0]}")
        if sum(m.file_size for m in members) > MAX_UNZIPPED:
            raise DataError(f"{original_name}: refused, its images unpack to more than {MAX_UNZIPPED >> 30} GiB")
        members.sort(key=lambda m: m.filename)
        for member in members:
            archive.extract(member, folder)
    return folder, [folder / m.filename for m in members], [m.filename for m in members]


def get_train_args() -> dict[str, Any]:
    def text(description: str, **kw: Any) -> Any:
        return fields.Str(metadata={"description": description}, **kw)

    return {
        "store": text("The store on the server to fine-tune on (`plankton ingest` made it).", required=True),
        "init": text("The encoder to start from: an exported encoder.safetensors on the server, or 'scratch'.",
                     required=True),
        "out": text("The run folder on the server; each fold's model goes to OUT/fold-<k>/model.safetensors.",
                    required=True),
        "labels": text("Labelled objects a fold uses: all, a share (5%) or a count per class (10/class).",
                       load_default="all"),
        "folds": fields.Int(load_default=5, metadata={"description": "Cross-validation folds."}),
        "epochs": fields.Int(load_default=50, metadata={"description": "Fine-tuning epochs."}),
        "options": text("More `plankton finetune` options, as on its command line (e.g. '--head auto').",
                        load_default=""),
    }


def train(**kwargs: Any) -> dict[str, Any]:
    """`plankton finetune` with these arguments, in this worker process; returns its summary. Serve a fold's model
    by restarting DEEPaaS with $PLANKTON_DEEPAAS_MODEL = OUT/fold-<k>/model.safetensors."""
    from plankton_cli.cli import cli

    out = Path(kwargs["out"])
    args = ["finetune", "--store", str(kwargs["store"]), "--init", str(kwargs["init"]), "--out", str(out),
            "--labels", str(kwargs.get("labels") or "all"), "--folds", str(kwargs.get("folds") or 5),
            "--epochs", str(kwargs.get("epochs") or 50), *shlex.split(kwargs.get("options") or "")]
    cli.main(args=args, prog_name="plankton", standalone_mode=False)
    summary = json.loads((out / "summary.json").read_text())
    models = sorted(str(p) for p in out.glob("fold-*/model.safetensors"))
    return {"out": str(out), "models": models, "mean_std": summary.get("mean_std"),
            "baselines": summary.get("baselines"), "labelled": summary.get("labelled")}
