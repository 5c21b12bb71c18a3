"""`plankton distill`: a tiny fine-tuned teacher into a tinier student on real images, the student in predict and
every writer, held-out bookkeeping, resuming after SIGKILL, and teachers that read per-object features."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from conftest import BUNDLED, plankton, shared_data
from plankton_cli.cli import cli
from plankton_cli.prepare.features.inputs import FeatureScaling, feature_matrix
from plankton_cli.train.model_info import ModelInfo
from plankton_cli.train.models import load_model
from plankton_cli.infer.predict import FeatureInputs, _store_items, file_hash, predict
from plankton_cli.train.protocol import load_split
from plankton_cli.store import Store

DEMO_IMAGES = BUNDLED / "planktonclass-demo" / "demo-images"  # Apache-2.0, 105 images in 6 classes
TEACHER = ["--init", "scratch", "--model", "vit_base_patch16_224", "--img-size", "32", "--patch-size", "8",
           "--depth", "2", "--embed-dim", "64", "--num-heads", "2"]
STUDENT = ["--student", "vit_tiny_patch16_224", "--img-size", "24", "--patch-size", "8", "--depth", "1",
           "--embed-dim", "32", "--num-heads", "2", "--workers", "0", "--batch-size", "16"]


def invoke(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, Path]:
    """A store of the demo images and a 2-fold tiny fine-tuned teacher on it (fold 0 is used)."""
    work = tmp_path_factory.mktemp("distill")
    store = work / "store"
    invoke("ingest", DEMO_IMAGES, "--store", store)
    invoke("finetune", "--store", store, *TEACHER, "--labels", "all", "--folds", "2", "--epochs", "3",
           "--batch-size", "16", "--warmup-epochs", "1", "--workers", "0", "--out", work / "ft", "--json")
    return store, work / "ft" / "fold-0" / "model.safetensors"


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory) -> tuple[Path, dict]:
    store, model = teacher
    out = tmp_path_factory.mktemp("student") / "run"
    summary = json.loads(invoke("distill", "--teacher", model, "--store", store, *STUDENT, "--epochs", "3",
                                "--warmup-epochs", "1", "--out", out, "--json"))
    return out, summary


def test_student_is_trained_on_what_the_teacher_fold_did_not_hold_out(teacher, student):
    store, model = teacher
    out, summary = student
    split = load_split(model.parent / "split.json")
    held = set(split.val) | set(split.test)
    assert summary["n_held_out"] == len(held) and summary["n_train"] == 105 - len(held)
    assert summary["global_step"] == 3 * -(-summary["n_train"] // 16)  # 3 epochs of batches of 16

    info = json.loads((out / "model.json").read_text())
    assert info["teacher_hash"] == file_hash(model) == summary["teacher_hash"]
    assert info["teacher_agreement"] == summary["teacher_agreement"]
    assert 0 <= info["teacher_agreement"] <= 1 and info["teacher_agreement_images"] == len(held)
    assert (info["img_size"], info["crop"], info["depth"], info["embed_dim"]) == (24, 24, 1, 32)
    teacher_info = json.loads(model.with_suffix(".json").read_text())
    assert info["classes"] == teacher_info["classes"] and info["mean"] == teacher_info["mean"]
    # Test scores of both models on the teacher fold's labelled test images, side by side.
    assert summary["n_test_labelled"] == len(split.test)
    assert set(summary["student_test"]) == set(summary["teacher_test"]) == {"accuracy", "balanced_accuracy",
                                                                           "macro_f1"}
    # The cached teacher answers cover every image, and are the teacher's logits.
    cached = pq.read_table(out / "teacher_logits.parquet").to_pydict()
    assert len(cached["object_id"]) == 105
    assert np.isfinite(np.array(cached["logits"])).all()
    # Each step's loss is logged once; the distillation term is there.
    with (out / "metrics.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_kd")]
    assert len(rows) == summary["global_step"]
    assert not (out / "checkpoints").exists()


def test_student_loads_in_predict_and_every_writer(teacher, student, tmp_path):
    store, _ = teacher
    out, summary = student
    model, info = load_model(out / "model.safetensors")
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 24, 24)).shape == (2, len(info.classes))
    result = predict(out / "model.safetensors", store=Store(store), to=["store", "parquet", "csv", "embeddings"],
                     out_dir=tmp_path / "files", embeddings=True)
    assert result.predicted == 105 and sum(result.by_label.values()) == 105
    assert set(result.writers) == {"store", "parquet", "csv", "embeddings"}
    # IFCB bins from disk into Dashboard class files and an EcoTaxa import zip.
    proc = plankton("predict", "--model", str(out / "model.safetensors"), str(BUNDLED / "ifcb/pyifcb-testdata/white"),
                    "--to", "ifcb-h5", "--to", "ecotaxa", "--out", str(tmp_path / "ifcb"), "--store",
                    str(tmp_path / "none"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["predicted"] == 19
    (h5,) = (tmp_path / "ifcb").rglob("*_class.h5")
    with h5py.File(h5) as f:
        assert f["output_scores"].shape == (19, len(info.classes))
    from plankton_plugins.ecotaxa.checker import check_import_zip

    (archive,) = (tmp_path / "ifcb").rglob("*.zip")
    assert check_import_zip(archive) == []


def test_rerun_does_not_train_again_and_other_settings_are_refused(teacher, student):
    store, model = teacher
    out, summary = student
    before = (out / "model.safetensors").stat().st_mtime_ns
    args = ["distill", "--teacher", model, "--store", store, *STUDENT, "--warmup-epochs", "1", "--out", out]
    assert json.loads(invoke(*args, "--epochs", "3", "--json")) == summary
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    other = CliRunner().invoke(cli, [str(a) for a in (*args, "--epochs", "4")])
    assert other.exit_code == 2 and "other settings" in other.output


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_step_count(teacher, tmp_path):
    store, model = teacher
    args = ["distill", "--teacher", str(model), "--store", str(store), *STUDENT, "--epochs", "4",
            "--warmup-epochs", "1", "--checkpoint-every", "2"]
    whole = json.loads(plankton(*args, "--out", str(tmp_path / "whole"), "--json", check=True).stdout)

    run = tmp_path / "killed"
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "plankton_cli", *args, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while not (ckpt.exists() and _checkpoint_step(ckpt) >= 4) and proc.poll() is None:
            assert time.monotonic() < deadline, "no step checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = _checkpoint_step(ckpt)
    assert 0 < killed_at < whole["global_step"], "the run must be killed mid-way"
    assert not (run / "summary.json").exists()

    resumed = json.loads(plankton(*args, "--out", str(run), "--json", check=True).stdout)
    assert resumed["resumed_from"] == str(ckpt)
    assert resumed["global_step"] == whole["global_step"]
    with (run / "metrics.csv").open(newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train_kd")]
    assert sorted(steps) == sorted(set(steps)) and len(steps) == whole["global_step"]


# --- a teacher that reads per-object features ---------------------------------------------------------------------

FEATURE_FIELDS = ("features", "feature_center", "feature_scale", "feature_clip")


@pytest.fixture(scope="module")
def feature_teacher(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The EcoTaxa QA ZooScan bundle (object_* in every row) with `plankton features` run, and a tiny teacher
    fine-tuned on it with ``--features auto`` (as tests/test_features.py's end-to-end test does)."""
    bundle = shared_data("ecotaxa", "ecotaxa-back-qa", "import_test")
    work = tmp_path_factory.mktemp("features")
    store = work / "store"
    invoke("ingest", bundle, "--store", store, "--json")
    invoke("features", "--store", store, "--json")
    invoke("finetune", "--store", store, *TEACHER, "--label-status", "any", "--folds", "1", "--epochs", "2",
           "--batch-size", "4", "--warmup-epochs", "0", "--workers", "0", "--features", "auto",
           "--out", work / "ft", "--json")
    return bundle, store, work / "ft" / "fold-0" / "model.safetensors"


@pytest.fixture(scope="module")
def feature_student(feature_teacher, tmp_path_factory) -> tuple[Path, dict]:
    _, store, model = feature_teacher
    out = tmp_path_factory.mktemp("feature-student") / "run"
    summary = json.loads(invoke("distill", "--teacher", model, "--store", store, *STUDENT, "--batch-size", "4",
                                "--epochs", "2", "--warmup-epochs", "0", "--label-status", "any", "--out", out,
                                "--json"))
    return out, summary


def test_student_of_a_feature_teacher_reads_the_same_features_scaled_the_same(feature_teacher, feature_student):
    _, store, model = feature_teacher
    out, summary = feature_student
    teacher, student = ModelInfo.load(model), ModelInfo.load(out / "model.safetensors")
    assert "object_area" in teacher.features and "features.esd" in teacher.features  # both kinds of feature
    for name in FEATURE_FIELDS:  # names, median, IQR and clip: the teacher's, not refitted
        assert getattr(student, name) == getattr(teacher, name), name
    assert student.feature_dim == teacher.feature_dim > 0
    loaded, _ = load_model(out / "model.safetensors")
    assert loaded.feature_dim == teacher.feature_dim  # the head really takes them
    # Agreement and provenance as for an image-only teacher.
    assert student.extra["teacher_hash"] == file_hash(model) == summary["teacher_hash"]
    assert student.extra["teacher_agreement"] == summary["teacher_agreement"] is not None


def test_teacher_answers_are_what_predict_gives_the_teacher_with_its_features(feature_teacher, feature_student,
                                                                             tmp_path):
    """The cached teacher logits were computed with the teacher's feature inputs: predict (fp32, which feeds a
    feature model its features) gives the teacher the same probabilities on every image."""
    _, store, model = feature_teacher
    out, _ = feature_student
    predict(model, store=Store(store), to=["parquet"], out_dir=tmp_path, cpu_path="fp32", force=True)
    predicted = pq.read_table(tmp_path / "predictions.parquet").to_pydict()
    by_id = dict(zip(predicted["object_id"], np.array(predicted["probabilities"])))
    cached = pq.read_table(out / "teacher_logits.parquet").to_pydict()
    assert sorted(cached["object_id"]) == sorted(by_id) and len(by_id) == 11
    logits = np.array(cached["logits"], np.float64)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    expected = np.stack([by_id[i] for i in cached["object_id"]])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_predict_feeds_the_student_exactly_what_it_feeds_the_teacher(feature_teacher, feature_student, tmp_path):
    bundle, store, model = feature_teacher
    out, _ = feature_student
    teacher, student = ModelInfo.load(model), ModelInfo.load(out / "model.safetensors")
    items = sorted(_store_items(Store(store), instrument=None, since=None, exclude=set()), key=lambda i: i.object_id)
    student_inputs = FeatureInputs(FeatureScaling.from_info(student))(items)
    np.testing.assert_array_equal(student_inputs, FeatureInputs(FeatureScaling.from_info(teacher))(items))
    # ... and what distill trained the student on (the store's rows under the teacher's scaling), bit for bit.
    ids = [item.object_id for item in items]
    trained = feature_matrix(store, ids, FeatureScaling.from_info(teacher), student.extra["dataset"])
    np.testing.assert_array_equal(student_inputs, trained)
    summary = json.loads(invoke("predict", "--store", store, "--model", out / "model.safetensors", "--to", "csv",
                                "--out", tmp_path, "--json"))
    assert summary["predicted"] == 11 and summary["features_lacking"] == []


def test_feature_teacher_on_a_store_without_its_features_is_refused_in_one_line(feature_teacher, tmp_path):
    """`features.*` needed but `plankton features` never ran here: exit 2, saying what to run, nothing written."""
    bundle, _, model = feature_teacher
    store = tmp_path / "store"
    invoke("ingest", bundle, "--store", store, "--json")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [str(a) for a in ("distill", "--teacher", model, "--store", store, *STUDENT,
                                                       "--out", out)])
    assert result.exit_code == 2, result.output
    assert f"plankton features --store {store}" in result.output and "features.esd" in result.output
    assert not (out / "config.json").exists() and not (out / "teacher_logits.parquet").exists()


def test_feature_no_image_of_the_store_has_is_refused_by_name(feature_teacher):
    from plankton_cli.train.distill import feature_inputs
    from plankton_cli.core.errors import UsageError

    _, store, model = feature_teacher
    info = ModelInfo.load(model)
    info.features, info.feature_center, info.feature_scale = ["object_area", "object_nothing"], [0.0, 0.0], [1.0, 1.0]
    ids = sorted(Store(store).dataset("objects").to_table(columns=["object_id"])["object_id"].to_pylist())
    with pytest.raises(UsageError, match="reads object_nothing, which no image of objects"):
        feature_inputs(info, store, "objects", ids, model)
    info.features, info.feature_center, info.feature_scale = ["object_area"], [0.0], [1.0]
    scaling, rows = feature_inputs(info, store, "objects", ids, model)
    assert scaling is not None and rows is not None and set(rows) == set(ids)


# --- a timm CNN student -------------------------------------------------------------------------------------------

CNN_STUDENT = ["--student", "mobilenetv3_small_050", "--img-size", "32", "--workers", "0", "--batch-size", "16"]


def test_cnn_student_is_an_ordinary_model_file_for_predict(teacher, tmp_path):
    store, model = teacher
    out = tmp_path / "cnn"
    summary = json.loads(invoke("distill", "--teacher", model, "--store", store, *CNN_STUDENT, "--epochs", "1",
                                "--max-steps", "2", "--warmup-epochs", "0", "--out", out, "--json"))
    assert summary["global_step"] == 2
    info = json.loads((out / "model.json").read_text())
    assert info["architecture"] == "mobilenetv3_small_050" and (info["img_size"], info["crop"]) == (32, 32)
    assert all(info.get(key) is None for key in ("patch_size", "depth", "num_heads")) and info["embed_dim"] > 0
    assert 0 <= info["teacher_agreement"] <= 1
    student, _ = load_model(out / "model.safetensors")
    assert student.arch["embed_dim"] == info["embed_dim"]
    result = predict(out / "model.safetensors", store=Store(store), to=["csv", "embeddings"], out_dir=tmp_path / "p",
                     embeddings=True, cpu_path="int8")  # int8: the head's Linears only, the convolutions stay fp32
    assert result.predicted == 105 and set(result.writers) == {"csv", "embeddings"}
    # finetune takes ViTs only: the CNN student as --init (or a CNN --model) is refused in one line.
    for init in (["--init", out / "model.safetensors"], ["--init", "scratch", "--model", "mobilenetv3_small_050"]):
        refused = CliRunner().invoke(cli, [str(a) for a in ("finetune", "--store", store, *init, "--labels", "all",
                                                            "--out", tmp_path / "ft")])
        assert refused.exit_code == 2, refused.output
        assert "mobilenetv3_small_050 is not a timm ViT: finetune takes ViTs only" in refused.output
        assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output


def test_vit_options_for_a_cnn_student_are_refused_in_one_line(teacher, tmp_path):
    store, model = teacher
    out = tmp_path / "refused"
    result = CliRunner().invoke(cli, [str(a) for a in ("distill", "--teacher", model, "--store", store, *CNN_STUDENT,
                                                       "--depth", "2", "--num-heads", "2", "--out", out)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("Error: --student mobilenetv3_small_050 is not a timm ViT: --depth, --num-heads "
                                     "shape a ViT student only")
    assert not out.exists()
    unknown = CliRunner().invoke(cli, [str(a) for a in ("distill", "--teacher", model, "--store", store, "--student",
                                                        "no_such_net", "--out", out)])
    assert unknown.exit_code == 2 and "'no_such_net' is not a timm model name" in unknown.output
    assert not out.exists()  # refused before the teacher answered a single image
