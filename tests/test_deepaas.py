"""plankton served by DEEPaaS: the real `deepaas-run` server on localhost loads `plankton_cli.serve.deepaas`
by its entry point; an HTTP client reads the metadata, uploads an image and a zip (answers compared with
`plankton predict` on the same files) and fine-tunes through the train endpoint."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import BUNDLED, plankton, predict_files
from test_predict import CLASSES, PADDING, tiny_model

pytest.importorskip("deepaas", reason="deepaas is in the test extra: pip install -e '.[test]'")
requests = pytest.importorskip("requests", reason="requests comes with deepaas")

from plankton_cli.serve.deepaas import MODEL_VARIABLE  # noqa: E402

DEMO = BUNDLED / "planktonclass-demo" / "demo-images"
STARTUP_S = 240  # the worker imports torch and loads the model before the server listens (a busy 2-core VM)
TINY = "--model vit_base_patch16_224 --img-size 32 --patch-size 8 --depth 2 --embed-dim 64 --num-heads 2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return Path(tiny_model(tmp_path_factory.mktemp("model") / "fold-0", CLASSES, PADDING))


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    """`deepaas-run` serving the model on a free port of 127.0.0.1; yields its v2 URL; killed afterwards."""
    port = free_port()
    log = tmp_path_factory.mktemp("deepaas") / "server.log"
    command = [str(Path(sys.executable).parent / "deepaas-run"), "--listen-ip", "127.0.0.1", "--listen-port",
               str(port), "--model-name", "plankton"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, MODEL_VARIABLE: str(model_file)})
    url = f"http://127.0.0.1:{port}/v2"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert proc.poll() is None, f"deepaas-run exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"deepaas-run not up after {STARTUP_S} s:\n{log.read_text()[-3000:]}"
            try:
                if requests.get(f"{url}/models/", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_metadata_names_the_models_classes(server, model_file):
    meta = requests.get(f"{server}/models/plankton/", timeout=30).json()
    assert meta["name"] == "plankton"
    assert meta["model"]["classes"] == CLASSES and meta["model"]["file"] == str(model_file)


def test_an_uploaded_image_gets_plankton_predicts_answer(server, model_file, tmp_path):
    image = sorted((DEMO / "Tripos").glob("*.jpg"))[0]
    with image.open("rb") as f:
        reply = requests.post(f"{server}/models/plankton/predict/", files={"image": (image.name, f, "image/jpeg")},
                              data={"top_k": "6"}, timeout=120)
    assert reply.status_code == 200, reply.text
    [answer] = reply.json()["predictions"]

    (tmp_path / "upload").mkdir()
    shutil.copy(image, tmp_path / "upload" / image.name)  # the upload is classified as upload/<name>
    expected = predict_files(model_file, tmp_path / "upload", tmp_path / "reference").loc[f"upload/{image.name}"]
    assert answer["object_id"] == f"upload/{image.name}" and answer["error"] is None
    assert answer["label"] == expected["label"] and answer["label_auto"] == expected["label_auto"]
    assert [t["label"] for t in answer["top"]][0] == expected["label_auto"] and len(answer["top"]) == 6
    probabilities = dict(zip(CLASSES, expected["probabilities"]))
    np.testing.assert_allclose([t["probability"] for t in answer["top"]],
                               [probabilities[t["label"]] for t in answer["top"]], atol=1e-6)


def test_an_uploaded_zip_gets_one_answer_per_image_and_the_unreadable_one_its_error(server, model_file, tmp_path):
    unpacked = tmp_path / "batch"  # what the zip holds, laid out as the server unpacks it
    for folder in ("Ciliophora", "Noctilucales", "Tripos"):
        (unpacked / folder).mkdir(parents=True)
        for image in sorted((DEMO / folder).glob("*.jpg"))[:3]:
            shutil.copy(image, unpacked / folder / image.name)
    (unpacked / "Tripos" / "broken.jpg").write_bytes(b"not a jpeg")
    (unpacked / "notes.txt").write_text("not an image: left out")
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in sorted(unpacked.rglob("*")):
            z.write(file, file.relative_to(unpacked).as_posix())

    with archive.open("rb") as f:
        reply = requests.post(f"{server}/models/plankton/predict/",
                              files={"image": ("batch.zip", f, "application/zip")}, timeout=300)
    assert reply.status_code == 200, reply.text
    answers = {a["file"]: a for a in reply.json()["predictions"]}
    assert len(answers) == 10 and "notes.txt" not in answers
    assert "undecodable" in answers.pop("Tripos/broken.jpg")["error"]

    expected = predict_files(model_file, unpacked, tmp_path / "reference")
    assert len(expected) == 9  # plankton predict rejects the broken image too
    for name, answer in answers.items():
        want = expected.loc[f"batch/{name}"]
        assert answer["object_id"] == f"batch/{name}" and answer["label"] == want["label"]
        assert answer["top"][0]["label"] == want["label_auto"]
        assert abs(answer["top"][0]["probability"] - want["score"]) < 1e-6
        assert len(answer["top"]) == 3  # the default top_k


@pytest.mark.slow
def test_train_fine_tunes_on_a_store_of_the_server(server, tmp_path, monkeypatch):
    store, out = tmp_path / "store", tmp_path / "run"
    plankton("ingest", str(DEMO), "--store", str(store), "--instrument", "FlowCam", check=True)
    args = {"store": str(store), "init": "scratch", "out": str(out), "labels": "all", "folds": "1", "epochs": "1",
            "options": f"{TINY} --workers 0 --head finetune"}
    started = requests.post(f"{server}/models/plankton/train/", data=args, timeout=60)
    assert started.status_code == 200, started.text
    uuid = started.json()["uuid"]
    deadline = time.monotonic() + 600
    while (status := requests.get(f"{server}/models/plankton/train/{uuid}", timeout=30).json())["status"] == "running":
        assert time.monotonic() < deadline, "training did not finish in 10 minutes"
        time.sleep(2)
    assert status["status"] == "done", status
    result = status["result"]["output"]
    assert result["models"] == [str(out / "fold-0" / "model.safetensors")]
    assert (out / "fold-0" / "model.safetensors").exists() and (out / "summary.json").exists()

    # The model it trained, as a server restarted on it describes it: its fold's test metrics and baselines.
    from plankton_cli.serve import deepaas

    monkeypatch.setenv(MODEL_VARIABLE, result["models"][0])
    meta = deepaas.get_metadata()["model"]
    fold = json.loads((out / "fold-0" / "result.json").read_text())
    assert meta["metrics"] == {m: fold[m] for m in ("accuracy", "balanced_accuracy", "macro_f1")}
    assert meta["baselines"] == fold["baselines"] and meta["labelled_objects"] == fold["n_labelled"]
    assert meta["instruments"] == ["FlowCam"] and meta["classes"] == CLASSES
