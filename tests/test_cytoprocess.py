"""plankton as CytoProcess's classifier: CytoProcess's own `predict` command (its real code, installed from PyPI)
calls `plankton_cli.infer.cytoprocess.classify`, and a generated model.py, on a project holding bundled
images; its predictions must be `plankton predict`'s on the same files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import BUNDLED, plankton, predict_files
from test_predict import CLASSES, tiny_model

pytest.importorskip("cytoprocess", reason="cytoprocess is in the test extra: pip install -e '.[test]'")

from plankton_cli.infer.cytoprocess import MODEL_VARIABLE  # noqa: E402

SAMPLE = "cs_2024-05-01_1200"
PADDING = {"pad_settings": ["CytoSense: pad-v1 crop=0,0,0,0 size=keep"]}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = tiny_model(tmp_path_factory.mktemp("model") / "fold-0", CLASSES, PADDING)
    return Path(model)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A CytoProcess project as its `extract_cyto`/`extract_images` steps leave it: per sample, the cytometric and
    image features (Parquet) and `images/<particle>_img.jpg`, here two demo images of each class."""
    root = tmp_path_factory.mktemp("cytoprocess-project")
    work = root / "work" / SAMPLE
    (work / "images").mkdir(parents=True)
    demo = BUNDLED / "planktonclass-demo" / "demo-images"
    files = [f for folder in sorted(demo.iterdir()) for f in sorted(folder.glob("*.jpg"))[:2]]
    ids = [f"{SAMPLE}_{n}" for n in range(len(files))]
    for n, file in enumerate(files):
        shutil.copy(file, work / "images" / f"{n}_img.jpg")
    pd.DataFrame({"sample_id": SAMPLE, "object_id": ids, "fws_total": np.linspace(1, 2, len(ids)),
                  "acq_id": "a"}).to_parquet(work / "cytometric_features.parquet")
    pd.DataFrame({"sample_id": SAMPLE, "object_id": ids,
                  "area": np.arange(len(ids), dtype=float)}).to_parquet(work / "image_features.parquet")
    return root


def cytoprocess_predict(project: Path, spec: str, env: dict[str, str]) -> pd.DataFrame:
    """CytoProcess's `predict` command, run as a user runs it; returns the predictions file it wrote."""
    proc = subprocess.run([sys.executable, "-m", "cytoprocess", "predict", "--force", "--model", spec, str(project)],
                          capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return pd.read_parquet(project / "work" / SAMPLE / "predictions.parquet")


def test_cytoprocess_predict_calls_classify_and_gets_plankton_predicts_labels(project, model_file, tmp_path):
    images = project / "work" / SAMPLE / "images"
    expected = predict_files(model_file, images, tmp_path / "reference", "--instrument", "CytoSense")

    got = cytoprocess_predict(project, "plankton_cli.infer.cytoprocess.classify",
                              {MODEL_VARIABLE: str(model_file)})

    assert len(got) == 12 and list(got["sample_id"].unique()) == [SAMPLE]
    assert {"object_annotation_category", "object_annotation_status", "object_score",
            "object_label_auto"} <= set(got.columns)
    ids = [f"images/{oid.removeprefix(SAMPLE + '_')}_img.jpg" for oid in got["object_id"]]
    want = expected.loc[ids]
    assert list(got["object_annotation_category"]) == list(want["label"])  # thresholds 0: every object classified
    assert set(got["object_annotation_status"]) == {"predicted"}
    assert list(got["object_label_auto"]) == list(want["label_auto"])
    np.testing.assert_allclose(got["object_score"], want["score"], atol=1e-6)
    assert len(set(got["object_label_auto"])) > 1  # the images are told apart, not one answer for all


def test_export_writes_a_model_py_that_serves_the_model_without_the_environment(project, model_file, tmp_path):
    """`plankton export --format cytoprocess` writes it (with `write_model_py`)."""
    plankton("export", str(model_file), str(tmp_path / "cyto"), "--format", "cytoprocess", check=True)
    model_py = tmp_path / "cyto" / "model.py"
    env = {k: v for k, v in os.environ.items() if k != MODEL_VARIABLE}
    by_env = cytoprocess_predict(project, "plankton_cli.infer.cytoprocess.classify",
                                 {MODEL_VARIABLE: str(model_file)})
    proc = subprocess.run([sys.executable, "-m", "cytoprocess", "predict", "--force", "--model",
                           f"{model_py}::classify", str(project)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by_file = pd.read_parquet(project / "work" / SAMPLE / "predictions.parquet")
    pd.testing.assert_frame_equal(by_file, by_env)


def test_unset_model_variable_is_one_clear_error(project, tmp_path):
    """CytoProcess reports the function's error for the sample (and writes no predictions)."""
    env = {k: v for k, v in os.environ.items() if k != MODEL_VARIABLE}
    (project / "work" / SAMPLE / "predictions.parquet").unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "cytoprocess", "predict", "--model",
                           "plankton_cli.infer.cytoprocess.classify", str(project)],
                          capture_output=True, text=True, env=env)
    assert f"${MODEL_VARIABLE} is not set" in proc.stdout + proc.stderr
    assert not (project / "work" / SAMPLE / "predictions.parquet").exists()


def test_cytoprocess_features_reach_a_model_trained_with_them_under_their_ecotaxa_names(project, tmp_path):
    """A model fine-tuned on an EcoTaxa export of CytoProcess data reads `object_<feature>`: CytoProcess's own
    feature columns are fed to it under those names, not as missing."""
    import torch

    from plankton_cli.prepare.features.inputs import FeatureScaling
    from plankton_cli.infer.cytoprocess import classify_with
    from plankton_cli.infer.image_files import scorer
    from plankton_cli.train.models import Classifier, save_model

    scaling = FeatureScaling.fit(["object_fws_total", "object_area"],
                                 [{"object_fws_total": v, "object_area": 10 * v} for v in (1.0, 1.5, 2.0)])
    torch.manual_seed(0)
    model = Classifier("vit_tiny_patch16_224", len(CLASSES), img_size=32, patch_size=8, depth=2, embed_dim=64,
                       num_heads=2, hidden_dim=32, feature_dim=scaling.width)
    model_file = save_model(tmp_path / "fold-0", model.state_dict(), {
        **model.arch, "classes": CLASSES, "mean": [0.5], "std": [0.25], "resize": 36, **PADDING,
        **scaling.info_fields()})
    work = project / "work" / SAMPLE
    paths = sorted(str(p) for p in (work / "images").glob("*_img.jpg"))[:4]
    features = pd.DataFrame({"fws_total": [1.0, 2.0, 1.0, 2.0], "area": [5.0, 30.0, 5.0, 30.0]})

    with_features = classify_with(model_file, paths, features)
    lacking = scorer(Path(model_file)).feature_inputs.report()
    assert lacking == []  # every object had both features
    without = classify_with(model_file, paths, features.iloc[:, :0])
    assert scorer(Path(model_file)).feature_inputs.report()  # now they are reported missing
    assert not np.allclose(with_features["score"], without["score"])  # and the answers change
