"""`plankton predict`: store and source inputs, writers, skip-already-predicted, and no train/predict drift.

The model here is a real exported classifier with untrained weights: these tests are about the plumbing
(preprocessing, batching, writers, idempotency); prediction quality is tested in tests/test_finetune.py.
"""

import json

import h5py
import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from conftest import BUNDLED, plankton
from plankton_cli.ingest import ingest
from plankton_cli.train.models import Classifier
from plankton_cli.train.models.checkpoints import save_model
from plankton_cli.prepare.square_pad import CropSpec
from plankton_cli.prepare.pad_store import pad_dataset
from plankton_cli.infer.predict import Preprocessor, _Item, predict
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store

CLASSES = ["Actinoptychus", "Bacillariophyceae", "Ciliophora", "Dinoflagellata", "Noctilucales", "Tripos"]
PADDING = {"pad_settings": ["FlowCam: pad-v1 crop=0,0,0,0 size=keep", "IFCB: pad-v1 crop=0,0,0,0 size=keep"]}


def tiny_model(path, classes, preprocessing):
    """A real exported classifier (tiny ViT, untrained weights), as `plankton finetune` writes one."""
    torch.manual_seed(0)
    model = Classifier("vit_tiny_patch16_224", len(classes), img_size=32, patch_size=8, depth=2, embed_dim=64,
                       num_heads=2, hidden_dim=32)
    info = {**model.arch, "classes": classes, "mean": [0.5], "std": [0.25], "resize": 36, **preprocessing,
            "model_id": "test/fold-0", "thresholds": {c: 0.0 for c in classes}}
    return save_model(path, model.state_dict(), info)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "fold-0", CLASSES, PADDING)


@pytest.fixture
def demo_store(tmp_path, demo_images):
    store = Store(tmp_path / "store")
    ingest(store, [demo_images], options=ReadOptions(instrument="FlowCam"))
    return store


def test_predicts_the_store_once_then_only_new_objects(demo_store, model_file, tmp_path):
    first = predict(model_file, store=demo_store, to=["store", "csv"], out_dir=tmp_path / "out")
    assert first.predicted == 105 and sum(first.by_label.values()) == 105
    table = demo_store.dataset("predictions").to_table()
    assert table.num_rows == 105 and len(set(table["object_id"].to_pylist())) == 105
    again = predict(model_file, store=demo_store, to=["store"], out_dir=tmp_path / "out")
    assert again.predicted == 0 and again.skipped_already_predicted == 105
    forced = predict(model_file, store=demo_store, to=["store"], out_dir=tmp_path / "out", force=True)
    assert forced.predicted == 105
    assert demo_store.dataset("predictions").count_rows() == 105  # replaced, never duplicated


def test_preprocessing_equals_the_padded_training_pixels(demo_store, tmp_path):
    """Predict pads on the fly; it must give exactly the tensor training got from the `padded` dataset."""
    from plankton_cli.prepare.data import StoreDataset
    from plankton_cli.prepare.data.transforms import EvalTransform
    from plankton_cli.train.model_info import ModelInfo
    from plankton_cli.prepare.pad_store import padding_rules

    pad_dataset(demo_store, crop=CropSpec(top=3, left=2))  # some crop, so that forgetting it would show
    rules = padding_rules(demo_store.root / "padded")  # what finetune records in model.json
    assert rules == ["FlowCam: pad-v1 crop=3,0,2,0 size=keep"]
    pre = Preprocessor(ModelInfo.load(tiny_model(tmp_path / "m", CLASSES, {"pad_settings": rules})))
    train_view = EvalTransform(resize=36, crop=32, mean=0.5, std=0.25)
    objects = {r["object_id"]: r for r in demo_store.dataset("objects").to_table().to_pylist()}
    trained_on = StoreDataset(demo_store.root / "padded", train_view, shuffle=False)  # padded on read
    for sample in list(trained_on)[:20]:
        obj = objects[sample["object_id"]]
        item = _Item(obj["object_id"], obj["image"]["bytes"], obj["instrument"])
        assert torch.equal(pre(item), sample["image"])


def test_ifcb_bin_from_disk_to_dashboard_h5_and_ecotaxa_zip(model_file, tmp_path):
    bins = BUNDLED / "ifcb/pyifcb-testdata/white"
    proc = plankton("predict", "--model", str(model_file), str(bins), "--to", "ifcb-h5", "--to", "ecotaxa",
                    "--out", str(tmp_path / "out"), "--store", str(tmp_path / "none"), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["predicted"] == 19
    (h5,) = (tmp_path / "out").rglob("*_class.h5")
    assert h5.name == "D20130526T095207_IFCB013_class.h5" and h5.parent.name == "D20130526"
    with h5py.File(h5) as f:
        assert list(f["roi_numbers"][:]) == [7, 11, 13, 21, 32, 33, 47, 49, 54, 61, 66, 68, 73, 78, 80, 92, 99, 102,
                                             114]
        assert f["output_scores"].shape == (19, len(CLASSES))
        np.testing.assert_allclose(f["output_scores"][:].sum(axis=1), 1.0, rtol=1e-5)
    (zipfile,) = (tmp_path / "out").rglob("*.zip")
    from plankton_plugins.ecotaxa.checker import check_import_zip

    assert check_import_zip(zipfile) == []


def test_a_failed_predict_leaves_no_writer_spool(model_file, tmp_path):
    """Writers spool in OUT until close(); a run that fails after spooling drops its spools (issue 10)."""
    bins = BUNDLED / "ifcb/pyifcb-testdata/white"

    def fail(n: int) -> None:
        raise RuntimeError("stopped after the first batch")

    with pytest.raises(RuntimeError, match="first batch"):
        predict(model_file, sources=[bins], to=["ifcb-h5", "ecotaxa"], out_dir=tmp_path / "out", batch_size=4,
                on_batch=fail)
    assert not list((tmp_path / "out").glob(".spool-*"))
    predict(model_file, sources=[bins], to=["ifcb-h5", "ecotaxa"], out_dir=tmp_path / "out", batch_size=4)
    assert not list((tmp_path / "out").glob(".spool-*"))
    assert len(list((tmp_path / "out").rglob("*_class.h5"))) == len(list((tmp_path / "out").rglob("*.zip"))) == 1


def test_cli_from_store_with_json(demo_store, model_file, tmp_path):
    proc = plankton("predict", "--model", str(model_file), "--store", str(demo_store.root), "--to", "parquet",
                    "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["predicted"] == 105
    table = ds.dataset(tmp_path / "out" / "predictions.parquet").to_table()
    assert table.num_rows == 105


@pytest.mark.parametrize("where", ["under-a-file", "immutable"])
def test_an_out_folder_that_cannot_take_files_exits_73_naming_it(model_file, tmp_path, where):
    """Root writes through chmod, so the folder is made unwritable for root too: OUT under a regular file, or a
    folder made immutable with `chattr +i` (skipped where the file system or the container refuses it)."""
    import shutil
    import subprocess

    out = tmp_path / "file" / "out"
    if where == "under-a-file":
        (tmp_path / "file").write_text("not a folder\n")
    else:
        out.mkdir(parents=True)
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(out)]).returncode:
            pytest.skip("chattr +i is not available here")
    try:
        proc = plankton("predict", "--model", str(model_file), str(BUNDLED / "ifcb/pyifcb-testdata/white"),
                        "--to", "csv", "--out", str(out), "--store", str(tmp_path / "none"))
    finally:
        if where == "immutable":
            subprocess.run(["chattr", "-i", str(out)])
    assert proc.returncode == 73, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"Error: {out}: cannot write outputs there (")
    assert not list(tmp_path.rglob("*.csv")) and not list(tmp_path.rglob(".*tmp"))
