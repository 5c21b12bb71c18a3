"""Pure IFCB parsing (`plankton_plugins.ifcb.bins`) on the real pyifcb test bins and small hand-made lines."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from plankton_plugins.ifcb.bins import (
    SCHEMA_V1,
    SCHEMA_V2,
    AdcLineError,
    AdcRow,
    Header,
    allowed_column_counts,
    infill,
    ml_analyzed,
    overlapping_targets,
    parse_adc,
    parse_bin_id,
    parse_hdr,
    roi_pixels,
    roi_range_problem,
    stitch,
    stitch_pairs,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "ifcb"
EXPECTED = json.loads((DATA / "expected.json").read_text())
V2 = "D20130526T095207_IFCB013"
V1 = "IFCB5_2012_028_081515"


def bin_path(bin_id: str, ext: str) -> Path:
    return DATA / (EXPECTED[bin_id]["path"] + ext)


def adc_rows(bin_id: str, schema) -> list[AdcRow]:
    parsed = list(parse_adc(bin_path(bin_id, ".adc").read_bytes(), schema))
    assert all(isinstance(row, AdcRow) for row in parsed)
    return parsed


# ------------------------------------------------------------------------------------------------------- bin ids


def test_bin_ids_of_both_generations():
    v2 = parse_bin_id(V2)
    assert (v2.schema, v2.instrument_serial, v2.instrument_number) == ("v2", "IFCB013", 13)
    assert v2.acquired_at == datetime(2013, 5, 26, 9, 52, 7, tzinfo=timezone.utc)
    v1 = parse_bin_id(V1)
    assert (v1.schema, v1.instrument_serial, v1.instrument_number) == ("v1", "IFCB5", 5)
    assert v1.acquired_at == datetime(2012, 1, 28, 8, 15, 15, tzinfo=timezone.utc)  # day-of-year 028


@pytest.mark.parametrize(
    "name",
    ["decoy", "D20130526T095207_IFCB13", "D20131326T095207_IFCB013", "IFCB5_2012_400_081515", "IFCB13_2012_028_081515",
     "D20130526T095207_IFCB013.adc", "D20130526T095207_IFCB013_00007", ""],
)  # fmt: skip
def test_invalid_bin_ids(name):
    assert parse_bin_id(name) is None


# ----------------------------------------------------------------------------------------------------------- .hdr


@pytest.mark.parametrize("bin_id", [V2, V1])
def test_header_samples_and_file_sizes(bin_id):
    expected = EXPECTED[bin_id]
    header = parse_hdr(bin_path(bin_id, ".hdr").read_text())
    for key, value in expected["header_samples"].items():
        assert header[key] == value
        assert header[key.upper()] == value  # keys are case-insensitive
    for ext, size in expected["file_sizes"].items():
        assert bin_path(bin_id, f".{ext}").stat().st_size == size


def test_v2_header_details():
    header = parse_hdr(bin_path(V2, ".hdr").read_text())
    assert header["softwareversion"].startswith("Imaging FlowCytobot Acquisition Software version 2.0")
    assert header["imagerID"] == 13  # trailing tab stripped, value evaluated
    assert header["DataFilePath"] == "c:/Data"
    assert header["runType"] == "NORMAL"
    assert header.number("SyringeSampleVolume") == 5.0
    assert "Housekeeping firmware version 31" not in " ".join(header)  # lines without ": " are not keys


def test_mclane_header_is_case_insensitive_and_keeps_last_run_type():
    text = "SoftwareVersion: 2.0.0.0\nrunTime: 1220.5\nInhibitTime: 20.5\nrunType: NORMAL\nRunType: ALT\n"
    header = parse_hdr(text)
    assert header.number("runtime") == 1220.5 and header.number("inhibitTime") == 20.5
    assert header["runType"] == "ALT"


def test_transitional_header():
    text = (
        "Imaging FlowCytobot Acquisition Software version 2.0; May 2010\r\n"
        "Sample Date 12/10/2010 18:33:02\r\n"
        "run time = 1205.4 s  inhibit time = 31.2 s\r\n"
        "23.1 temperature, 45.6 humidity\r\n"
    )
    header = parse_hdr(text)
    assert header.number("runTime") == 1205.4 and header.number("inhibitTime") == 31.2
    assert header["temperature"] == 23.1 and header["humidity"] == 45.6


def test_empty_header():
    assert len(parse_hdr("")) == 0


# ----------------------------------------------------------------------------------------------------------- .adc


@pytest.mark.parametrize("bin_id,schema", [(V2, SCHEMA_V2), (V1, SCHEMA_V1)])
def test_adc_targets_and_images(bin_id, schema):
    expected = EXPECTED[bin_id]
    rows = adc_rows(bin_id, schema)
    assert len(rows) == expected["n_targets"]
    assert [row.target for row in rows] == list(range(1, expected["n_targets"] + 1))
    with_images = [row.target for row in rows if row.has_image]
    assert len(with_images) == expected["n_rois"]
    assert with_images == expected["roi_numbers"]
    assert all(len(row.fields) == len(schema.columns) for row in rows)  # V1's trailing comma dropped


@pytest.mark.parametrize("bin_id,schema,target", [(V2, SCHEMA_V2, 99), (V1, SCHEMA_V1, 1)])
def test_roi_pixels_are_height_by_width(bin_id, schema, target):
    expected = EXPECTED[bin_id][f"roi_{target}"]
    row = next(row for row in adc_rows(bin_id, schema) if row.target == target)
    data = bin_path(bin_id, ".roi").read_bytes()
    assert roi_range_problem(row, len(data)) is None
    pixels = roi_pixels(data, row)
    assert pixels.dtype == np.uint8 and pixels.shape == tuple(expected["shape"])
    assert pixels[:5, :5].tolist() == expected["top_left_5x5"]


def test_v1_roi_file_has_one_byte_before_and_after_the_rois():
    rows = [row for row in adc_rows(V1, SCHEMA_V1) if row.has_image]
    assert rows[0].start_byte == 1
    assert rows[-1].start_byte + rows[-1].n_bytes == EXPECTED[V1]["file_sizes"]["roi"] - 1
    assert overlapping_targets(rows) == {}


def test_adc_line_errors_keep_line_numbers():
    good = "1,0,0,0,0,0,0,0,0,10,20,4,3,0,0,"
    lines = [
        good,
        "",  # blank: uses up target 2
        "3,0,0,0,0,0,0,0,0,10,20,4,3,x,0,",  # non-numeric START_BYTE
        "4,0,0,0,0,0,0,0,0,10,20,4,3,0,",  # 14 columns
        "5,0,0,0,0,0,0,0,0,10,20,5000,5000,0,0,",  # 25 million pixels
        "6,0,0,0,0,0,0,0,0,10,20,-4,3,0,0,",  # negative width
        "7,0,0,0,0,0,0,0,0,10,20,0,0,x,0,",  # no image: START_BYTE does not matter
        "8,0,0,0,0,0,0,0,0,10,20,4.0,3,12,0,",  # integral floats are integers
    ]
    data = "\r\n".join(lines).encode() + b"\r\n9,\xff\xfe,0\r\n"
    parsed = list(parse_adc(data, SCHEMA_V1))
    assert [item.target for item in parsed] == [1, 3, 4, 5, 6, 7, 8, 9]
    kinds = [type(item).__name__ for item in parsed]
    assert kinds == ["AdcRow", "AdcLineError", "AdcLineError", "AdcLineError", "AdcLineError", "AdcRow", "AdcRow",
                     "AdcLineError"]  # fmt: skip
    reasons = {item.target: item.reason for item in parsed if isinstance(item, AdcLineError)}
    assert "START_BYTE" in reasons[3]
    assert "14 columns" in reasons[4]
    assert "absurd geometry" in reasons[5]
    assert "negative" in reasons[6]
    assert "UTF-8" in reasons[9]
    assert not parsed[5].has_image
    assert (parsed[6].width, parsed[6].height, parsed[6].start_byte) == (4, 3, 12)


def test_v2_accepts_acoustic_columns_and_declared_formats():
    assert allowed_column_counts(SCHEMA_V2) == {24, 26}
    declared = Header([("ADCFileFormat", ", ".join(f"c{i}" for i in range(25)))])
    assert allowed_column_counts(SCHEMA_V2, declared) == {24, 25, 26}
    line = ",".join(["1"] * 15 + ["4", "3", "0"] + ["0"] * 8)
    (row,) = parse_adc(line.encode(), SCHEMA_V2)
    assert isinstance(row, AdcRow) and len(row.fields) == 26


def test_range_problems_name_target_start_and_sizes():
    row = AdcRow(7, (), 7, 0, 0, width=10, height=5, start_byte=100)
    assert roi_range_problem(row, 150) is None
    reason = roi_range_problem(row, 120)
    assert "target 7" in reason and "START_BYTE 100" in reason and "50 bytes" in reason and "20" in reason
    assert "past the end" in roi_range_problem(row, 100)


def test_overlapping_targets_name_each_other():
    rows = [AdcRow(1, (), 1, 0, 0, 10, 1, 0), AdcRow(2, (), 2, 0, 0, 10, 1, 5), AdcRow(3, (), 3, 0, 0, 10, 1, 20)]
    assert overlapping_targets(rows) == {2: 1, 1: 2}


# ------------------------------------------------------------------------------------------------------ stitching


def test_v1_stitching_matches_pyifcb():
    stitching = EXPECTED[V1]["stitching"]
    rows = adc_rows(V1, SCHEMA_V1)
    pairs = stitch_pairs(rows)
    assert {first: second.target for first, second in pairs.items()} == {3: 4}
    data = bin_path(V1, ".roi").read_bytes()
    a, b = rows[2], pairs[3]
    image, gap = stitch(a, roi_pixels(data, a), b, roi_pixels(data, b))
    assert image.shape == tuple(stitching["stitched_roi_3_shape"])
    assert image[23:27, 177:183].tolist() == stitching["stitched_roi_3_rows_23_to_26_cols_177_to_182_before_infill"]
    assert gap.any() and not image[gap].any()
    filled = infill(image, gap)
    corners = [filled[0, 0], filled[0, -1], filled[-1, 0], filled[-1, -1]]
    assert corners == stitching["corner_pixels_after_stitching"]["3"]
    assert np.array_equal(filled[~gap], image[~gap])  # only the gap changes
    assert len(np.unique(filled[gap])) == 1


def test_no_stitching_without_overlap():
    a = AdcRow(1, (), 1, x=0, y=0, width=10, height=10, start_byte=0)
    b = AdcRow(2, (), 1, x=8, y=0, width=10, height=10, start_byte=100)  # 2 px overlap: not enough
    c = AdcRow(3, (), 1, x=7, y=0, width=10, height=10, start_byte=200)  # 3 px overlap with a, but b is between
    assert stitch_pairs([a, b]) == {}
    assert stitch_pairs([a, c]) == {1: c}
    assert stitch_pairs([b, AdcRow(3, (), 2, 8, 0, 10, 10, 200)]) == {}  # different trigger


def test_infill_without_gap_changes_nothing():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(infill(image, np.zeros((3, 4), bool)), image)


# ---------------------------------------------------------------------------------------------------- ml_analyzed


def test_ml_analyzed_v2_from_header_and_adc_times():
    rows = adc_rows(V2, SCHEMA_V2)
    header = parse_hdr(bin_path(V2, ".hdr").read_text())
    assert (header["runTime"], header["inhibitTime"]) == (1231.024861, 11.62298)
    # last ADC line: RUN_TIME 1184.037103 s, INHIBIT_TIME 11.620326 s. The header's run time is 4 % off, so the
    # ADC's is used; its inhibit time is within 2 %, so the header's is kept. 0.25 ml/min.
    assert ml_analyzed(rows, header, parse_bin_id(V2)) == pytest.approx(0.25 * (1184.037103 - 11.62298) / 60)
    assert ml_analyzed(rows, Header(), parse_bin_id(V2)) == pytest.approx(0.25 * (1184.037103 - 11.620326) / 60)


def test_ml_analyzed_v2_prefers_header_times_within_two_percent():
    rows = adc_rows(V2, SCHEMA_V2)
    close = Header([("runTime", 1190.0), ("inhibitTime", 11.7)])
    assert ml_analyzed(rows, close, parse_bin_id(V2)) == pytest.approx(0.25 * (1190.0 - 11.7) / 60)
    far = Header([("runTime", 600.0), ("inhibitTime", 11.7)])
    assert ml_analyzed(rows, far, parse_bin_id(V2)) == pytest.approx(0.25 * (1184.037103 - 11.7) / 60)
    assert ml_analyzed([], close, parse_bin_id(V2)) == pytest.approx(0.25 * (1190.0 - 11.7) / 60)
    assert ml_analyzed([], Header(), parse_bin_id(V2)) is None


def test_ml_analyzed_v1_from_look_time():
    rows = adc_rows(V1, SCHEMA_V1)
    # six triggers (3 repeats); every processing time is below the 0.073 s floor; last frame grab 1.251953 s
    look_time = 1.251953 - 5 * 0.073 - 0.073
    assert ml_analyzed(rows, Header(), parse_bin_id(V1)) == pytest.approx(look_time * 5 / 48000 * 40)
    assert ml_analyzed([], Header(), parse_bin_id(V1)) is None
