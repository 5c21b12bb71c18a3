"""Background-matched square padding on real vignettes: UVP6 (dark), IFCB (light), ZooScan (legend), VPR (colour)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from conftest import SHARED
from plankton_cli.prepare.square_pad import (
    SCALE_BAR_HEIGHT,
    CropSpec,
    PadResult,
    contact_sheet,
    detect_banner,
    detect_scale_bar,
    edge_background,
    pad_to_square,
    preset_for,
)



def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (GPL data sets are read from ../shared/data, not shipped)")
    return path


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def uvp6() -> list[tuple[str, np.ndarray]]:
    """Every 40th UVP6 vignette (32 of 1,250, all 10 classes): dark background, grey."""
    paths = sorted(_need(SHARED / "images" / "uvp6-vignettes").glob("*/*.png"))
    return [(p.stem, _load(p)) for p in paths[::40]]


@pytest.fixture(scope="module")
def ifcb() -> list[tuple[str, np.ndarray]]:
    """The 19 ROIs of the V2 test bin (ADC columns 15, 16, 17 = width, height, start byte): light background."""
    base = _need(SHARED / "ifcb/pyifcb-testdata/white/D2013/D201305/D20130526/D20130526T095207_IFCB013.roi")
    roi = base.read_bytes()
    rois = []
    for target, line in enumerate(base.with_suffix(".adc").read_text().splitlines(), start=1):
        width, height, start = (int(v) for v in line.split(",")[15:18])
        if width and height:
            pixels = np.frombuffer(roi, dtype=np.uint8, count=width * height, offset=start).reshape(height, width)
            rois.append((f"{base.stem}_{target:05d}", pixels))
    assert len(rois) == 19
    return rois


@pytest.fixture(scope="module")
def zooscan() -> list[tuple[str, np.ndarray]]:
    """The ZooScan vignettes of EcoTaxa's import QA bundle: white background, 31-px legend at the bottom."""
    paths = sorted(_need(SHARED / "ecotaxa/ecotaxa-back-qa/import_test").glob("*/*.jpg"))
    assert len(paths) == 8
    return [(p.stem, _load(p)) for p in paths]


def _edge_oracle(channel: np.ndarray) -> tuple[int, list[float]]:
    """Independent reference for one channel: (mode by Counter, every std a correct 20 %-closest choice can give).

    Pixels nearer the mode than the cut-off distance are always kept; at the cut-off, which of mode - d and
    mode + d fill the remaining places is arbitrary, so every split is listed.
    """
    edge = np.concatenate((channel[0], channel[-1], channel[1:-1, 0], channel[1:-1, -1])).astype(int)
    counts = Counter(edge.tolist())
    top = max(counts.values())
    mode = min(v for v, c in counts.items() if c == top)
    k = int(np.ceil(0.2 * edge.size))
    cutoff = int(np.sort(np.abs(edge - mode))[k - 1])
    inside = edge[np.abs(edge - mode) < cutoff].tolist()
    rest = k - len(inside)
    below, above = counts[mode - cutoff], counts[mode + cutoff] if cutoff else 0
    stds = [
        float(np.std(inside + [mode + cutoff] * j + [mode - cutoff] * (rest - j)))
        for j in range(max(0, rest - below), min(rest, above) + 1)
    ]
    return mode, stds or [float(np.std(inside + [mode] * rest))]


def check_padding(img: np.ndarray, result: PadResult, *, crop: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
    """Everything `pad_to_square` promises about one image."""
    top, bottom, left, right = crop
    kept = img[top : img.shape[0] - bottom, left : img.shape[1] - right]
    height, width = kept.shape[:2]
    out = result.image
    side = max(height, width)
    assert out.shape[:2] == (side, side) and out.shape[2:] == img.shape[2:] and out.dtype == np.uint8
    assert (result.orig_height, result.orig_width) == img.shape[:2]
    assert (result.crop_top, result.crop_bottom, result.crop_left, result.crop_right) == crop
    vertical, horizontal = result.pad_top + result.pad_bottom, result.pad_left + result.pad_right
    assert (vertical, horizontal) == (side - height, side - width)
    assert 0 <= result.pad_bottom - result.pad_top <= 1 and 0 <= result.pad_right - result.pad_left <= 1
    interior = out[result.pad_top : result.pad_top + height, result.pad_left : result.pad_left + width]
    np.testing.assert_array_equal(interior, kept)
    assert (result.fill, result.noise_std) == edge_background(kept)


def pad_pixels(result: PadResult) -> np.ndarray:
    """The pixels that padding added, as (n, C)."""
    out = result.image if result.image.ndim == 3 else result.image[:, :, None]
    mask = np.ones(out.shape[:2], dtype=bool)
    mask[result.pad_top : out.shape[0] - result.pad_bottom, result.pad_left : out.shape[1] - result.pad_right] = False
    return out[mask]


def test_uvp6_vignettes_dark_background(uvp6):
    for object_id, img in uvp6:
        result = pad_to_square(img, object_id)
        check_padding(img, result)
        mode, stds = _edge_oracle(img)
        assert result.fill == (mode,) and mode <= 10  # dark UVP6 background
        assert min(abs(result.noise_std[0] - s) for s in stds) < 1e-9
        pad = pad_pixels(result)
        if pad.size:  # UVP6 backgrounds are mostly exact zeros: the closest 20 % have std 0, so the pad is flat
            assert abs(pad.mean() - mode) <= max(0.5, 3 * result.noise_std[0])


def test_ifcb_rois_light_background_with_matched_noise(ifcb):
    for object_id, img in ifcb:
        result = pad_to_square(img, object_id)
        check_padding(img, result)
        mode, _ = _edge_oracle(img)
        assert result.fill == (mode,) and 150 <= mode <= 200  # light IFCB background
        std = result.noise_std[0]
        assert 0.2 < std < 3  # camera noise: not flat, not an object
        pad = pad_pixels(result).astype(float)
        # Integer rounding adds about 1/12 to the variance of N(mode, std).
        assert pad.mean() == pytest.approx(mode, abs=0.25)
        assert pad.std() == pytest.approx(np.sqrt(std**2 + 1 / 12), abs=0.2)


def test_noise_std_is_that_of_the_20_percent_of_edge_pixels_closest_to_the_mode(ifcb):
    for _, img in ifcb:
        (mode,), (std,) = edge_background(img)
        oracle_mode, oracle_stds = _edge_oracle(img)
        assert mode == oracle_mode
        assert min(abs(std - s) for s in oracle_stds) < 1e-9


def test_same_id_same_bytes_in_this_and_another_process(ifcb):
    object_id, img = ifcb[0]
    first, second = pad_to_square(img, object_id), pad_to_square(img.copy(), object_id)
    assert first.image.tobytes() == second.image.tobytes()
    digest = hashlib.sha256(first.image.tobytes()).hexdigest()
    child = f"""
import hashlib, numpy as np
from plankton_cli.prepare.square_pad import pad_to_square
img = np.frombuffer(bytes.fromhex({img.tobytes().hex()!r}), dtype=np.uint8).reshape({img.shape})
print(hashlib.sha256(pad_to_square(img, {object_id!r}).image.tobytes()).hexdigest())
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == digest


def test_different_ids_give_different_noise_and_the_same_object(ifcb):
    object_id, img = ifcb[0]
    a, b = pad_to_square(img, object_id), pad_to_square(img, object_id + "x")
    assert a.noise_std[0] > 0
    assert not np.array_equal(pad_pixels(a), pad_pixels(b))
    interior = (slice(a.pad_top, a.pad_top + img.shape[0]), slice(a.pad_left, a.pad_left + img.shape[1]))
    np.testing.assert_array_equal(a.image[interior], b.image[interior])


def test_rgb_is_padded_per_channel():
    """VPR vignettes are truly coloured (dark blue background): each channel gets its own fill and noise."""
    paths = sorted(_need(SHARED / "ecotaxa/ecotaxa-back-qa/import_sparse").glob("*.png"))
    for path in paths:
        img = _load(path)
        assert img.ndim == 3 and img.shape[2] == 3
        result = pad_to_square(img, path.name)
        check_padding(img, result)
        per_channel = [edge_background(np.ascontiguousarray(img[:, :, c])) for c in range(3)]
        assert result.fill == tuple(f for (f,), _ in per_channel)
        assert result.noise_std == tuple(s for _, (s,) in per_channel)
        assert len(set(result.fill)) > 1  # the background really is coloured
        np.testing.assert_array_equal(pad_pixels(result).mean(axis=0), result.fill)  # flat: std 0 here


def test_rgb_channels_get_independent_noise(ifcb):
    """An RGB image made of a real ROI, its negative and itself: fills mirror, noise differs between channels."""
    object_id, grey = ifcb[1]
    img = np.stack([grey, 255 - grey, grey], axis=2)
    result = pad_to_square(img, object_id)
    check_padding(img, result)
    (mode,), (std,) = edge_background(grey)
    assert result.fill == (mode, 255 - mode, mode)
    assert result.noise_std == pytest.approx((std, std, std))
    pad = pad_pixels(result)
    assert not np.array_equal(pad[:, 0], pad[:, 2])


def test_planktonclass_jpeg_rgb_and_resize():
    path = sorted(_need(SHARED / "images/planktonclass-demo/demo-images").glob("Tripos/*.jpg"))[0]
    img = _load(path)
    assert img.ndim == 3
    result = pad_to_square(img, path.stem)
    check_padding(img, result)
    assert 100 <= result.fill[0] <= 230  # light FlowCam-like background
    small = pad_to_square(img, path.stem, size=64)
    assert small.image.shape == (64, 64, 3) and small.pad_top + small.pad_bottom == result.pad_top + result.pad_bottom
    grey = pad_to_square(img[:, :, 0], path.stem, size=224).image
    assert grey.shape == (224, 224) and grey.dtype == np.uint8


def test_square_image_is_returned_unchanged():
    paths = sorted(_need(SHARED / "images" / "uvp6-vignettes").glob("*/*.png"))
    square = next(img for img in map(_load, paths) if img.shape[0] == img.shape[1])
    result = pad_to_square(square, "square")
    assert result.image.tobytes() == square.tobytes()
    assert (result.pad_top, result.pad_bottom, result.pad_left, result.pad_right) == (0, 0, 0, 0)


def test_scale_bar_detected_on_zooscan_vignettes(zooscan):
    for _, img in zooscan:
        assert detect_scale_bar(img) == SCALE_BAR_HEIGHT
        assert detect_scale_bar(img[:, :, 0]) == SCALE_BAR_HEIGHT
        assert detect_scale_bar(255 - img) == SCALE_BAR_HEIGHT  # UVP5-style white legend on black
        assert detect_scale_bar(img[:-SCALE_BAR_HEIGHT]) == 0  # once cropped, nothing is left to crop
        assert detect_scale_bar(img[::-1]) == 0  # a legend at the top is not at the bottom


def test_no_scale_bar_on_images_without_one(ifcb):
    uvp6_all = sorted(_need(SHARED / "images" / "uvp6-vignettes").glob("*/*.png"))
    demo = sorted(_need(SHARED / "images/planktonclass-demo/demo-images").glob("*/*.jpg"))
    found = [p.name for p in uvp6_all + demo if detect_scale_bar(_load(p))]
    found += [object_id for object_id, img in ifcb if detect_scale_bar(img)]
    assert found == []


def _with_banner(img: np.ndarray, shade: int) -> np.ndarray:
    """`img` (grey) under a 25-px band of `shade` carrying a line of text, as a CytoSense banner."""
    from PIL import ImageDraw

    banner = Image.new("L", (img.shape[1], 25), shade)
    ImageDraw.Draw(banner).text((2, 6), "Part. 1234 FWS", fill=255 - shade)
    return np.concatenate((np.asarray(banner), img))


def test_banner_detected_above_real_images_and_never_without_one(uvp6, ifcb, zooscan):
    # No real CytoSense image is available: the banner is drawn above real UVP6 (dark) and IFCB (light) images.
    for object_id, img in uvp6[:10]:
        with_banner = _with_banner(img, 200)
        assert detect_banner(with_banner) == 25
        result = pad_to_square(with_banner, object_id, crop=preset_for(None))
        check_padding(with_banner, result, crop=(25, 0, 0, 0))
    for _, img in ifcb:
        grey = img if img.ndim == 2 else img[:, :, 0]
        if grey.shape[0] > 12:
            assert detect_banner(_with_banner(grey, 40)) == 25
    # Never on images without one, nor on ZooScan's legend turned upside down (text and bar at the top).
    uvp6_all = sorted(_need(SHARED / "images" / "uvp6-vignettes").glob("*/*.png"))
    demo = sorted(_need(SHARED / "images/planktonclass-demo/demo-images").glob("*/*.jpg"))
    found = [p.name for p in uvp6_all + demo if detect_banner(_load(p))]
    found += [object_id for object_id, img in ifcb + zooscan if detect_banner(img) or detect_banner(img[::-1])]
    assert found == []


def test_unknown_instrument_finds_the_zooscan_legend_from_the_pixels(zooscan, uvp6):
    crop = preset_for(None)
    for object_id, img in zooscan:
        result = pad_to_square(img, object_id, crop=crop)
        check_padding(img, result, crop=(0, SCALE_BAR_HEIGHT, 0, 0))
    for object_id, img in uvp6:
        result = pad_to_square(img, object_id, crop=crop)
        check_padding(img, result, crop=(0, 0, 0, 0))


def test_zooscan_preset_crops_the_legend_before_padding(zooscan):
    crop = preset_for("Zooscan")
    for object_id, img in zooscan:
        result = pad_to_square(img, object_id, crop=crop)
        check_padding(img, result, crop=(0, SCALE_BAR_HEIGHT, 0, 0))
        assert min(result.fill) >= 240  # white ZooScan background


def test_cytosense_preset_crops_25_px_at_the_top():
    path = sorted(_need(SHARED / "images/planktonclass-demo/demo-images").glob("Tripos/*.jpg"))[1]
    img = _load(path)
    assert preset_for("CytoSense") == CropSpec(top=25)
    result = pad_to_square(img, path.stem, crop=preset_for("CytoSense"))
    check_padding(img, result, crop=(25, 0, 0, 0))


@pytest.mark.parametrize(
    ("instrument", "expected"),
    [
        ("Zooscan", CropSpec(scale_bar=True)),
        ("UVP5HD", CropSpec(scale_bar=True)),
        ("uvp5sd", CropSpec(scale_bar=True)),
        ("UVP6", CropSpec(scale_bar=True)),
        ("CytoSense", CropSpec(top=25)),
        ("IFCB", CropSpec()),
        ("FlowCam", CropSpec()),
        ("unknown", CropSpec(scale_bar=True, banner=True)),  # unknown: look at the pixels
        (None, CropSpec(scale_bar=True, banner=True)),
        ("Other camera", CropSpec(scale_bar=True, banner=True)),
        ("epson", CropSpec(scale_bar=True, banner=True)),  # the scanner named by EcoTaxa's ZooScan QA export
    ],
)
def test_preset_for(instrument, expected):
    assert preset_for(instrument) == expected


def test_explicit_crops_on_all_sides(ifcb):
    object_id, img = ifcb[-1]
    result = pad_to_square(img, object_id, crop=CropSpec(top=3, bottom=4, left=5, right=6))
    check_padding(img, result, crop=(3, 4, 5, 6))


def test_bad_input_is_refused(ifcb):
    _, img = ifcb[0]
    with pytest.raises(ValueError, match="leaves no pixels"):
        pad_to_square(img, "x", crop=CropSpec(top=img.shape[0]))
    with pytest.raises(TypeError, match="uint8"):
        pad_to_square(img.astype(np.float32), "x")
    with pytest.raises(ValueError):
        CropSpec(top=-1)


def test_contact_sheet_shows_before_and_after(tmp_path, uvp6, ifcb):
    pairs = [(img, pad_to_square(img, key).image) for key, img in (uvp6[:3] + ifcb[:2])]
    path = contact_sheet(pairs, tmp_path / "pad.png", tile=32)
    sheet = np.asarray(Image.open(path))
    assert Image.open(path).format == "PNG" and sheet.ndim == 3
    # 5 pairs -> 2 pairs per row, 3 rows; every image is scaled so its long side is one tile.
    gap = 2
    assert sheet.shape == (3 * (32 + gap) + gap, 2 * (2 * 32 + 5 * gap) + gap, 3)
    after_tile = sheet[gap : gap + 32, gap + 32 + gap : gap + 2 * 32 + gap]
    assert not (after_tile == (255, 0, 255)).all(axis=2).any()  # the padded square fills its tile


def test_contact_sheet_legend_names_each_column(tmp_path, uvp6):
    pairs = [(img, pad_to_square(img, key).image) for key, img in uvp6[:3]]
    plain = np.asarray(Image.open(contact_sheet(pairs, tmp_path / "plain.png", tile=64)))
    sheet = np.asarray(Image.open(contact_sheet(pairs, tmp_path / "legend.png", tile=64, labels=("original", "padded"))))
    header = sheet.shape[0] - plain.shape[0]
    assert header > 0 and sheet.shape[1] == plain.shape[1]
    np.testing.assert_array_equal(sheet[header:], plain)  # the images are where they were, under the legend
    gap = 2
    white = sheet[:header, :, 1] > 128  # the legend's white text (antialiased) on the magenta background
    # Each label sits over its own column of the first pair: the original's tile, then the padded one's.
    assert white[:, gap : gap + 64].any() and white[:, gap + 64 + gap : gap + 2 * 64 + gap].any()


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 3])).map(
        lambda s: s[:2] if s[2] == 1 else s
    )),
    st.text(max_size=8),
)
def test_any_small_image_pads_to_a_square_around_its_pixels(img, key):
    result = pad_to_square(img, key)
    height, width = img.shape[:2]
    assert result.image.shape[:2] == (max(height, width),) * 2
    np.testing.assert_array_equal(
        result.image[result.pad_top : result.pad_top + height, result.pad_left : result.pad_left + width], img
    )
