"""Image-folder reader on the bundled planktonclass demo (Apache-2.0) and uvpec's UVP6 vignettes (GPL)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from plankton_cli.core.records import ReadOptions, Record, Rejection
from plankton_plugins.folders.reader import ImageFolderReader
from conftest import SHARED

READER = ImageFolderReader()
DEMO = Path(__file__).resolve().parents[1] / "data" / "planktonclass-demo"



UVP6 = SHARED / "images" / "uvp6-vignettes"


def read_all(path: Path, options: ReadOptions | None = None) -> tuple[list[Record], list[Rejection]]:
    options = options or ReadOptions()
    records, rejections = [], []
    for source in READER.discover(path, options):
        for item in READER.read(source, options):
            (records if isinstance(item, Record) else rejections).append(item)
    return records, rejections


def test_planktonclass_demo_counts_and_labels():
    assert READER.sniff(DEMO)
    records, rejections = read_all(DEMO)
    assert rejections == []
    assert Counter(r.label for r in records) == {
        "Actinoptychus": 14, "Bacillariophyceae": 16, "Ciliophora": 19,
        "Dinoflagellata": 20, "Noctilucales": 23, "Tripos": 13,
    }
    assert {r.label_status for r in records} == {"validated"}
    assert {r.sample_id for r in records} == {"demo-images"}  # the class folders' parent
    assert {r.instrument for r in records} == {None}  # `demo-images` is no instrument name
    first = records[0]
    assert first.object_id == "planktonclass-demo/demo-images/Actinoptychus/" + Path(first.source_file).name
    assert first.image == Path(first.source_file).read_bytes()  # bytes exactly as on disk
    # dataset_files/*.txt, LICENSE and README.md are not images and are skipped
    assert all(r.source_file.endswith(".jpg") for r in records)


def test_one_source_per_image_keyed_by_absolute_path():
    sources = list(READER.discover(DEMO, ReadOptions()))
    assert len(sources) == 105
    assert all(s.files == (Path(s.key),) and Path(s.key).is_absolute() for s in sources)
    assert [s.key for s in sources] == sorted(s.key for s in sources)


@pytest.mark.skipif(not UVP6.is_dir(), reason=f"UVP6 vignettes (GPL-3.0, not shipped in the repo) not found at {UVP6}")
def test_uvp6_vignettes_counts_labels_and_uvpec_metadata():
    records, rejections = read_all(UVP6, ReadOptions(instrument="uvp6"))
    assert rejections == []
    counts = Counter(r.label for r in records)
    assert len(counts) == 10 and sum(counts.values()) == 1250
    assert counts["Copepoda__6666"] == 200 and counts["detritus__8888"] == 250
    assert {n for label, n in counts.items() if label not in ("Copepoda__6666", "detritus__8888")} == {100}
    copepod = next(r for r in records if r.label == "Copepoda__6666")
    assert copepod.metadata == {"ecotaxa_display_name": "Copepoda", "ecotaxa_id": "6666"}
    assert copepod.sample_id is None and copepod.instrument == "UVP6"
    assert copepod.image[:4] == b"\x89PNG"


def test_label_from_none():
    records, _ = read_all(DEMO, ReadOptions(label_from="none"))
    assert len(records) == 105
    assert {(r.label, r.label_status) for r in records} == {(None, "none")}
    with pytest.raises(ValueError, match="label_from"):
        list(READER.discover(DEMO, ReadOptions(label_from="filename")))


def test_daplankton_layout(tmp_path):
    classes = sorted((DEMO / "demo-images").iterdir())
    for instrument, folder in (("IFCB", classes[0]), ("CS", classes[1]), ("FC", classes[2])):
        target = tmp_path / instrument / folder.name
        target.mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:2]:
            shutil.copy(image, target / image.name)
    assert READER.sniff(tmp_path)
    records, rejections = read_all(tmp_path)
    assert rejections == [] and len(records) == 6
    got = Counter((r.instrument, r.label, r.sample_id) for r in records)
    assert got == {
        ("FlowCam", classes[2].name, "FC"): 2,
        ("CytoSense", classes[1].name, "CS"): 2,
        ("IFCB", classes[0].name, "IFCB"): 2,
    }
    assert records[0].object_id.startswith(f"{tmp_path.name}/CS/")
    # ReadOptions.instrument overrides what the folders say
    overridden, _ = read_all(tmp_path, ReadOptions(instrument="Zooscan"))
    assert {r.instrument for r in overridden} == {"Zooscan"}


def test_broken_and_non_image_files(tmp_path):
    cls = tmp_path / "Tripos"
    cls.mkdir()
    good = sorted((DEMO / "demo-images" / "Tripos").glob("*.jpg"))[0]
    shutil.copy(good, cls / "good.jpg")
    (cls / "empty.png").write_bytes(b"")
    (cls / "garbage.jpg").write_text("this is not a JPEG")
    (cls / "notes.csv").write_text("a,b\n")
    (cls / "._good.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble file
    records, rejections = read_all(tmp_path)
    # the reader passes bytes on; decoding (once) and rejecting undecodable images is the store's job
    qualified = f"{tmp_path.name}/Tripos"  # the folder given names the collection
    assert [r.object_id for r in records] == [f"{qualified}/garbage.jpg", f"{qualified}/good.jpg"]
    assert records[0].sample_id is None
    assert [(r.object_id, r.reason) for r in rejections] == [(f"{qualified}/empty.png", "empty image file (0 bytes)")]
    assert all(r.source_file.startswith(str(tmp_path)) for r in rejections)

    from plankton_cli.ingest import ingest
    from plankton_cli.store import Store

    store = Store(tmp_path / "store")
    summary = ingest(store, [tmp_path])
    assert (summary.read, summary.stored, summary.n_rejected) == (3, 1, 2)
    stored = store.dataset("rejections").to_table().to_pylist()
    reasons = {r["object_id"]: r for r in stored}
    assert reasons[f"{qualified}/garbage.jpg"]["reason"].startswith("undecodable image")
    assert reasons[f"{qualified}/garbage.jpg"]["source_file"] == str(cls / "garbage.jpg")


def test_sniff(tmp_path):
    assert not READER.sniff(tmp_path)
    deep = tmp_path / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    shutil.copy(sorted(DEMO.rglob("*.jpg"))[0], deep / "x.jpg")
    assert not READER.sniff(tmp_path)  # images three folders down are not an image-folder layout
    assert READER.sniff(tmp_path / "a" / "b") and READER.sniff(deep / "x.jpg")


def test_two_folders_with_the_same_names_are_two_collections(tmp_path):
    """`A/Copepoda/img_0001.png` and `B/Copepoda/img_0001.png` (different pixels) are two objects in the store."""
    images = sorted((DEMO / "demo-images" / "Tripos").glob("*.jpg"))[:2]
    for folder, image in zip(("A", "B"), images):
        (tmp_path / folder / "Copepoda").mkdir(parents=True)
        shutil.copy(image, tmp_path / folder / "Copepoda" / "img_0001.jpg")
    assert [r.object_id for f in ("A", "B") for r in read_all(tmp_path / f)[0]] == [
        "A/Copepoda/img_0001.jpg", "B/Copepoda/img_0001.jpg"]
    named, _ = read_all(tmp_path / "A", ReadOptions(collection="cruise-7"))
    assert [r.object_id for r in named] == ["cruise-7/Copepoda/img_0001.jpg"]

    from plankton_cli.ingest import ingest
    from plankton_cli.store import Store

    store = Store(tmp_path / "store")
    summaries = [ingest(store, [tmp_path / folder]) for folder in ("A", "B")]
    assert [(s.read, s.stored) for s in summaries] == [(1, 1), (1, 1)]
    assert sorted(store.dataset("objects").to_table(columns=["object_id"]).column(0).to_pylist()) == [
        "A/Copepoda/img_0001.jpg", "B/Copepoda/img_0001.jpg"]
