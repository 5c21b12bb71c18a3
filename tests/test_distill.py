"""`plankton distill`: a tiny fine-tuned teacher into a tinier student on real images, the student in predict and
every writer, held-out bookkeeping, and resuming after SIGKILL."""

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

from conftest import BUNDLED, plankton
from plankton_cli.cli import cli
from plankton_cli.models import load_model
from plankton_cli.predict import file_hash, predict
from plankton_cli.protocol import load_split
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
