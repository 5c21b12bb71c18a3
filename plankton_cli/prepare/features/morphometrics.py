"""Morphometric features of one plankton image: segment the object, then measure it with scikit-image.

Segmentation (why this one): plankton vignettes are one object on a flat background that touches every edge
(dark for IFCB and UVP, light for ZooScan and FlowCam). So the background level is the mode of the edge pixels
(``pad.edge_background``, the same estimate the padding uses), and the object is what differs from it: a
threshold on the absolute difference to the background works for both polarities without knowing the
instrument. The threshold is Li's minimum cross-entropy (``skimage.filters.threshold_li``). Measured on the
EcoTaxa QA ZooScan vignettes against ZooProcess's own ``object_area``: Li's areas are 87–96 % of ZooProcess's
on 10 of the 11 (the 11th, a faint, large organism inside black corner marks, gets 1526 px where ZooProcess's
fixed threshold keeps its 516 darkest ones); Otsu's are 64–74 %, and on that 11th it measures a corner mark
(21 px: Otsu splits the pure-black marks from everything else); the triangle method's are 104–250 %. Of the
pixels above the threshold, the largest 8-connected component with its holes filled is the object (specks,
detritus fragments and noise are smaller). Legends are cut first: the crops ``plankton pad`` makes for the instrument
(``padding.crop_for``, e.g. the CytoSense banner) and the ZooProcess scale bar wherever it is detected
(``pad.detect_scale_bar``; ingested as plain folders, ZooScan vignettes have no instrument), so a "1 mm" bar
is never measured.

Measurements come from ``skimage.measure.regionprops`` (no hand-written geometry), in pixels:

- ``area``, ``perimeter`` (skimage's 4-connected contour length), ``esd`` (equivalent spherical diameter, the
  diameter of the disc of the same area), ``major_axis``/``minor_axis`` (the ellipse with the same second
  moments), ``feret_max``, ``eccentricity``, ``solidity`` (area / convex area), ``extent`` (area / bounding box),
  ``circularity`` (4π·area / perimeter²);
- ``biovolume``: the prolate spheroid of the fitted ellipse, π/6 · major · minor² (pixels³). This is the
  ellipsoidal biovolume of ZooProcess/EcoTaxa; IFCB's ifcb-features instead integrates a distance map or a solid
  of revolution, which differs most for irregular shapes. The spheroid needs only the axes, is stable under small
  segmentation changes and is what the EcoTaxa data we train beside already carries;
- grey levels of the object's pixels (grey image, 0–255): ``grey_mean``, ``grey_std``, ``grey_min``,
  ``grey_max``, ``grey_median``, and ``contrast`` = |grey_mean − background|;
- with a known pixel size (``pixel_size_um``, from the store): ``area_um2``, ``esd_um``, ``major_axis_um``,
  ``minor_axis_um`` and ``biovolume_um3``; None otherwise.

Deterministic: the same pixels give the same numbers, so ``plankton predict`` can compute them again and feed a
model exactly what it was trained on. Bump ``ALGORITHM_VERSION`` when a number would change.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_li
from skimage.measure import label, regionprops

from plankton_cli.prepare.square_pad import detect_scale_bar, edge_background
from plankton_cli.prepare.pad_store import crop_for

ALGORITHM_VERSION = 1
SETTINGS = f"features-v{ALGORITHM_VERSION} edge-mode li largest-component"
"""Stored per row: a row computed with other settings is computed again."""

PIXEL_FEATURES = (
    "area", "perimeter", "esd", "major_axis", "minor_axis", "feret_max", "eccentricity", "solidity", "extent",
    "circularity", "biovolume", "grey_mean", "grey_std", "grey_min", "grey_max", "grey_median", "contrast",
)
MICRON_FEATURES = ("area_um2", "esd_um", "major_axis_um", "minor_axis_um", "biovolume_um3")
FEATURES = PIXEL_FEATURES + MICRON_FEATURES


class NoObject(ValueError):
    """Nothing in the image differs from its background."""


def to_grey(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W) grey levels: RGB(A) by the ITU-R 601 luma weights (what Pillow's "L" uses)."""
    if img.ndim == 2:
        return img
    if img.shape[2] < 3:
        return img[:, :, 0]
    luma = img[:, :, :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


def segment(grey: np.ndarray) -> tuple[np.ndarray, int]:
    """(object mask, background level) of a grey image; raises ``NoObject`` on a featureless image."""
    (background,), _ = edge_background(grey)
    difference = np.abs(grey.astype(np.int16) - background).astype(np.uint8)
    if difference.max() == difference.min():
        raise NoObject("no object: every pixel has the background's grey level")
    mask = difference > threshold_li(difference)
    components = label(mask, connectivity=2)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0  # the background label
    return ndimage.binary_fill_holes(components == sizes.argmax()), background


def measure(img: np.ndarray, instrument: str | None = None, pixel_size_um: float | None = None,
            ) -> dict[str, float | None]:
    """Every feature of ``FEATURES`` for one uint8 image of ``instrument`` (which decides the legend crops);
    raises ``NoObject`` or ``ValueError`` when there is nothing to measure."""
    grey = to_grey(img)
    crop = crop_for(instrument, "auto")
    bottom = crop.bottom + detect_scale_bar(grey)
    height, width = grey.shape
    if crop.top + bottom >= height or crop.left + crop.right >= width:
        raise ValueError(f"the instrument crops leave no pixels of a {height}x{width} image")
    grey = grey[crop.top:height - bottom, crop.left:width - crop.right]
    mask, background = segment(grey)
    (region,) = regionprops(mask.astype(np.uint8), intensity_image=grey)
    pixels = grey[mask]
    major, minor = float(region.axis_major_length), float(region.axis_minor_length)
    area, perimeter = float(region.area), float(region.perimeter)
    values: dict[str, float | None] = {
        "area": area,
        "perimeter": perimeter,
        "esd": float(region.equivalent_diameter_area),
        "major_axis": major,
        "minor_axis": minor,
        "feret_max": float(region.feret_diameter_max),
        "eccentricity": float(region.eccentricity),
        "solidity": float(region.solidity),
        "extent": float(region.extent),
        "circularity": 4 * math.pi * area / perimeter**2 if perimeter > 0 else None,
        "biovolume": math.pi / 6 * major * minor**2,
        "grey_mean": float(pixels.mean()),
        "grey_std": float(pixels.std()),
        "grey_min": float(pixels.min()),
        "grey_max": float(pixels.max()),
        "grey_median": float(np.median(pixels)),
        "contrast": abs(float(pixels.mean()) - background),
    }
    um = pixel_size_um if pixel_size_um and math.isfinite(pixel_size_um) and pixel_size_um > 0 else None
    values.update({
        "area_um2": area * um**2 if um else None,
        "esd_um": values["esd"] * um if um else None,
        "major_axis_um": major * um if um else None,
        "minor_axis_um": minor * um if um else None,
        "biovolume_um3": values["biovolume"] * um**3 if um else None,
    })
    return values
