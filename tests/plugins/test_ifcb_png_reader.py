"""The `ifcb-png` reader on folders of real IFCB ROIs exported as PNGs (from the pyifcb V2 test bin)."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plankton_cli.core import plugins
from plankton_cli.core.records import ReadOptions, Record, Rejection
from plankton_plugins.ifcb.png_reader import IFCBPngReader, parse_png_name
from plankton_plugins.ifcb.reader import IFCBBinReader

BIN = Path(__file__).resolve().parents[1] / "data/ifcb/pyifcb-testdata/white/D2013/D201305/D20130526"
V2 = "D20130526T095207_IFCB013"
READER = IFCBPngReader()


def real_rois() -> dict[int, np.ndarray]:
    (source,) = IFCBBinReader().discover(BIN / V2, ReadOptions())
    return {r.source_row: r.image for r in IFCBBinReader().read(source, ReadOptions()) if isinstance(r, Record)}


def export(rois: dict[int, np.ndarray], folder: Path, targets) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for target in targets:
        Image.fromarray(rois[target]).save(folder / f"{V2}_{target:05d}.png")


@pytest.fixture(scope="module")
def rois() -> dict[int, np.ndarray]:
    return real_rois()


def read_all(path: Path, options: ReadOptions | None = None) -> list[Record | Rejection]:
    options = options or ReadOptions()
    return [item for source in READER.discover(path, options) for item in READER.read(source, options)]


def test_png_names():
    bin_id, target = parse_png_name(f"{V2}_00099.png")
    assert (bin_id.bin_id, target) == (V2, 99)
    assert parse_png_name("IFCB5_2012_028_081515_00003.png")[1] == 3
    assert parse_png_name(f"{V2}_123456.png")[1] == 123456  # past the 5-digit overflow
    for name in (f"{V2}_99.png", f"{V2}_00099.jpg", f"{V2}_00099_blob.png", "decoy_00001.png", f"{V2}.png"):
        assert parse_png_name(name) is None


def test_class_folders_give_validated_labels(tmp_path, rois):
    export(rois, tmp_path / "2013" / "Ditylum", [7, 11])
    export(rois, tmp_path / "2013" / "detritus", [99])
    (tmp_path / "2013" / "detritus" / "notes.txt").write_text("not an ROI")
    (tmp_path / "2013" / "detritus" / "decoy_00001.png").write_bytes(b"")
    items = read_all(tmp_path)
    assert all(isinstance(item, Record) for item in items)
    assert [(item.label, item.source_row) for item in items] == [("Ditylum", 7), ("Ditylum", 11), ("detritus", 99)]
    roi = items[2]
    assert roi.label_status == "validated"
    assert roi.object_id == f"{V2}_00099" and roi.sample_id == V2
    assert (roi.instrument, roi.instrument_serial) == ("IFCB", "IFCB013")
    assert roi.acquired_at == datetime(2013, 5, 26, 9, 52, 7, tzinfo=timezone.utc)
    assert roi.pixel_size_um == pytest.approx(1 / 3.4)
    path = tmp_path / "2013" / "detritus" / f"{V2}_00099.png"
    assert roi.source_file == str(path)
    assert roi.image == path.read_bytes()  # the file's bytes as they are
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(roi.image))), rois[99])


def test_bin_folders_and_root_give_no_label(tmp_path, rois):
    export(rois, tmp_path / "png" / V2, [13, 21])
    export(rois, tmp_path, [32])
    items = read_all(tmp_path)
    assert [(item.source_row, item.label, item.label_status) for item in items] == [
        (32, None, "none"), (13, None, "none"), (21, None, "none")
    ]  # fmt: skip


def test_label_from_none_drops_class_folders(tmp_path, rois):
    export(rois, tmp_path / "Ditylum", [7])
    (item,) = read_all(tmp_path, ReadOptions(label_from="none"))
    assert item.label is None and item.label_status == "none"


def test_one_png_by_name(tmp_path, rois):
    export(rois, tmp_path / "Ditylum", [7, 11])
    path = tmp_path / "Ditylum" / f"{V2}_00011.png"
    (source,) = READER.discover(path, ReadOptions())
    (item,) = READER.read(source, ReadOptions())
    assert (item.source_row, item.label) == (11, "Ditylum")


def test_file_that_is_not_a_png_is_rejected(tmp_path, rois):
    export(rois, tmp_path / "Ditylum", [7])
    (tmp_path / "Ditylum" / f"{V2}_00008.png").write_bytes(b"GIF89a not a png")
    items = read_all(tmp_path)
    assert isinstance(items[0], Record)
    assert isinstance(items[1], Rejection) and items[1].source_row == 8 and "PNG" in items[1].reason


def test_registry_and_sniff(tmp_path, rois):
    export(rois, tmp_path / "Ditylum", [7])
    reader = plugins.load("reader", "ifcb-png")
    assert isinstance(reader, IFCBPngReader) and isinstance(reader, plugins.Reader)
    assert reader.name == "ifcb-png" and reader.sniff_priority == 10
    assert reader.sniff(tmp_path) and reader.sniff(tmp_path / "Ditylum" / f"{V2}_00007.png")
    assert plugins.sniff_reader(tmp_path) == "ifcb-png"
    assert not reader.sniff(BIN)  # raw bins are the `ifcb` reader's
    assert not IFCBBinReader().sniff(tmp_path)
