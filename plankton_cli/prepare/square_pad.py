"""Background-matched square padding (Kareinen et al. 2025, §4.1) and the instrument crops that must come first.

The short side of an image is padded to make it square. The fill is the mode of the edge pixels (all four edges),
plus Gaussian noise whose standard deviation is that of the 20 % of edge pixels closest to the mode, so the padding
looks like the image's own background rather than a flat band: a flat band gives MAE's normalised-pixel target a
near-zero variance, and a model can learn to spot it. Grey images use one channel, RGB images each channel alone.

The noise is seeded from the object id, so a re-run writes identical bytes. Legends and banners are cropped
before the edge statistics are taken (a black scale bar on a white ZooScan vignette would otherwise skew them).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from plankton_cli.core.instruments import canonical_instrument

SCALE_BAR_HEIGHT = 31
"""ZooProcess / UVP vignettes carry a legend (scale bar + text) this many pixels high at the bottom."""

CYTOSENSE_BANNER_HEIGHT = 25
"""CytoSense images carry a banner this many pixels high at the top (Kareinen group's `cross-modal-plankton`)."""

CLOSEST_FRACTION = 0.2
"""Share of the edge pixels, closest to the mode, whose standard deviation sets the noise (paper §4.1)."""


@dataclass(frozen=True, slots=True)
class CropSpec:
    """Pixels to cut from each side before padding; `scale_bar` adds the detected ZooProcess legend to `bottom`,
    `banner` the detected CytoSense banner to `top`."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0
    scale_bar: bool = False
    banner: bool = False

    def __post_init__(self) -> None:
        if min(self.top, self.bottom, self.left, self.right) < 0:
            raise ValueError(f"crops must be >= 0, got {self}")


@dataclass(frozen=True, slots=True)
class PadResult:
    """The padded image and what was done to it, so a command can summarise and a reader can undo it."""

    image: np.ndarray  # uint8, (S, S) or (S, S, C); (size, size, ...) when resized
    orig_height: int
    orig_width: int
    crop_top: int
    crop_bottom: int
    crop_left: int
    crop_right: int
    pad_top: int  # pads are in pixels of the cropped image, before any resize
    pad_bottom: int
    pad_left: int
    pad_right: int
    fill: tuple[int, ...]  # per channel: the edge mode
    noise_std: tuple[float, ...]  # per channel: std of the 20 % of edge pixels closest to the mode


def edge_background(img: np.ndarray) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Per-channel background of `img`: (mode of the edge pixels, std of the 20 % of them closest to that mode)."""
    edge = _edge_pixels(_as_uint8(img))  # (n, C)
    n, channels = edge.shape
    # One bincount for all channels: channel c counts into bins [256 c, 256 c + 256).
    offsets = np.arange(channels, dtype=np.intp) * 256
    counts = np.bincount((edge + offsets).ravel(), minlength=256 * channels)
    mode = counts.reshape(channels, 256).argmax(axis=1)  # ties: the darkest value, deterministically
    k = max(1, math.ceil(CLOSEST_FRACTION * n))
    distance = np.abs(edge.astype(np.int16) - mode.astype(np.int16))
    closest = np.argpartition(distance, k - 1, axis=0)[:k]
    std = np.take_along_axis(edge, closest, axis=0).std(axis=0)
    return tuple(int(m) for m in mode), tuple(float(s) for s in std)


def pad_to_square(
    img: np.ndarray, seed_key: str, *, crop: CropSpec | None = None, size: int | None = None
) -> PadResult:
    """Crop, then pad `img` (uint8, (H, W) or (H, W, C)) to a square with background-matched noise seeded by `seed_key`.

    The pad is split evenly between the two sides (the odd pixel goes to the bottom / right); original pixels are
    kept as they are. An already-square image is returned unpadded. `size` resizes the square (bicubic) afterwards.
    """
    img = _as_uint8(img)
    orig_height, orig_width = img.shape[:2]
    crop = crop or CropSpec()
    top = crop.top + (detect_banner(img) if crop.banner else 0)
    bottom = crop.bottom + (detect_scale_bar(img) if crop.scale_bar else 0)
    if top + bottom >= orig_height or crop.left + crop.right >= orig_width:
        raise ValueError(
            f"crop top={top} bottom={bottom} left={crop.left} right={crop.right} leaves no pixels of a "
            f"{orig_height}x{orig_width} image"
        )
    img = img[top : orig_height - bottom, crop.left : orig_width - crop.right]

    fill, std = edge_background(img)
    height, width = img.shape[:2]
    short, long = min(height, width), max(height, width)
    before, after = (long - short) // 2, long - short - (long - short) // 2
    if before + after:
        img = _pad(img, before, after, pad_rows=height < width, fill=fill, std=std, seed_key=seed_key)
    if size is not None and size != img.shape[0]:
        img = _resize(img, size)

    pads = (before, after, 0, 0) if height < width else (0, 0, before, after)
    return PadResult(img, orig_height, orig_width, top, bottom, crop.left, crop.right, *pads, fill, std)  # type: ignore[call-arg]


def _pad(
    img: np.ndarray,
    before: int,
    after: int,
    *,
    pad_rows: bool,
    fill: tuple[int, ...],
    std: tuple[float, ...],
    seed_key: str,
) -> np.ndarray:
    """Pad rows (top/bottom) or columns (left/right) with fill + N(0, std) noise, each channel on its own."""
    axis = 0 if pad_rows else 1
    shape = list(img.shape)
    shape[axis] = before + after
    # (C,) broadcasts over the channel axis of (H, W, C); a grey image has one channel and (1,) broadcasts too.
    if any(std):
        band_f = _rng(seed_key).standard_normal(shape, dtype=np.float32)
        band_f *= np.asarray(std, dtype=np.float32)  # in place: the band is the one sizeable temporary
        band_f += np.asarray(fill, dtype=np.float32)
        band = np.clip(np.rint(band_f, out=band_f), 0, 255, out=band_f).astype(np.uint8)
    else:  # flat background: no randomness needed, and no generator to build
        band = np.broadcast_to(np.asarray(fill, dtype=np.uint8), shape)
    head, tail = (band[:before], band[before:]) if pad_rows else (band[:, :before], band[:, before:])
    return np.concatenate((head, img, tail), axis=axis)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of a square image to (size, size); Pillow has no (H, W, 1) mode, so that one is squeezed."""
    single = img.ndim == 3 and img.shape[2] == 1
    image = Image.fromarray(img[:, :, 0] if single else img).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image)[:, :, None] if single else np.asarray(image)


def _rng(seed_key: str) -> np.random.Generator:
    """A generator seeded by a stable hash of `seed_key` (not Python's `hash`, which changes per process)."""
    digest = hashlib.blake2b(seed_key.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _as_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {img.dtype}")
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"expected a non-empty (H, W) or (H, W, C) image, got shape {img.shape}")
    return img


def _edge_pixels(img: np.ndarray) -> np.ndarray:
    """The pixels of the four edges, each once, as (n, C) intp (ready for bincount)."""
    pixels = img if img.ndim == 3 else img[:, :, None]
    height, width = pixels.shape[:2]
    if height <= 2 or width <= 2:  # every pixel is an edge pixel
        edge = pixels.reshape(-1, pixels.shape[2])
    else:
        edge = np.concatenate((pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]))
    return edge.astype(np.intp)


# --- Instrument crops ------------------------------------------------------------------------------------------

_INK_CONTRAST = 64  # grey levels from the band's background that count as legend ink (bar or glyph)
_FAINT_CONTRAST = 32  # any deviation above this next to the bar means it is not a drawn line but part of an object
_MIN_BAR_LENGTH = 6  # the ZooScan bar is 11 px (100 µm)
_MAX_BAR_THICKNESS = 3  # rows; the ZooScan bar is 2
_BAR_ZONE = 10  # the bar lies within this many rows of the bottom (ZooScan: rows 4-6 from the bottom)
_TEXT_ZONE = 15  # the text line lies within this many rows above the bar (ZooScan: 10 rows tall)


def detect_scale_bar(img: np.ndarray) -> int:
    """Height of the ZooProcess / UVP legend at the bottom of `img` (31), or 0 when there is none.

    The legend is a band appended below the object, drawn in pure ink on the background: a thin horizontal scale
    bar near the bottom, a line of text ("100 µm ...") right above it, and empty rows above the text. All of these
    must be there, on a light (ZooScan) or dark (UVP5) background. An object reaching into the band fails: its
    strokes fade into the background instead of being isolated lines, and it leaves no empty rows.
    """
    img = _as_uint8(img)
    gray = img if img.ndim == 2 else img[:, :, : min(3, img.shape[2])].max(axis=2)
    height, width = gray.shape
    if height < SCALE_BAR_HEIGHT + 4 or width < 2 * _MIN_BAR_LENGTH:
        return 0
    band = gray[height - SCALE_BAR_HEIGHT :]
    background = int(np.bincount(band.ravel(), minlength=256).argmax())
    deviation = np.abs(band.astype(np.int16) - background)  # (31, W), row 0 at the band's top
    ink = deviation > _INK_CONTRAST
    if ink.mean() > 0.25:  # the legend is sparse; a band this full is part of the object
        return 0

    # The bar: the lowest block of rows near the bottom holding a horizontal ink run, at most 3 rows thick ...
    runs = np.cumsum(np.pad(ink, ((0, 0), (1, 0))), axis=1, dtype=np.int32)
    has_run = (runs[:, _MIN_BAR_LENGTH:] - runs[:, :-_MIN_BAR_LENGTH] == _MIN_BAR_LENGTH).any(axis=1)
    zone = SCALE_BAR_HEIGHT - _BAR_ZONE
    bar_rows = np.flatnonzero(has_run[zone:]) + zone
    if bar_rows.size == 0:
        return 0
    bar_bottom = bar_top = int(bar_rows[-1])
    while bar_top - 1 in bar_rows:
        bar_top -= 1
    if bar_bottom - bar_top + 1 > _MAX_BAR_THICKNESS:
        return 0
    solid = ink[bar_top : bar_bottom + 1].all(axis=0)
    start, stop = _longest_true_run(solid)  # type: ignore[arg-type]
    if stop - start < _MIN_BAR_LENGTH:
        return 0
    # ... with clean background right above and below it: a drawn line, not the edge of an object.
    neighbours = deviation[[r for r in (bar_top - 1, bar_bottom + 1) if r < SCALE_BAR_HEIGHT], start:stop]
    if (neighbours > _FAINT_CONTRAST).any():
        return 0

    # The text: within 15 rows above the bar, at least 3 rows with 2 or more separate ink runs (glyph strokes).
    text_zone = max(0, bar_top - _TEXT_ZONE)
    text = ink[text_zone:bar_top]
    strokes = (np.diff(text.astype(np.int8), axis=1, prepend=0) == 1).sum(axis=1)
    text_rows = np.flatnonzero(strokes >= 2)
    if text_rows.size < 3:
        return 0

    # Above the text: at least 4 consecutive empty rows separating the legend from the object.
    empty = ~ink[: text_zone + int(text_rows[0])].any(axis=1)
    start, stop = _longest_true_run(empty)  # type: ignore[arg-type]
    if stop - start < 4:
        return 0
    return SCALE_BAR_HEIGHT


_BANNER_CONTRAST = 32  # grey levels between the banner and the image right below it
_BANNER_WIDTH_SHARE = 0.9  # of the columns where the banner's lower edge shows
_BANNER_BACKGROUND_SHARE = 0.5  # of the row right below the banner that is background (objects may touch it)
_BANNER_MIN_BELOW = 8  # rows of image the banner must leave


def detect_banner(img: np.ndarray) -> int:
    """Height of a CytoSense banner at the top of `img` (25), or 0 when there is none.

    The banner is a band of another colour than the image's background, cut off straight at row 25: across
    (nearly) the whole width, row 24 differs sharply from row 25, and the rows right below are background (the
    mode of the image's edge pixels below the band) for most of the width. An object touching the top edge is never straight across
    the whole width at exactly that row. Checked on real images without a banner (UVP6, IFCB, ZooScan,
    FlowCam-like); no real CytoSense image is available here, so the banner itself is only known from the
    Kareinen group's code (a fixed 25-px crop).
    """
    img = _as_uint8(img)
    gray = (img if img.ndim == 2 else img[:, :, : min(3, img.shape[2])].mean(axis=2)).astype(np.int16)
    height, width = gray.shape
    if height < CYTOSENSE_BANNER_HEIGHT + _BANNER_MIN_BELOW or width < 8:
        return 0
    below = gray[CYTOSENSE_BANNER_HEIGHT:]
    background = int(np.bincount(_edge_pixels(below.astype(np.uint8)).ravel(), minlength=256).argmax())
    edge = np.abs(gray[CYTOSENSE_BANNER_HEIGHT - 1] - gray[CYTOSENSE_BANNER_HEIGHT]) > _BANNER_CONTRAST
    clean = np.abs(below[0] - background) <= _BANNER_CONTRAST
    banner_colour = np.abs(gray[CYTOSENSE_BANNER_HEIGHT - 1] - background) > _BANNER_CONTRAST
    if (edge.mean() >= _BANNER_WIDTH_SHARE and clean.mean() >= _BANNER_BACKGROUND_SHARE
            and banner_colour.mean() >= _BANNER_WIDTH_SHARE):
        return CYTOSENSE_BANNER_HEIGHT
    return 0


def _longest_true_run(flags: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the longest run of True in a 1-D bool array; (0, 0) when there is none."""
    if not flags.any():
        return 0, 0
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    longest = int(np.argmax(stops - starts))
    return int(starts[longest]), int(stops[longest])


UNKNOWN_INSTRUMENTS = ("other camera", "other microscope", "other scanner", "other flowcytometer")
"""EcoTaxa instrument names that say nothing about the images: `--preset auto` then looks at the pixels, as it does
for names outside EcoTaxa's vocabulary (none, or e.g. "epson", the scanner of a ZooScan export)."""


def preset_for(instrument: str | None) -> CropSpec:
    """The crop `--preset auto` applies for an EcoTaxa `acq_instrument` name (case-insensitive).

    Zooscan and UVP5*/UVP6 vignettes may carry the 31-px ZooProcess legend (detected per image, since exports
    differ); CytoSense images a 25-px banner at the top; other known instruments need no crop. When the
    instrument is unknown (image folders ingested without --instrument), both the legend and the banner are
    looked for in every image, and cut where found.
    """
    name = (instrument or "").strip().lower()
    if name == "zooscan" or name.startswith(("uvp5", "uvp6")):
        return CropSpec(scale_bar=True)
    if name == "cytosense":
        return CropSpec(top=CYTOSENSE_BANNER_HEIGHT)
    if name in UNKNOWN_INSTRUMENTS or canonical_instrument(name) is None:
        return CropSpec(scale_bar=True, banner=True)
    return CropSpec()


# --- Preview ---------------------------------------------------------------------------------------------------

_SHEET_BACKGROUND = (255, 0, 255)  # magenta: neither a dark nor a light plankton background, so the pad shows


def contact_sheet(pairs: list[tuple[np.ndarray, np.ndarray]], path: str | Path, *, tile: int = 128,
                  labels: tuple[str, str] | None = None) -> Path:
    """Write a PNG grid of (before, after) pairs side by side, each image scaled to fit a `tile` square.

    Images keep their aspect ratio on a magenta background, so the added padding (and any crop) is visible.
    `labels` (e.g. ("original", "padded")) are written above the two columns of every pair, so a reader of the
    sheet alone knows which side is which.
    """
    if not pairs:
        raise ValueError("contact_sheet needs at least one (before, after) pair")
    gap = max(2, tile // 32)
    pairs_per_row = max(1, math.ceil(math.sqrt(len(pairs) / 2)))  # a roughly square sheet: a pair is 2 tiles wide
    rows = math.ceil(len(pairs) / pairs_per_row)
    cell_width = 2 * tile + 5 * gap  # before, gap, after, then 4 gaps so the pairs stand apart
    font = ImageFont.load_default(size=max(10, tile // 8)) if labels else None
    header = int(font.getbbox("Ag")[3]) + 2 * gap if font else 0
    sheet = Image.new(
        "RGB", (pairs_per_row * cell_width + gap, header + rows * (tile + gap) + gap), _SHEET_BACKGROUND
    )
    if labels and font:
        draw = ImageDraw.Draw(sheet)
        for column in range(pairs_per_row):
            for j, text in enumerate(labels):
                left = column * cell_width + gap + j * (tile + gap)
                width = draw.textlength(text, font=font)
                draw.text((left + (tile - width) / 2, gap), text, fill=(255, 255, 255), font=font)
    for i, (before, after) in enumerate(pairs):
        x = (i % pairs_per_row) * cell_width + gap
        y = header + (i // pairs_per_row) * (tile + gap) + gap
        for j, img in enumerate((before, after)):
            thumb = _thumbnail(img, tile)
            sheet.paste(thumb, (x + j * (tile + gap) + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
    path = Path(path)
    sheet.save(path, format="PNG")
    return path


def _thumbnail(img: np.ndarray, tile: int) -> Image.Image:
    """`img` scaled so its long side is `tile`: nearest when enlarging (pixels stay visible), bicubic otherwise."""
    img = _as_uint8(img)
    image = Image.fromarray(img[:, :, 0] if img.ndim == 3 and img.shape[2] == 1 else img).convert("RGB")
    scale = tile / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BICUBIC
    return image.resize(new_size, resample)
