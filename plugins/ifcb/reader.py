"""Reader for IFCB raw bins: one `Source` per bin (`.hdr` + `.adc` + `.roi`), one `Record` per ROI.

The `.adc` is parsed up front (it is small), then the `.roi` is opened once and memory-mapped, and each ROI is
sliced out at its START_BYTE with numpy and yielded at once, so only one bin is ever open.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from plankton_cli.core.records import ReadOptions, Record, Rejection, Source
from plankton_plugins.ifcb.bins import (
    PIXEL_SIZE_UM,
    SCHEMAS,
    AdcLineError,
    AdcRow,
    BinId,
    Header,
    allowed_column_counts,
    column_names,
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

if TYPE_CHECKING:
    from plankton_cli.store.manifest import Folders

INSTRUMENT = "IFCB"
EXTENSIONS = (".hdr", ".adc", ".roi")
SKIPPED_FOLDERS = frozenset({"skip", "beads"})
"""Folder names whose bins are not samples: `beads/` is where the acquisition software writes bead runs."""


def bin_file(base: Path, ext: str) -> Path:
    """`base` + `ext` (`Path.with_suffix` would not do: a basename may contain dots in other naming schemes)."""
    return base.parent / (base.name + ext)


def bin_base(path: Path) -> Path | None:
    """The bin base path (no extension) named by `path` (one of a bin's files, or its basename), or None."""
    base = path.parent / path.stem if path.suffix.lower() in EXTENSIONS else path
    return base if parse_bin_id(base.name) is not None else None


def find_bins(root: Path, folders: Folders | None = None) -> Iterator[Path]:
    """Base paths of the bins under `root`, walked recursively in sorted order.

    A bin is an `.adc` whose basename is a valid bin id (so stray files are ignored; one without its `.hdr` is
    found too, and rejected when read); bins in folders named `skip` or `beads` below `root` are left out, as
    pyifcb does. `folders`: the subfolders it says are unchanged (a day folder of an earlier night) are not
    listed, and it is told the bins of each folder without subfolders listed.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d.lower() not in SKIPPED_FOLDERS)
        leaf = not dirnames
        if folders is not None:
            dirnames[:] = [d for d in dirnames if not folders.unchanged(Path(dirpath) / d)]
        found = 0
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext == ".adc" and parse_bin_id(stem) is not None:
                found += 1
                yield Path(dirpath) / stem
        if folders is not None and leaf:
            folders.listed(Path(dirpath), found)


def bin_source(base: Path, needs_header: bool = False) -> Source:
    """The `Source` of the bin at `base`: keyed by its absolute base path, listing the files that exist.

    `needs_header`: a bin found in a folder must have its `.hdr` (without one it is probably still being written
    or half copied); a bin named explicitly is read without it."""
    base = Path(os.path.abspath(base))
    files = tuple(f for f in (bin_file(base, ext) for ext in EXTENSIONS) if f.is_file())
    return Source(key=str(base), files=files, reader=IFCBBinReader.name, extra="needs-header" if needs_header else None)


def _text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


class IFCBBinReader:
    """IFCB raw bins, V1 (IFCB1-6) and V2; V1 ROI pairs of one trigger are stitched as pyifcb does."""

    name = "ifcb"
    description = "IFCB raw bins (.hdr/.adc/.roi), V1 and V2, one record per ROI"
    # Before EcoTaxa's and the IFCB PNG reader's (10): their sniffs walk a folder tree to rule themselves out, and a
    # station's data folder holds every bin it ever wrote; this one claims it at the first bin (issue #22).
    sniff_priority = 20
    skips_unchanged_folders = True  # discover() takes `folders` (plankton_cli/ingest: discover)

    def sniff(self, path: Path) -> bool:
        path = Path(path)
        if path.is_dir():
            return next(find_bins(path), None) is not None
        base = bin_base(path)
        return base is not None and bin_file(base, ".adc").is_file()

    def discover(self, path: Path, options: ReadOptions | None = None, folders: Folders | None = None
                 ) -> Iterator[Source]:
        path = Path(path)
        if path.is_dir():
            yield from (bin_source(base, needs_header=True) for base in find_bins(path, folders))
            return
        base = bin_base(path)
        if base is not None and bin_file(base, ".adc").is_file():  # named explicitly: a missing .hdr is tolerated
            yield bin_source(base)

    def read(self, source: Source, options: ReadOptions | None = None) -> Iterator[Record | Rejection]:
        base = Path(source.key)
        adc_path, roi_path = bin_file(base, ".adc"), bin_file(base, ".roi")
        bin_id = parse_bin_id(base.name)
        if bin_id is None:
            yield Rejection(str(adc_path), None, f"{base.name!r} is not an IFCB bin id")
            return
        try:
            adc_data = adc_path.read_bytes()
        except OSError as exc:
            yield Rejection(str(adc_path), None, f"cannot read the .adc file: {exc}")
            return
        hdr_path = bin_file(base, ".hdr")
        header = _read_header(hdr_path)
        schema = SCHEMAS[bin_id.schema]
        parsed = list(parse_adc(adc_data, schema, allowed_column_counts(schema, header)))
        if source.extra == "needs-header" and not hdr_path.is_file():
            reason = "missing .hdr file (a bin still being written or half copied?); name the bin to read it anyway"
            rejected = list(_reject_all(parsed, bin_id, adc_path, hdr_path, reason))
            yield from rejected or [Rejection(str(hdr_path), None, reason)]  # an empty bin is not silent either
            return
        rows = [row for row in parsed if isinstance(row, AdcRow)]
        bin_metadata = {f"hdr.{key}": _text(value) for key, value in header.items()}
        bin_metadata["triggers"] = str(len(parsed))
        bin_metadata["rois"] = str(sum(row.has_image for row in rows))
        volume = ml_analyzed(rows, header, bin_id)
        if volume is not None:
            bin_metadata["ml_analyzed"] = repr(volume)
        instrument = (options.instrument if options is not None else None) or INSTRUMENT

        def record(row: AdcRow, pixels: np.ndarray, extra: dict[str, str] | None = None) -> Record:
            metadata = dict(bin_metadata)
            metadata.update(zip(_adc_keys(schema.name, len(row.fields)), row.fields))
            if extra:
                metadata.update(extra)
            return Record(
                object_id=f"{bin_id.bin_id}_{row.target:05d}",
                image=pixels,
                source_file=str(roi_path),
                source_row=row.target,
                instrument=instrument,
                instrument_serial=bin_id.instrument_serial,
                sample_id=bin_id.bin_id,
                acquired_at=bin_id.acquired_at,
                pixel_size_um=PIXEL_SIZE_UM,
                metadata=metadata,
            )

        try:
            roi_file = open(roi_path, "rb")
        except OSError as exc:
            reason = "missing .roi file" if not roi_path.exists() else f"cannot read the .roi file: {exc}"
            yield from _reject_all(parsed, bin_id, adc_path, roi_path, reason)
            return
        with roi_file:
            size = os.fstat(roi_file.fileno()).st_size
            # mmap cannot map an empty file; empty and 1-2 byte sentinel files simply hold no ROI
            mapping = mmap.mmap(roi_file.fileno(), 0, access=mmap.ACCESS_READ) if size else nullcontext(b"")
            with mapping as buffer:
                yield from _read_rois(parsed, rows, buffer, len(buffer), bin_id, adc_path, roi_path, record)


def _read_header(path: Path) -> Header:
    try:
        return parse_hdr(path.read_bytes().decode("utf-8", errors="replace"))
    except OSError:  # a bin named explicitly may lack its .hdr: the ROIs are still readable
        return Header()


_ADC_KEYS: dict[tuple[str, int], tuple[str, ...]] = {}


def _adc_keys(schema: str, n: int) -> tuple[str, ...]:
    key = (schema, n)
    if key not in _ADC_KEYS:
        _ADC_KEYS[key] = tuple(f"adc.{name}" for name in column_names(SCHEMAS[schema], n))
    return _ADC_KEYS[key]


def _object_id(bin_id: BinId, target: int) -> str:
    return f"{bin_id.bin_id}_{target:05d}"


def _line_rejection(error: AdcLineError, bin_id: BinId, adc_path: Path) -> Rejection:
    return Rejection(str(adc_path), error.target, error.reason, _object_id(bin_id, error.target))


def _reject_all(parsed, bin_id: BinId, adc_path: Path, roi_path: Path, reason: str) -> Iterator[Rejection]:
    """One rejection per ROI the ADC says the bin has, so that counts add up when the pixels are unreadable."""
    for item in parsed:
        if isinstance(item, AdcLineError):
            yield _line_rejection(item, bin_id, adc_path)
        elif item.has_image:
            yield Rejection(str(roi_path), item.target, reason, _object_id(bin_id, item.target))


def _read_rois(parsed, rows, buffer, size, bin_id, adc_path, roi_path, record) -> Iterator[Record | Rejection]:
    """Yield, in target order, a record per ROI (V1 pairs stitched) or a rejection per unusable ADC line or ROI."""
    clashes = overlapping_targets(rows, size)

    def problem(row: AdcRow) -> str | None:
        if row.target in clashes:
            return f"bytes {row.start_byte}..{row.start_byte + row.n_bytes} overlap target {clashes[row.target]}"
        return roi_range_problem(row, size)

    pairs = stitch_pairs(rows) if bin_id.schema == "v1" else {}
    seconds = {b.target for b in pairs.values()}
    failed_seconds: dict[int, str] = {}  # second targets rejected because their pair could not be stitched
    for item in parsed:
        if isinstance(item, AdcLineError):
            yield _line_rejection(item, bin_id, adc_path)
            continue
        if not item.has_image:
            continue
        target = item.target
        if target in failed_seconds:
            yield Rejection(str(roi_path), target, failed_seconds[target], _object_id(bin_id, target))
            continue
        if target in seconds:  # already stitched into the target before it (pyifcb drops it)
            continue
        reason = problem(item)
        partner = pairs.get(target)
        if partner is not None:
            partner_reason = problem(partner)
            if reason or partner_reason:
                failed_seconds[partner.target] = partner_reason or f"stitch partner target {target}: {reason}"
                reason = reason or f"stitch partner target {partner.target}: {partner_reason}"
        if reason:
            yield Rejection(str(roi_path), target, reason, _object_id(bin_id, target))
            continue
        pixels = roi_pixels(buffer, item)
        if partner is None:
            yield record(item, pixels)
        else:
            image, gap = stitch(item, pixels, partner, roi_pixels(buffer, partner))
            yield record(item, infill(image, gap), {"stitched_with": str(partner.target)})
