"""`plankton export --format onnx`: ONNX Runtime, given only model.onnx and the recipe in preprocessing.json, gives the
probabilities `plankton predict` gives (top-1 agreement ≥ 99.5 %, every probability within 1e-4): on the bundled
images with a fine-tuned head, a forest head and a logreg head (all with feature inputs) always, on the 1,250 UVP6
vignettes when that data set is here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pyarrow.parquet as pq
import pytest

from conftest import BUNDLED, plankton, shared_data
from plankton_cli.prepare.data.transforms import EvalTransform
from plankton_cli.prepare.features.dataset import compute_features
from plankton_cli.prepare.features.inputs import PREFIX, image_features, metadata_features
from plankton_cli.train.finetune import FinetuneConfig, finetune
from plankton_cli.ingest import ingest
from plankton_cli.infer.predict import predict
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store

TINY = dict(model="vit_small_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)


def trained_store(work: Path, images: Path, instrument: str | None, heads: tuple[str, ...], epochs: int) -> tuple[Store, dict[str, Path]]:
    """A store of ``images`` with their morphometrics, and per head a tiny model fine-tuned on it with them."""
    store = Store(work / "store")
    ingest(store, [images], options=ReadOptions(instrument=instrument))
    compute_features(store)
    models = {}
    for head in heads:
        config = FinetuneConfig(store=store.root, init="scratch", out=work / head, **TINY, labels="all", folds=1,
                                epochs=epochs, batch_size=32, warmup_epochs=1, workers=0, drop_path=0.0, head=head,
                                features="auto")
        finetune(config, echo=lambda text: None)
        models[head] = work / head / "fold-0" / "model.safetensors"
    return store, models


def onnx_probabilities(export: Path, store: Store) -> dict[str, np.ndarray]:
    """Every stored object through the exported graph, its inputs made as preprocessing.json says."""
    recipe = json.loads((export / "preprocessing.json").read_text())
    session = onnxruntime.InferenceSession(str(export / recipe["graph"]), providers=["CPUExecutionProvider"])
    table = store.dataset("objects").to_table(columns=["object_id", "image", "instrument", "pixel_size_um",
                                                       "metadata"]).to_pylist()
    feeds: dict[str, list[np.ndarray]] = {name: [] for name in recipe["inputs"]}
    if image := recipe.get("image"):
        assert not image["pad_settings"]  # an unpadded dataset: resize, centre crop, normalise
        transform = EvalTransform(resize=image["resize"], crop=image["crop"], mean=image["mean"], std=image["std"])
    for row in table:
        data = row["image"]["bytes"]
        if image:
            feeds["images"].append(transform(data).numpy())
        if features := recipe.get("features"):
            values = metadata_features(row["metadata"] or [])
            if any(name.startswith(PREFIX) for name in features["names"]):
                values.update(image_features(data, row["instrument"], row["pixel_size_um"]))
            raw = np.array([values.get(name, np.nan) for name in features["names"]])
            scaled = np.clip((raw - features["center"]) / np.array(features["scale"]), -features["clip"],
                             features["clip"])
            feeds["features"].append(np.concatenate([np.where(np.isnan(raw), 0.0, scaled), np.isnan(raw)]))
    inputs = {name: np.stack(rows).astype(np.float32) for name, rows in feeds.items()}
    probabilities = np.concatenate([session.run(None, {name: array[i:i + 256] for name, array in inputs.items()})[0]
                                    for i in range(0, len(table), 256)])
    return {row["object_id"]: p for row, p in zip(table, probabilities)}


def predicted_probabilities(model: Path, store: Store, out: Path) -> dict[str, np.ndarray]:
    """`plankton predict` in fp32 (the graph's arithmetic: not the int8 CPU path a VNNI CPU would take)."""
    predict(model, store=store, to=["parquet"], out_dir=out, force=True, cpu_path="fp32")
    table = pq.read_table(out / "predictions.parquet", columns=["object_id", "probabilities"]).to_pydict()
    return {oid: np.asarray(p, np.float32) for oid, p in zip(table["object_id"], table["probabilities"])}


def assert_onnx_reproduces_predict(model: Path, store: Store, work: Path, inputs: list[str]) -> None:
    proc = plankton("export", str(model), "--format", "onnx", str(work / "onnx"), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["inputs"] == inputs and summary["max_abs_diff"] < 1e-5
    recipe = json.loads((work / "onnx" / "preprocessing.json").read_text())
    info = json.loads(model.with_suffix(".json").read_text())
    assert recipe["classes"] == info["classes"] and recipe["thresholds"] == info.get("thresholds")
    assert recipe["features"]["names"] == info["features"]

    ours = onnx_probabilities(work / "onnx", store)
    theirs = predicted_probabilities(model, store, work / "predict")
    assert ours.keys() == theirs.keys()
    ids = sorted(ours)
    a, b = np.stack([ours[i] for i in ids]), np.stack([theirs[i] for i in ids])
    agreement = float((a.argmax(1) == b.argmax(1)).mean())
    assert agreement >= 0.995, f"top-1 agreement {agreement:.2%}"
    difference = float(np.abs(a - b).max())
    assert difference <= 1e-4, difference
    assert len(set(b.argmax(1))) > 1  # a trained model, not one constant answer
    print(f"{model}: {len(ids)} objects, top-1 agreement {agreement:.4%}, largest probability difference "
          f"{difference:.2e}")  # shown with -s


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("export-demo")
    return trained_store(work, BUNDLED / "planktonclass-demo" / "demo-images", None, ("finetune", "forest", "logreg", "blend"),
                         epochs=3)


def test_onnx_of_a_fine_tuned_model_with_features_reproduces_predict(demo, tmp_path):
    store, models = demo
    assert_onnx_reproduces_predict(models["finetune"], store, tmp_path, ["images", "features"])


@pytest.mark.parametrize("head, kind", [("forest", "random-forest"), ("logreg", "logistic-regression"),
                                        ("blend", "blend (forest + logistic regression)")])
def test_onnx_of_a_features_only_model_reads_the_features_alone(demo, tmp_path, head, kind):
    store, models = demo
    assert_onnx_reproduces_predict(models[head], store, tmp_path, ["features"])
    refused = plankton("export", str(models[head]), "--format", "hf", str(tmp_path / "hf"))
    assert refused.returncode == 2 and f"{kind} model" in refused.stderr and "Traceback" not in refused.stderr


def test_export_refuses_an_encoder_as_onnx_and_an_unwritable_out(demo, tmp_path):
    from plankton_cli.train.models.checkpoints import save_encoder
    from plankton_cli.train.models.mae import create_vit, vit_arch

    vit = create_vit("vit_small_patch16_224", img_size=32, num_classes=0, patch_size=8, depth=2, embed_dim=64,
                     num_heads=2)
    encoder = save_encoder(tmp_path / "mae", vit.state_dict(), {**vit_arch(vit, "vit_small_patch16_224"),
                                                                 "mean": [0.5], "std": [0.25]})
    proc = plankton("export", str(encoder), "--format", "onnx", str(tmp_path / "onnx"))
    assert proc.returncode == 2 and "is an encoder" in proc.stderr
    hf = plankton("export", str(encoder), "--format", "hf", str(tmp_path / "hf"), "--json")
    assert hf.returncode == 0, hf.stderr
    assert "classifier.safetensors" not in json.loads(hf.stdout)["files"]
    (tmp_path / "file").write_text("")
    blocked = plankton("export", str(encoder), "--format", "hf", str(tmp_path / "file" / "out"))
    assert blocked.returncode == 73, blocked.stderr


@pytest.mark.slow
def test_onnx_reproduces_predict_on_the_uvp6_vignettes(tmp_path_factory):
    images = shared_data("images", "uvp6-vignettes")
    work = tmp_path_factory.mktemp("export-uvp6")
    store, models = trained_store(work, images, "UVP6", ("finetune",), epochs=4)
    assert_onnx_reproduces_predict(models["finetune"], store, work, ["images", "features"])
