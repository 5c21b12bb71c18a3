"""Reader for exported IFCB PNGs named `<bin>_<target:05d>.png`, optionally sorted into class folders.

Layouts (reference section 9-10): `png/<bin>/<bin>_00002.png` (ClassiPyR, `roi2png.m`: a folder per bin, no
label), `<year>/<class>/<bin>_00002.png` (WHOI-Plankton: the folder is the class) and plain class-folder training
sets. A PNG's parent folder is its label unless that folder is a bin id or the folder given to `discover`.
The PNG bytes are kept exactly as they are; note that exported PNGs may be contrast-stretched (section 9).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from plankton_cli.core.records import ReadOptions, Record, Rejection, Source
from plankton_plugins.ifcb.bins import PIXEL_SIZE_UM, BinId, parse_bin_id

INSTRUMENT = "IFCB"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ROI_PNG = re.compile(r"(.+)_(\d{5,})\.png", re.IGNORECASE | re.ASCII)  # 6+ digits: targets above 99,999 overflow


def parse_png_name(name: str) -> tuple[BinId, int] | None:
    """(bin id, target number) of a file named `<bin>_<target:05d>.png`, or None."""
    match = _ROI_PNG.fullmatch(name)
    if match is None:
        return None
    bin_id = parse_bin_id(match.group(1))
    return (bin_id, int(match.group(2))) if bin_id is not None else None


def find_png_folders(root: Path) -> Iterator[tuple[Path, list[Path]]]:
    """Each folder under `root` (sorted, recursive) with its IFCB ROI PNGs, sorted by name."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        pngs = [Path(dirpath) / name for name in sorted(filenames) if parse_png_name(name) is not None]
        if pngs:
            yield Path(dirpath), pngs


class IFCBPngReader:
    """Folders of IFCB ROI PNGs; a class folder above a PNG becomes its validated label."""

    name = "ifcb-png"
    description = "IFCB ROI PNGs named <bin>_<target>.png, optionally in class folders (label = folder name)"
    sniff_priority = 10

    def sniff(self, path: Path) -> bool:
        path = Path(path)
        if path.is_dir():
            return next(find_png_folders(path), None) is not None
        return path.is_file() and parse_png_name(path.name) is not None

    def discover(self, path: Path, options: ReadOptions | None = None) -> Iterator[Source]:
        """One source per folder of PNGs (one class or one bin), or one for a single PNG given by name."""
        path = Path(os.path.abspath(path))
        if path.is_file():
            if parse_png_name(path.name) is not None:
                yield Source(key=str(path), files=(path,), reader=self.name, extra=self._label(path, None))
            return
        for folder, pngs in find_png_folders(path):
            label = self._label(pngs[0], path)
            yield Source(key=str(folder), files=tuple(pngs), reader=self.name, extra=label)

    @staticmethod
    def _label(png: Path, root: Path | None) -> str | None:
        """The class folder holding `png`: its parent, unless that is the root given or a per-bin folder."""
        folder = png.parent
        if folder == root or parse_bin_id(folder.name) is not None:
            return None
        return folder.name

    def read(self, source: Source, options: ReadOptions | None = None) -> Iterator[Record | Rejection]:
        label = source.extra if (options is None or options.label_from != "none") else None
        instrument = (options.instrument if options is not None else None) or INSTRUMENT
        for path in source.files:
            parsed = parse_png_name(path.name)
            if parsed is None:
                yield Rejection(str(path), None, "file name is not <bin>_<target>.png")
                continue
            bin_id, target = parsed
            object_id = f"{bin_id.bin_id}_{target:05d}"
            try:
                data = path.read_bytes()
            except OSError as exc:
                yield Rejection(str(path), target, f"cannot read the file: {exc}", object_id)
                continue
            if not data.startswith(PNG_SIGNATURE):
                yield Rejection(str(path), target, "not a PNG file (no PNG signature)", object_id)
                continue
            yield Record(
                object_id=object_id,
                image=data,
                source_file=str(path),
                source_row=target,
                label=label,
                label_status="validated" if label else "none",
                instrument=instrument,
                instrument_serial=bin_id.instrument_serial,
                sample_id=bin_id.bin_id,
                acquired_at=bin_id.acquired_at,
                pixel_size_um=PIXEL_SIZE_UM,
            )
