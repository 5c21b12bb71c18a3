"""Pad on read: the images of a padded dataset that keeps the pad parameters instead of the padded pixels.

`plankton pad` records, per object, the crop it cut (the detected legend included) and the resize, and marks the
row `on-read=<source>` in `pad_settings` (`pad_store.py`). Padding is deterministic (edge statistics of the cropped
image, noise seeded by the object id), so padding the source's pixels again with those numbers gives exactly the
pixels `plankton pad --store-pixels` would have stored; `plankton predict` pads new images the same way.

A row is padded on read only while its object in the source still has the content it was padded from; an object
changed since (re-ingested with other pixels) waits for the next `plankton pad`, as it would with stored pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from plankton_cli.prepare.pad_store import parse_settings
from plankton_cli.prepare.square_pad import CropSpec, pad_to_square
from plankton_cli.store.images import decode
from plankton_cli.store.layout import dataset_files, read_listed

log = logging.getLogger("plankton.data")

_COLUMNS = ["object_id", "content_hash", "crop_top", "crop_bottom", "crop_left", "crop_right", "pad_settings"]


@dataclass(frozen=True)
class PadOnRead:
    """The source dataset whose pixels are padded on read, and each object's (crop, size)."""

    source_dir: Path
    params: dict[str, tuple[CropSpec, int | None]]

    def image(self, object_id: str, data: bytes) -> Image.Image:
        """The padded square of one object, from its encoded source pixels."""
        crop, size = self.params[object_id]
        return Image.fromarray(pad_to_square(decode(data), object_id, crop=crop, size=size).image)


def pad_on_read_plan(dataset_dir: str | Path) -> PadOnRead | None:
    """What to pad on read for `dataset_dir`, or None when its rows store their pixels (or it is no padded
    dataset). Rows whose source object changed since it was padded are left out, with one warning."""
    dataset_dir = Path(dataset_dir)
    files = dataset_files(dataset_dir)
    if not files or "pad_settings" not in pq.read_schema(files[0]).names:
        return None
    params, padded_from, sources = read_listed(dataset_dir, _read_params)
    if not sources:
        return None
    if len(sources) > 1:  # `plankton pad` replaces a target's rows when its source changes: never expected
        raise ValueError(f"{dataset_dir} pads on read from several datasets ({', '.join(sorted(sources))})")
    source_dir = dataset_dir.parent / sources.pop()
    changed = 0
    for object_id, content_hash in read_listed(source_dir, _read_hashes):
        if object_id in padded_from and padded_from.pop(object_id) != content_hash:
            del params[object_id]
            changed += 1
    for object_id in padded_from:  # padded, but no longer in the source
        del params[object_id]
    if changed or padded_from:
        log.warning("%d object(s) of %s changed or left %s since they were padded: left out until "
                    "`plankton pad` runs again", changed + len(padded_from), dataset_dir.name, source_dir.name)
    return PadOnRead(source_dir, params)


def _read_params(files: list[Path]) -> tuple[dict[str, tuple[CropSpec, int | None]], dict[str, str], set[str]]:
    """(object_id -> (crop, size), object_id -> content_hash padded from, source datasets) of the rows padded on
    read."""
    params: dict[str, tuple[CropSpec, int | None]] = {}
    padded_from: dict[str, str] = {}
    sources: set[str] = set()
    for path in files:
        table = pq.read_table(path, columns=_COLUMNS)
        for object_id, content_hash, top, bottom, left, right, settings in zip(*(table[c].to_pylist()
                                                                                  for c in _COLUMNS)):
            _, size, source = parse_settings(settings)
            if source is None:  # stored pixels
                continue
            sources.add(source)
            params[object_id] = (CropSpec(top, bottom, left, right), size)
            padded_from[object_id] = content_hash
    return params, padded_from, sources


def _read_hashes(files: list[Path]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for path in files:
        table = pq.read_table(path, columns=["object_id", "content_hash"])
        pairs += zip(table["object_id"].to_pylist(), table["content_hash"].to_pylist())
    return pairs
