"""Throughput of `plankton_cli.prepare.square_pad.pad_to_square` on real images, single-threaded.

Decodes the UVP6 vignettes and the IFCB ROIs of the V2 test bin first, then times only the padding. Each line
compares against a reference measured in the same run: plain `np.pad(mode="constant")` filled with the image's
median, the simplest square padding there is. The ratio says what the paper's background matching costs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pad.py [--repeats 5]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # before numpy is imported
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from plankton_cli.prepare.square_pad import pad_to_square, preset_for  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
UVP6 = SHARED_DATA / "images" / "uvp6-vignettes"
IFCB_BIN = SHARED_DATA / "ifcb/pyifcb-testdata/white/D2013/D201305/D20130526/D20130526T095207_IFCB013"
TARGET = 2000  # images/s per core the command needs to keep pace with ingest


def uvp6_vignettes() -> list[tuple[str, np.ndarray]]:
    return [(p.stem, np.asarray(Image.open(p))) for p in sorted(UVP6.glob("*/*.png"))]


def ifcb_rois() -> list[tuple[str, np.ndarray]]:
    """The ROIs of a V2 bin: ADC columns 15, 16, 17 (0-based) are width, height, start byte; width 0 = no image."""
    roi = IFCB_BIN.with_suffix(".roi").read_bytes()
    rois = []
    for target, line in enumerate(IFCB_BIN.with_suffix(".adc").read_text().splitlines(), start=1):
        columns = line.split(",")
        width, height, start = int(columns[15]), int(columns[16]), int(columns[17])
        if width and height:
            pixels = np.frombuffer(roi, dtype=np.uint8, count=width * height, offset=start)
            rois.append((f"{IFCB_BIN.name}_{target:05d}", pixels.reshape(height, width)))
    return rois


def naive_pad(img: np.ndarray) -> np.ndarray:
    """The reference: a constant square pad with the image's median, split evenly."""
    height, width = img.shape[:2]
    extra = abs(height - width)
    pads = [(extra // 2, extra - extra // 2), (0, 0)] if height < width else [(0, 0), (extra // 2, extra - extra // 2)]
    return np.pad(img, pads + [(0, 0)] * (img.ndim - 2), mode="constant", constant_values=int(np.median(img)))


Pad = Callable[[str, np.ndarray], object]


def images_per_second(images: list[tuple[str, np.ndarray]], pad: Pad, repeats: int) -> float:
    """Best of `repeats` passes over at least ~2,000 images each (the IFCB bin has only 19 ROIs)."""
    passes = max(1, 2000 // len(images))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(passes):
            for object_id, img in images:
                pad(object_id, img)
        best = min(best, time.perf_counter() - start)
    return passes * len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not UVP6.is_dir() or not IFCB_BIN.with_suffix(".roi").is_file():
        raise SystemExit(f"needs the shared data under {SHARED_DATA.resolve()}")

    sets = {"UVP6 vignettes": uvp6_vignettes(), "IFCB ROIs (V2 bin)": ifcb_rois()}
    uvp6_crop = preset_for("UVP6")
    cases: list[tuple[str, str, Pad]] = [
        ("UVP6 vignettes", "pad_to_square", lambda key, img: pad_to_square(img, key)),
        ("UVP6 vignettes", "pad_to_square, preset UVP6 (bar detection)",
         lambda key, img: pad_to_square(img, key, crop=uvp6_crop)),
        ("UVP6 vignettes", "pad_to_square, size=224", lambda key, img: pad_to_square(img, key, size=224)),
        ("IFCB ROIs (V2 bin)", "pad_to_square", lambda key, img: pad_to_square(img, key)),
        ("IFCB ROIs (V2 bin)", "pad_to_square, size=224", lambda key, img: pad_to_square(img, key, size=224)),
    ]
    print(f"numpy {np.__version__}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, best of {args.repeats}")
    for name, images in sets.items():
        shapes = np.array([img.shape[:2] for _, img in images])
        reference = images_per_second(images, lambda key, img: naive_pad(img), args.repeats)
        print(f"\n{name}: {len(images)} images, median {np.median(shapes, axis=0).astype(int).tolist()} (H, W)")
        print(f"  {'np.pad constant median (reference)':45s} {reference:9,.0f} images/s")
        for set_name, label, pad in cases:
            if set_name == name:
                rate = images_per_second(images, pad, args.repeats)
                verdict = "ok" if rate >= TARGET else f"BELOW {TARGET:,}"
                print(f"  {label:45s} {rate:9,.0f} images/s  {rate / reference:5.2f}x reference  {verdict}")


if __name__ == "__main__":
    main()
