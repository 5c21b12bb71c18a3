"""The `ifcb` reader on the real pyifcb test bins, on damaged copies of them, and through the plugin registry."""

from __future__ import annotations

import json
import shutil
import tempfile
import types
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plankton_cli.core import plugins
from plankton_cli.core.records import ReadOptions, Record, Rejection
from plankton_plugins.ifcb.reader import IFCBBinReader

DATA = Path(__file__).resolve().parents[1] / "data" / "ifcb"
ROOT = DATA / "pyifcb-testdata"
EXPECTED = json.loads((DATA / "expected.json").read_text())
V2 = "D20130526T095207_IFCB013"
V1 = "IFCB5_2012_028_081515"
READER = IFCBBinReader()
OPTIONS = ReadOptions()


def base_of(bin_id: str) -> Path:
    return DATA / EXPECTED[bin_id]["path"]


def read(base: Path) -> list[Record | Rejection]:
    (source,) = READER.discover(base, OPTIONS)
    return list(READER.read(source, OPTIONS))


def records(items) -> dict[int, Record]:
    return {item.source_row: item for item in items if isinstance(item, Record)}


def rejections(items) -> dict[int, Rejection]:
    return {item.source_row: item for item in items if isinstance(item, Rejection)}


def copy_bin(bin_id: str, folder: Path) -> Path:
    """A copy of a real bin in `folder`, to damage; returns its base path."""
    for ext in (".hdr", ".adc", ".roi"):
        shutil.copy(base_of(bin_id).parent / (bin_id + ext), folder)
    return folder / bin_id


# -------------------------------------------------------------------------------------------------- discovery


def test_discover_finds_bins_and_skips_skip_beads_and_strays():
    sources = list(READER.discover(ROOT, OPTIONS))
    keys = [str(Path(source.key).relative_to(ROOT.resolve())) for source in sources]
    assert keys == [
        "data/2012/IFCB5_2012_028/IFCB5_2012_028_081515",
        "empty/D20150411T205456_IFCB012",
        "empty/IFCB5_2017_001_033645",
        "invalid/D20130101T101010_IFCB099",
        "partial/IFCB5_2012_028_081515",
        "white/D2013/D201305/D20130526/D20130526T095207_IFCB013",
    ]
    for source in sources:
        assert Path(source.key).is_absolute() and source.reader == "ifcb"
        assert all(f.is_file() and f.name.startswith(Path(source.key).name) for f in source.files)
    assert [f.suffix for f in sources[0].files] == [".hdr", ".adc", ".roi"]
    assert [f.suffix for f in sources[4].files] == [".hdr", ".adc"]  # partial/: no .roi


@pytest.mark.parametrize("suffix", [".adc", ".hdr", ".roi", ""])
def test_discover_one_bin_by_file_or_basename(suffix):
    base = base_of(V2)
    (source,) = READER.discover(base.parent / (base.name + suffix), OPTIONS)
    assert source.key == str(base.resolve())
    assert len(source.files) == 3


def test_discover_ignores_files_that_are_not_bins():
    decoy = ROOT / "data/2012/IFCB5_2012_028/000_decoy/decoy.adc"
    assert list(READER.discover(decoy, OPTIONS)) == []
    assert not READER.sniff(decoy)
    assert list(READER.discover(decoy.parent, OPTIONS)) == []


def test_registry_loads_the_reader_and_sniffs_the_test_folder():
    reader = plugins.load("reader", "ifcb")
    assert isinstance(reader, IFCBBinReader) and isinstance(reader, plugins.Reader)
    assert reader.name == "ifcb" and reader.sniff_priority == 20
    assert reader.sniff(ROOT) and reader.sniff(base_of(V2).parent / (V2 + ".roi"))
    assert plugins.sniff_reader(ROOT) == "ifcb"
    assert plugins.sniff_reader(base_of(V1).parent) == "ifcb"


def test_a_station_folder_is_claimed_before_the_readers_that_walk_it(monkeypatch):
    """Issue 22: EcoTaxa's and the PNG reader's sniffs list every folder of a tree to rule themselves out (a
    nightly `plankton ingest ifcb/` would list the station's whole history); the bin reader is asked first."""
    asked = []
    for name in ("ecotaxa", "ifcb-png"):
        reader = type(plugins.load("reader", name))
        monkeypatch.setattr(reader, "sniff", lambda self, path, name=name: asked.append(name) or False)
    assert plugins.sniff_reader(ROOT) == "ifcb" and asked == []


# ------------------------------------------------------------------------------------------------------ real bins


def test_v2_bin_matches_expected():
    expected = EXPECTED[V2]
    items = read(base_of(V2))
    assert all(isinstance(item, Record) for item in items)
    assert [item.source_row for item in items] == expected["roi_numbers"]
    roi = records(items)[99]
    assert roi.image.dtype == np.uint8 and roi.image.shape == tuple(expected["roi_99"]["shape"])
    assert roi.image[:5, :5].tolist() == expected["roi_99"]["top_left_5x5"]
    assert roi.object_id == f"{V2}_00099" and roi.sample_id == V2
    assert roi.source_file == str((base_of(V2).parent / (V2 + ".roi")).resolve())
    assert (roi.instrument, roi.instrument_serial) == ("IFCB", "IFCB013")
    assert roi.acquired_at == datetime(2013, 5, 26, 9, 52, 7, tzinfo=timezone.utc)
    assert roi.pixel_size_um == pytest.approx(1 / 3.4)
    assert roi.label is None and roi.label_status == "none"
    meta = roi.metadata
    assert meta["triggers"] == str(expected["n_targets"]) and meta["rois"] == str(expected["n_rois"])
    assert float(meta["ml_analyzed"]) == pytest.approx(0.25 * (1184.037103 - 11.62298) / 60)
    assert (meta["adc.ROI_WIDTH"], meta["adc.ROI_HEIGHT"], meta["adc.START_BYTE"]) == ("64", "34", "77472")
    assert meta["adc.TRIGGER"] == "99" and "adc.INHIBIT_TIME" in meta
    for key, value in expected["header_samples"].items():
        assert meta[f"hdr.{key}"] == str(value)
    assert all(isinstance(value, str) for value in meta.values())
    sizes = {item.image.size for item in items}
    assert sum(sizes) <= expected["file_sizes"]["roi"]


def test_v1_bin_is_stitched_like_pyifcb():
    expected = EXPECTED[V1]
    stitching = expected["stitching"]
    items = read(base_of(V1))
    by_target = records(items)
    assert list(by_target) == stitching["roi_numbers_after_stitching"] and len(items) == 5
    assert by_target[1].image.shape == tuple(expected["roi_1"]["shape"])
    assert by_target[1].image[:5, :5].tolist() == expected["roi_1"]["top_left_5x5"]
    assert by_target[3].image.shape == tuple(stitching["stitched_roi_3_shape"])
    assert by_target[3].metadata["stitched_with"] == "4"
    for target, corners in stitching["corner_pixels_after_stitching"].items():
        image = by_target[int(target)].image
        assert [image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]] == corners
    meta = by_target[1].metadata
    assert (meta["triggers"], meta["rois"]) == ("7", "6")
    assert by_target[1].instrument_serial == "IFCB5"
    assert by_target[1].acquired_at == datetime(2012, 1, 28, 8, 15, 15, tzinfo=timezone.utc)
    for key, value in expected["header_samples"].items():
        assert meta[f"hdr.{key}"] == str(value)
    assert meta["adc.ROI_WIDTH"] == "96" and meta["adc.VALVE_STATUS"] == "-.27557373046875"


def test_read_streams():
    (source,) = READER.discover(base_of(V2), OPTIONS)
    stream = READER.read(source, OPTIONS)
    assert isinstance(stream, types.GeneratorType)
    assert next(stream).source_row == 7
    stream.close()


@pytest.mark.parametrize(
    "relative", ["empty/D20150411T205456_IFCB012", "empty/IFCB5_2017_001_033645", "invalid/D20130101T101010_IFCB099"]
)
def test_empty_bins_hold_zero_objects(relative):
    assert read(ROOT / relative) == []


def test_bin_without_roi_file_rejects_each_roi():
    items = read(ROOT / "partial" / V1)
    assert all(isinstance(item, Rejection) for item in items)
    assert [item.source_row for item in items] == [1, 2, 3, 4, 5, 6]
    assert {item.reason for item in items} == {"missing .roi file"}
    assert items[0].source_file.endswith("partial/IFCB5_2012_028_081515.roi")
    assert items[0].object_id == f"{V1}_00001"


def test_crlf_adc_reads_the_same(tmp_path):
    base = copy_bin(V2, tmp_path)
    adc = base.with_suffix(".adc")
    adc.write_bytes(adc.read_bytes().replace(b"\n", b"\r\n"))  # as the acquisition software writes it
    damaged, clean = records(read(base)), records(read(base_of(V2)))
    assert list(damaged) == list(clean)
    assert all(np.array_equal(damaged[t].image, clean[t].image) for t in clean)
    assert damaged[99].metadata["adc.INHIBIT_TIME"] == clean[99].metadata["adc.INHIBIT_TIME"]


def test_instrument_option_overrides():
    (source,) = READER.discover(base_of(V2), OPTIONS)
    first = next(READER.read(source, ReadOptions(instrument="IFCB-test")))
    assert first.instrument == "IFCB-test"


# ----------------------------------------------------------------------------------------------------- bad input


def test_truncated_roi_rejection_names_target_offset_and_sizes(tmp_path):
    base = copy_bin(V2, tmp_path)
    roi = base.with_suffix(".roi")
    roi.write_bytes(roi.read_bytes()[: 77472 + 100])  # target 99 (64x34 at 77,472) loses all but 100 bytes
    items = read(base)
    assert sorted(records(items)) == [t for t in EXPECTED[V2]["roi_numbers"] if t < 99]
    reason = rejections(items)[99].reason
    assert "target 99" in reason and "START_BYTE 77472" in reason and "2176" in reason and "100" in reason
    assert "past the end" in rejections(items)[102].reason
    assert rejections(items)[99].source_file == str(roi)
    assert len(items) == 19  # every ROI is accounted for


def test_bad_adc_rows_are_rejected_and_reading_goes_on(tmp_path):
    base = copy_bin(V2, tmp_path)
    adc = base.with_suffix(".adc")
    lines = adc.read_bytes().split(b"\n")
    fields = {n: lines[n - 1].split(b",") for n in (7, 11, 13, 21, 32, 33)}
    fields[7][17] = b"99999999"  # START_BYTE past the end of the .roi
    fields[11][15] = b"wide"  # non-numeric width
    fields[13] = fields[13][:20]  # wrong column count
    fields[21][15], fields[21][16] = b"5000", b"5000"  # absurd geometry
    fields[32][16] = b"\xff\xfe"  # not UTF-8
    fields[33][15] = b"81"  # 80 -> 81 wide: runs into target 47's pixels
    for n, row in fields.items():
        lines[n - 1] = b",".join(row)
    adc.write_bytes(b"\n".join(lines))
    items = read(base)
    rejected = rejections(items)
    assert sorted(rejected) == [7, 11, 13, 21, 32, 33, 47]
    assert "past the end" in rejected[7].reason
    assert "ROI_WIDTH" in rejected[11].reason and "columns" in rejected[13].reason
    assert "absurd" in rejected[21].reason and "UTF-8" in rejected[32].reason
    assert "overlap" in rejected[33].reason and "overlap" in rejected[47].reason
    assert rejected[11].source_file == str(adc) and rejected[11].object_id == f"{V2}_00011"
    clean = records(read(base_of(V2)))
    good = records(items)
    assert sorted(good) == sorted(set(EXPECTED[V2]["roi_numbers"]) - set(rejected))
    assert all(np.array_equal(good[t].image, clean[t].image) for t in good)


@pytest.mark.parametrize("width, height", [(200, 50), (4000, 300)], ids=["covers-the-next-rois", "past-the-end"])
def test_one_absurd_adc_row_rejects_only_its_roi(tmp_path, width, height):
    """A corrupt size on one line used to make its range overlap every later ROI, and the whole bin was rejected."""
    base = copy_bin(V2, tmp_path)
    adc = base.with_suffix(".adc")
    lines = adc.read_bytes().split(b"\n")
    fields = lines[5 - 1].split(b",")
    fields[15], fields[16] = str(width).encode(), str(height).encode()
    lines[5 - 1] = b",".join(fields)
    adc.write_bytes(b"\n".join(lines))
    items = read(base)
    rejected, good = rejections(items), records(items)
    assert sorted(rejected) == [5]
    assert sorted(good) == sorted(set(EXPECTED[V2]["roi_numbers"]) - {5})
    clean = records(read(base_of(V2)))
    assert all(np.array_equal(good[t].image, clean[t].image) for t in good)


def test_bin_without_hdr_in_a_folder_is_rejected_not_skipped(tmp_path):
    base = copy_bin(V2, tmp_path)
    base.with_suffix(".hdr").unlink()
    (source,) = READER.discover(tmp_path, OPTIONS)
    items = list(READER.read(source, OPTIONS))
    assert items and all(isinstance(item, Rejection) for item in items)
    assert sorted(item.source_row for item in items) == EXPECTED[V2]["roi_numbers"]  # counts add up
    assert {item.reason.split(" (")[0] for item in items} == {"missing .hdr file"}
    assert items[0].source_file == str(base.with_suffix(".hdr"))
    (named,) = READER.discover(base.with_suffix(".adc"), OPTIONS)  # named explicitly: read without it
    assert all(isinstance(item, Record) for item in READER.read(named, OPTIONS))


def test_damaged_v1_pair_is_rejected_together(tmp_path):
    base = copy_bin(V1, tmp_path)
    roi = base.with_suffix(".roi")
    roi.write_bytes(roi.read_bytes()[:55000])  # inside target 4 (52,407 + 5,085 bytes)
    items = read(base)
    assert sorted(records(items)) == [1, 2]
    rejected = rejections(items)
    assert sorted(rejected) == [3, 4, 5, 6]
    assert "stitch partner target 4" in rejected[3].reason and "target 4" in rejected[4].reason


def test_unreadable_bin_id_is_one_rejection(tmp_path):
    from plankton_cli.core.records import Source

    source = Source(key=str(tmp_path / "not_a_bin"), files=(), reader="ifcb")
    (item,) = READER.read(source, OPTIONS)
    assert isinstance(item, Rejection) and item.source_row is None


# ------------------------------------------------------------------------------------- property: damaged copies


@cache
def clean_v2() -> tuple[dict[int, np.ndarray], bytes, bytes, dict[int, tuple[int, int]]]:
    """Images, .roi bytes, .adc bytes and the (START_BYTE, size) of each ROI of the undamaged V2 bin."""
    items = records(read(base_of(V2)))
    images = {t: r.image for t, r in items.items()}
    ranges = {t: (int(r.metadata["adc.START_BYTE"]), r.image.size) for t, r in items.items()}
    base = base_of(V2)
    return images, (base.parent / (V2 + ".roi")).read_bytes(), (base.parent / (V2 + ".adc")).read_bytes(), ranges


def read_damaged(roi: bytes | None = None, adc: bytes | None = None) -> list[Record | Rejection]:
    with tempfile.TemporaryDirectory() as folder:
        base = copy_bin(V2, Path(folder))
        if roi is not None:
            base.with_suffix(".roi").write_bytes(roi)
        if adc is not None:
            base.with_suffix(".adc").write_bytes(adc)
        return read(base)


PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(fraction=st.floats(0, 1))
def test_truncated_roi_never_yields_a_wrong_pixel(fraction):
    images, roi, _, ranges = clean_v2()
    keep = int(len(roi) * fraction)
    items = read_damaged(roi=roi[:keep])
    good, bad = records(items), rejections(items)
    assert all(np.array_equal(good[t].image, images[t]) for t in good)
    assert sorted(bad) == sorted(t for t, (start, size) in ranges.items() if start + size > keep)
    assert len(items) == len(images)


@PROPERTY
@given(data=st.data())
def test_corrupted_roi_byte_changes_exactly_that_pixel(data):
    images, roi, _, ranges = clean_v2()
    position = data.draw(st.integers(0, len(roi) - 1))
    value = data.draw(st.integers(0, 255))
    items = read_damaged(roi=roi[:position] + bytes([value]) + roi[position + 1 :])
    good = records(items)
    assert sorted(good) == sorted(images) and len(items) == len(images)  # pixel bytes carry no checksum
    for target, record in good.items():
        expected = images[target].copy()
        start, size = ranges[target]
        if start <= position < start + size:
            expected.flat[position - start] = value
        assert np.array_equal(record.image, expected)


@PROPERTY
@given(fraction=st.floats(0, 1))
def test_truncated_adc_never_yields_a_wrong_pixel(fraction):
    images, _, adc, _ = clean_v2()
    truncated = adc[: int(len(adc) * fraction)]
    items = read_damaged(adc=truncated)
    good = records(items)
    assert all(np.array_equal(good[t].image, images[t]) for t in good)
    last_line = truncated.rstrip(b"\n").count(b"\n") + 1  # the cut line may be rejected, image or not
    assert set(good) | set(rejections(items)) <= set(images) | {last_line}


@PROPERTY
@given(data=st.data())
def test_corrupted_adc_byte_never_yields_a_wrong_pixel(data):
    """Every ROI is the clean one, except that of the damaged line, which is rejected or is exactly the bytes its
    (damaged) geometry names: a changed digit there is indistinguishable from a real one.

    Newlines are left alone: target numbers are line numbers, so a lost or added line end renumbers every later
    target by definition of the format.
    """
    images, roi, adc, _ = clean_v2()
    position = data.draw(st.integers(0, len(adc) - 1).filter(lambda p: adc[p : p + 1] != b"\n"))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != ord("\n")))
    damaged_line = adc[:position].count(b"\n") + 1
    items = read_damaged(adc=adc[:position] + bytes([value]) + adc[position + 1 :])
    good = records(items)
    assert set(good) | set(rejections(items)) <= set(images) | {damaged_line}
    for target, record in good.items():
        if target != damaged_line:
            assert np.array_equal(record.image, images[target])
        else:
            meta = record.metadata
            width, height = int(float(meta["adc.ROI_WIDTH"])), int(float(meta["adc.ROI_HEIGHT"]))
            start = int(float(meta["adc.START_BYTE"]))
            expected = np.frombuffer(roi[start : start + width * height], np.uint8).reshape(height, width)
            assert np.array_equal(record.image, expected)
