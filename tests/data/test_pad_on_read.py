"""A padded dataset that keeps only pad parameters gives training exactly the pixels stored padding would."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import BUNDLED, SHARED
from plankton_cli.prepare.data import EvalTransform, StoreDataset, TrainTransform
from plankton_cli.prepare.data.stats import compute_mean_std
from plankton_cli.ingest import ingest
from plankton_cli.prepare.pad_store import pad_dataset
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store

DEMO = BUNDLED / "planktonclass-demo" / "demo-images"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same objects padded twice: pixels stored (`--store-pixels`) and parameters only (the default).

    IFCB ROIs (light background), FlowCam-like images (class folders) and, when ../shared/data is here, ZooScan
    vignettes whose legend is detected and cropped: every kind of crop and pad."""
    base = Store(tmp_path_factory.mktemp("base") / "store")
    ingest(base, [BUNDLED / "ifcb" / "pyifcb-testdata"])
    ingest(base, [DEMO], options=ReadOptions(instrument="FlowCam"))
    zooscan = SHARED / "ecotaxa" / "ecotaxa-back-qa" / "import_test" / "m106_mn01_n1_sml"
    if zooscan.is_dir():
        ingest(base, [zooscan], options=ReadOptions(instrument="Zooscan"))
    stored = Store(shutil.copytree(base.root, base.root.parent / "stored"))
    on_read = Store(shutil.copytree(base.root, base.root.parent / "on-read"))
    pad_dataset(stored, store_pixels=True)
    pad_dataset(on_read)
    return stored, on_read


def samples(store: Store, transform, **kwargs) -> dict[str, dict]:
    return {s["object_id"]: s for s in StoreDataset(store.root / "padded", transform, shuffle=False, **kwargs)}


def test_same_training_pixels_labels_and_stats(stores):
    stored, on_read = stores
    assert on_read.dataset("padded").to_table(columns=["image"])["image"].null_count == on_read.dataset(
        "padded").count_rows()  # no pixels at all
    transform = EvalTransform(resize=64, crop=64)
    a, b = samples(stored, transform, classes=["Tripos"]), samples(on_read, transform, classes=["Tripos"])
    assert a.keys() == b.keys() and len(a) == stored.dataset("objects").count_rows()
    for oid in a:
        assert torch.equal(a[oid]["image"], b[oid]["image"]), oid
        assert a[oid]["label"] == b[oid]["label"]
    assert {s["label"] for s in b.values()} == {-1, 0}
    # Raw samples: PNG bytes either way, decoding to the same padded square.
    raw_a, raw_b = samples(stored, None), samples(on_read, None)
    some = sorted(raw_a)[::7]
    assert all(EvalTransform(64, 64)(raw_a[i]["image"]).equal(EvalTransform(64, 64)(raw_b[i]["image"])) for i in some)
    assert compute_mean_std(stored.root / "padded", resize=32) == compute_mean_std(on_read.root / "padded", resize=32)


def test_filters_and_augmented_training_stream_are_the_same(stores):
    stored, on_read = stores
    kwargs = dict(classes=["Tripos", "Dinophysis"], labelled_only=True, instruments=["FlowCam"], seed=3)
    torch.manual_seed(0)
    a = list(StoreDataset(stored.root / "padded", TrainTransform(40, 32), **kwargs))
    torch.manual_seed(0)
    b = list(StoreDataset(on_read.root / "padded", TrainTransform(40, 32), **kwargs))
    assert [s["object_id"] for s in a] == [s["object_id"] for s in b] and len(a) > 10
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))


def test_disk_and_switching_modes(stores, tmp_path):
    stored, on_read = stores
    size = {name: sum(f.stat().st_size for f in s.files("padded")) for name, s in (("stored", stored),
                                                                                     ("on-read", on_read))}
    assert size["on-read"] * 3 < size["stored"]
    # Switching --store-pixels pads every row again, replacing the old rows: nothing twice, nothing lost.
    store = Store(shutil.copytree(on_read.root, tmp_path / "s"))
    summary = pad_dataset(store, store_pixels=True)
    assert summary.padded == summary.removed == summary.read == store.dataset("padded").count_rows()
    assert store.dataset("padded").to_table(columns=["image"])["image"].null_count == 0


def test_changed_object_waits_for_the_next_pad(demo_images, tmp_path):
    images = shutil.copytree(demo_images, tmp_path / "images")
    store = Store(tmp_path / "s")
    ingest(store, [images])
    pad_dataset(store)
    victim = sorted((images / "Tripos").iterdir())[0]
    victim.write_bytes((images / "Tripos" / sorted((images / "Tripos").iterdir())[1].name).read_bytes())
    ingest(store, [images])  # other pixels under the same id
    ids = set(samples(store, None))
    assert f"images/Tripos/{victim.name}" not in ids and len(ids) == 104
    pad_dataset(store)
    assert len(samples(store, None)) == 105


def test_padded_dataset_without_pixels_reads_the_same_in_arrays(stores):
    # The identical pixels also hold for the stored numbers a reader sees (nothing in them depends on the mode).
    stored, on_read = stores
    columns = ["object_id", "crop_top", "crop_bottom", "pad_top", "pad_left", "height", "width", "label"]
    a = stored.dataset("padded").to_table(columns=columns).sort_by("object_id")
    b = on_read.dataset("padded").to_table(columns=columns).sort_by("object_id")
    assert a.equals(b)
    assert np.all(np.asarray(a["height"]) == np.asarray(a["width"]))
