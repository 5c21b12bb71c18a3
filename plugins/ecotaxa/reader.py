"""EcoTaxa import bundles and exports, zipped or unpacked, as `Record`s.

A bundle is searched recursively for `ecotaxa*.tsv` / `ecotaxa*.txt` (EcoTaxa's own rule); each TSV is one
`Source`, and its `img_file_name`s are resolved relative to the TSV. This covers EcoTaxa's import layout
(`<sample>/ecotaxa_<sample>.tsv` + images), its exports (TSV split by sample/acquisition/taxon, backup, DOI) and
third-party writers (pyifcb, PlanktoScope, MorphoCut). A TSV path given directly is read whatever its name, so
annotations-only exports such as `ref.tsv` can be read too (their rows are rejected: the store needs an image).

Rows are streamed and images opened one at a time, so memory stays flat however large the export.
"""

from __future__ import annotations

import csv
import math
import os
import posixpath
import re
import zipfile
from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Protocol

from plankton_cli.core.records import ReadOptions, Record, Rejection, Source
from plankton_cli.core.instruments import canonical_instrument
from plankton_plugins.ecotaxa.tsv import BinaryOpener, TsvReader, utf16_codec, normalize_category

TSV_NAME = re.compile(r"^ecotaxa.*\.(tsv|txt)$", re.IGNORECASE)
NATIVE_ID = "ecotaxa_object_id"
"""Metadata key of EcoTaxa's own `object_id`; the store id is `<collection>/<object_id>[#rank]`."""
_EXPORT_PROJECT = re.compile(r"export_(\d+)_")  # EcoTaxa's export names: export_<project id>_<date>...
MAX_IMAGE_BYTES = 256 << 20  # far above any vignette; guards against a zip bomb posing as an image

STATUSES = {
    "validated": "validated", "v": "validated",
    "predicted": "predicted", "p": "predicted",
    "dubious": "dubious", "d": "dubious",
    "discarded": "discarded", "x": "discarded",
}
"""EcoTaxa annotation statuses, long names and one-letter codes."""

PIXEL_SIZE_COLUMNS: dict[str, Callable[[float], float]] = {
    "process_particle_pixel_size_mm": lambda mm: mm * 1000.0,  # pyifcb, FlowCam exports
    "process_particle_pixel_size_um": lambda um: um,
    "process_particle_pixel_size_\u00b5m": lambda um: um,  # micro sign, as in iRfcb's latin-1 table
    "process_particle_pixel_size_\u03bcm": lambda um: um,  # Greek mu
    "acq_resolution_pixels_per_micron": lambda px_per_um: 1.0 / px_per_um,  # iRfcb IFCB convention
}
"""Columns that state the pixel size, with the conversion to micrometres per pixel (first one found wins).

ZooProcess' `process_pixel` is left out on purpose: its unit differs between instruments.
"""

_NOT_A_NUMBER = {"", "nan", "na"}  # EcoTaxa treats these as empty in numeric columns
_DMS = re.compile(
    r"^(?P<sign>[+-]?)(?P<deg>\d+(?:\.\d+)?)\s*°\s*(?:(?P<min>\d+(?:\.\d+)?)\s*['′]?\s*)?"
    r"(?:(?P<sec>\d+(?:\.\d+)?)\s*(?:\"|″|'')?\s*)?(?P<hemi>[NSEWnsew])?$"
)
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?")


# -- field parsing -------------------------------------------------------------------------------------------


def parse_number(text: str | None) -> float | None:
    """A finite float, or None for empty, `nan`, `na` and anything unparsable (a decimal comma is accepted)."""
    if text is None or text.strip().lower() in _NOT_A_NUMBER:
        return None
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_coordinate(text: str | None, limit: float) -> float | None:
    """Decimal degrees from `-24.41` or `DDD°MM SS` (optionally with N/S/E/W), within ±`limit`, else None."""
    if text is None:
        return None
    value = parse_number(text)
    if value is None:
        match = _DMS.match(text.strip())
        if not match:
            return None
        value = float(match["deg"]) + float(match["min"] or 0) / 60 + float(match["sec"] or 0) / 3600
        if match["sign"] == "-" or (match["hemi"] or "").upper() in ("S", "W"):
            value = -value
    return value if abs(value) <= limit else None


def parse_date(text: str | None) -> date | None:
    """`YYYYMMDD` or `YYYY-MM-DD`."""
    match = re.fullmatch(r"(\d{4})-?(\d{2})-?(\d{2})", (text or "").strip())
    if not match:
        return None
    try:
        return date(*map(int, match.groups()))
    except ValueError:
        return None


def parse_time(text: str | None) -> time | None:
    """`HH:MM[:SS]`, or `HHMM[SS]` left-padded with zeros (`420` → 04:20) of which only the first 6 digits
    count (`020139.315` → 02:01:39), as EcoTaxa reads `object_time`."""
    text = (text or "").strip()
    clock = _CLOCK.match(text)
    if clock:
        hours, minutes, seconds = clock.groups()
        parts = (hours, minutes, seconds or "0")
    else:
        digits = text.split(".")[0][:6]
        if not digits.isdigit():
            return None
        digits = digits.zfill(4) if len(digits) <= 4 else digits.zfill(6)
        parts = (digits[:2], digits[2:4], digits[4:6] or "0")
    try:
        return time(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        return None


def pixel_size_um(values: dict[str, str]) -> float | None:
    """Micrometres per pixel from the first column of `PIXEL_SIZE_COLUMNS` that holds a positive number."""
    for column, to_um in PIXEL_SIZE_COLUMNS.items():
        value = parse_number(values.get(column))
        if value is not None and value > 0:
            return to_um(value)
    return None


def _category_id(text: str) -> str:
    """`85012.0` → `85012`: exports write the id as a number."""
    number = parse_number(text)
    return str(int(number)) if number is not None and number.is_integer() else text


def row_to_record(values: dict[str, str], options: ReadOptions) -> Record:
    """The `Record` fields of one TSV row (everything but `object_id`, `image` and where it came from).

    Columns carried by a record field are consumed; every other non-empty column goes into `metadata` as text
    under its lower-cased header name, including those a field only summarises or normalises (depth min/max,
    `acq_instrument`, category id, image name and rank), so an export back to EcoTaxa loses nothing.
    """

    def get(column: str) -> str:
        return (values.get(column) or "").strip()

    consumed = {"object_id"}
    record = Record(object_id="", image=b"", source_file="")

    category = normalize_category(get("object_annotation_category"))
    if category:
        record.label = category
        consumed.add("object_annotation_category")
    elif get("object_annotation_category_id"):
        record.label = f"id:{_category_id(get('object_annotation_category_id'))}"
    status = STATUSES.get(get("object_annotation_status").lower())
    if record.label is not None:
        # EcoTaxa demands a status with every category; without a known one, trust the label least.
        record.label_status = status or "predicted"
        if status:
            consumed.add("object_annotation_status")
    if get("object_annotation_hierarchy"):
        record.lineage = get("object_annotation_hierarchy")
        consumed.add("object_annotation_hierarchy")

    record.lat = parse_coordinate(get("object_lat"), 90)
    record.lon = parse_coordinate(get("object_lon"), 180)
    consumed |= {c for c, v in (("object_lat", record.lat), ("object_lon", record.lon)) if v is not None}

    day, clock = parse_date(get("object_date")), parse_time(get("object_time"))
    if day is not None:
        record.acquired_at = datetime.combine(day, clock or time(0), tzinfo=timezone.utc)
        if clock is not None:
            consumed |= {"object_date", "object_time"}

    depths = [parse_number(get("object_depth_min")), parse_number(get("object_depth_max"))]
    depths = [d for d in depths if d is not None]
    record.depth = sum(depths) / len(depths) if depths else None

    instrument = get("acq_instrument")
    if instrument:
        # The store keeps the canonical name; the raw text stays in metadata (not consumed) so that a write back
        # to EcoTaxa gives the export's own value (`epson`, `zooscan`), which EcoTaxa already accepted.
        record.instrument = canonical_instrument(instrument) or instrument
    elif options.instrument:
        record.instrument = canonical_instrument(options.instrument) or options.instrument
    if get("sample_id"):
        record.sample_id = get("sample_id")
        consumed.add("sample_id")
    record.pixel_size_um = pixel_size_um(values)

    record.metadata = {k: v.strip() for k, v in values.items() if k not in consumed and v.strip()}
    return record


# -- where the images are ------------------------------------------------------------------------------------


class _Images(Protocol):
    def load(self, name: str) -> tuple[bytes, None] | tuple[None, str]:
        """The bytes of the image `img_file_name` names, or None and why not."""
        ...


class _FolderImages:
    """Images on disk, relative to the TSV's folder."""

    def __init__(self, tsv: Path):
        self.folder = tsv.parent

    def load(self, name: str) -> tuple[bytes, None] | tuple[None, str]:
        if not is_safe_member(name):  # the same rule as inside a zip: nothing outside the bundle is read
            return None, f"img_file_name {name!r} escapes the bundle (absolute path or '..'); it must be relative " \
                         f"to the TSV, at or below its folder"
        path = self.folder / name
        target = path.resolve()
        if target != path.absolute() and not target.is_relative_to(self.folder.resolve()):
            # a symlink (the image, or a folder on its way) is the same escape as a '..' in the name
            return None, f"img_file_name {name!r} escapes the bundle through a symlink (to {target}); it must be " \
                         f"a file at or below the TSV's folder"
        try:
            size = path.stat().st_size
            if size > MAX_IMAGE_BYTES:
                return None, f"image file {name!r} is {size} bytes, over the {MAX_IMAGE_BYTES} limit"
            return path.read_bytes(), None
        except FileNotFoundError:
            return None, f"no image file: {name!r} not found next to the TSV ({path})"
        except OSError as exc:
            return None, f"cannot read image file {name!r}: {exc}"


class _ZipImages:
    """Images inside the zip, relative to the TSV member's folder; nothing outside the archive is reachable."""

    def __init__(self, archive: zipfile.ZipFile, tsv_member: str):
        self.archive = archive
        self.folder = posixpath.dirname(tsv_member)
        # Some writers store `./a.png`; look names up in normalised form.
        self.members = {posixpath.normpath(i.filename): i for i in archive.infolist() if not i.is_dir()}

    def load(self, name: str) -> tuple[bytes, None] | tuple[None, str]:
        if not is_safe_member(name):
            return None, f"img_file_name {name!r} escapes the archive (absolute path or '..')"
        wanted = posixpath.normpath(posixpath.join(self.folder, name))
        if wanted.startswith("../") or wanted == "..":
            return None, f"img_file_name {name!r} escapes the archive (absolute path or '..')"
        info = self.members.get(wanted)
        if info is None:
            return None, f"no image file: {wanted!r} is not in the archive"
        if info.file_size > MAX_IMAGE_BYTES:
            return None, f"image member {wanted!r} is {info.file_size} bytes, over the {MAX_IMAGE_BYTES} limit"
        try:
            return self.archive.read(info), None
        except (zipfile.BadZipFile, OSError, NotImplementedError) as exc:  # CRC error, unsupported compression
            return None, f"cannot read image member {wanted!r}: {exc}"


def is_safe_member(name: str) -> bool:
    """False for zip paths that would land outside the archive: absolute, drive-letter or with `..` parts."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return False
    return ".." not in re.split(r"[/\\]", name)


def collection_name(options: ReadOptions, folder: Path, named: Path) -> str:
    """What qualifies the ids of an EcoTaxa source: `--collection`, else `ecotaxa-<project id>` when the export's
    zip or TSV name says it (`export_<project>_...`), else the name of the bundle (zip or folder given)."""
    if options.collection:
        return options.collection
    project = _EXPORT_PROJECT.search(named.name)
    return f"ecotaxa-{project[1]}" if project else (folder.name or "root")


def _tsv_members(archive: zipfile.ZipFile) -> list[str]:
    return sorted(
        info.filename
        for info in archive.infolist()
        if not info.is_dir()
        and TSV_NAME.match(posixpath.basename(info.filename.replace("\\", "/")))
        and not info.filename.startswith("__MACOSX/")
    )


def _zip_has_tsv(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(_tsv_members(archive))
    except (zipfile.BadZipFile, OSError):
        return False


def _looks_like_tsv(path: Path) -> bool:
    """A `.tsv`/`.txt` named `ecotaxa*`, or whose header line names `object_id`."""
    if path.suffix.lower() not in (".tsv", ".txt"):
        return False
    if TSV_NAME.match(path.name):
        return True
    try:
        with path.open("rb") as stream:
            head = stream.read(1 << 16)
    except OSError:
        return False
    first_line = head.decode(utf16_codec(head) or "latin-1", errors="replace").splitlines()[:1]
    return bool(first_line) and "object_id" in (c.strip(' \t"').lower() for c in first_line[0].split("\t"))


def _find_tsv(folder: Path, depth: int) -> bool:
    """True when an `ecotaxa*.tsv|txt` lies in `folder` or at most `depth` levels below it."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    if any(e.is_file() and TSV_NAME.match(e.name) for e in entries):
        return True
    return depth > 0 and any(
        _find_tsv(Path(e.path), depth - 1) for e in entries if e.is_dir() and not e.name.startswith(".")
    )


def _row_problem(header: list[str], object_id: str, image_name: str, pairs: set[tuple[str, str]]) -> str | None:
    """Why a well-formed row still cannot become a record (before its image is opened), or None."""
    if not object_id:
        return "missing object_id" + ("" if "object_id" in header else " (the TSV has no object_id column)")
    if "img_file_name" not in header:
        # Annotations-only exports carry labels for objects already in EcoTaxa, but the store needs pixels.
        return (
            "no image file: the TSV has no img_file_name column (an annotations-only export?) "
            "and the store needs an image"
        )
    if not image_name:
        return "no image file: img_file_name is empty"
    if (object_id, image_name) in pairs:
        return f"duplicate object: {object_id!r} with image {image_name!r} again"
    return None


class EcoTaxaReader:
    """Reads EcoTaxa TSVs with their images from a zip, a folder, or a TSV path."""

    name = "ecotaxa"
    description = "EcoTaxa import bundles and exports (zip or folder with ecotaxa*.tsv and images)"
    sniff_priority = 10

    def sniff(self, path: Path) -> bool:
        path = Path(path)
        if path.is_dir():
            # deep enough for `export/<sample>/ecotaxa_*.tsv` and QA trees; a zip export one level down counts too
            return _find_tsv(path, depth=3) or any(
                _zip_has_tsv(p) for p in sorted(path.glob("*.zip")) if p.is_file()
            )
        if path.is_file():
            return _zip_has_tsv(path) if zipfile.is_zipfile(path) else _looks_like_tsv(path)
        return False

    def discover(self, path: Path, options: ReadOptions) -> Iterator[Source]:
        path = Path(path).absolute()
        if path.is_file():
            if zipfile.is_zipfile(path):
                yield from self._zip_sources(path, options)
            else:  # a TSV given by name is read whatever it is called (a broken .zip is rejected by read)
                yield Source(key=str(path), files=(path,), reader=self.name,
                             extra=(None, collection_name(options, path.parent, path)))
            return
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
            for name in sorted(files):
                file = Path(folder, name)
                if TSV_NAME.match(name):
                    yield Source(key=str(file), files=(file,), reader=self.name,
                                 extra=(None, collection_name(options, path, file)))
                elif name.lower().endswith(".zip") and zipfile.is_zipfile(file):
                    yield from self._zip_sources(file, options)

    def _zip_sources(self, archive_path: Path, options: ReadOptions) -> Iterator[Source]:
        try:
            with zipfile.ZipFile(archive_path) as archive:
                members = _tsv_members(archive)
        except (zipfile.BadZipFile, OSError):
            return  # not readable as a zip: nothing to discover (sniff said no as well)
        for member in members:
            collection = collection_name(options, archive_path.with_suffix(""), archive_path)
            yield Source(key=f"{archive_path}!{member}", files=(archive_path,), reader=self.name,
                         extra=(member, collection))

    def read(self, source: Source, options: ReadOptions) -> Iterator[Record | Rejection]:
        last_row = None
        try:
            for item in self._read_source(source, options):
                last_row = item.source_row
                yield item
        except (OSError, zipfile.BadZipFile, KeyError, csv.Error) as exc:
            # The file vanished or broke mid-read: say where reading stopped rather than crash the ingest.
            where = "" if last_row is None else f" after row {last_row}"
            yield Rejection(source.key, None, f"stopped reading{where}: {type(exc).__name__}: {exc}")

    def _read_source(self, source: Source, options: ReadOptions) -> Iterator[Record | Rejection]:
        # (the zip member holding the TSV or None for a TSV on disk, the collection qualifying the ids)
        member, collection = source.extra or (None, collection_name(options, source.files[0].parent,
                                                                    source.files[0]))
        if member is None:  # a TSV on disk
            tsv = source.files[0]
            if tsv.suffix.lower() == ".zip":  # discover passes on a zip it could not open, to be reported here
                yield Rejection(source.key, None, "not a readable zip archive")
                return
            yield from self._read_tsv(str(tsv), lambda: tsv.open("rb"), _FolderImages(tsv), collection, options)
            return
        if not is_safe_member(member):
            yield Rejection(source.key, None, f"zip member {member!r} escapes the archive (absolute path or '..')")
            return
        with zipfile.ZipFile(source.files[0]) as archive:
            images = _ZipImages(archive, member)
            yield from self._read_tsv(source.key, lambda: archive.open(member), images, collection, options)

    def _read_tsv(
        self, source_file: str, open_binary: BinaryOpener, images: _Images, collection: str, options: ReadOptions
    ) -> Iterator[Record | Rejection]:
        taken: set[str] = set()  # record ids given out, to keep them unique within the TSV
        pairs: set[tuple[str, str]] = set()  # (object_id, img_file_name): the same pair twice is a repeat
        with TsvReader(open_binary) as tsv:
            for row in tsv:
                values = row.values or {}
                object_id = values.get("object_id", "").strip()
                image_name = values.get("img_file_name", "").strip().replace("\\", "/")
                record_id, data = None, None
                problem = row.error or _row_problem(tsv.header, object_id, image_name, pairs)
                if problem is None:
                    record_id = self._record_id(object_id, values.get("img_rank"), taken)
                    data, problem = images.load(image_name)  # the store decodes it, and rejects it if it must
                if problem is not None:
                    native = record_id or object_id
                    yield Rejection(source_file, row.number, problem, f"{collection}/{native}" if native else None)
                    continue
                taken.add(record_id)
                pairs.add((object_id, image_name))
                record = row_to_record(values, options)
                record.object_id, record.image = f"{collection}/{record_id}", data
                record.metadata[NATIVE_ID] = object_id  # EcoTaxa's own id, for write-back (update mode)
                record.source_file, record.source_row = source_file, row.number
                yield record

    @staticmethod
    def _record_id(object_id: str, rank_text: str | None, taken: set[str]) -> str:
        """`object_id`, or `object_id#rank` for an object's further images (`img_rank` > 0).

        Like EcoTaxa, the same object with another image and no (or a taken) rank gets the next free rank.
        """
        rank = parse_number(rank_text)
        rank = int(rank) if rank is not None and rank > 0 else 0
        record_id = f"{object_id}#{rank}" if rank else object_id
        if record_id not in taken:
            return record_id
        rank = max(rank, 1)
        while f"{object_id}#{rank}" in taken:
            rank += 1
        return f"{object_id}#{rank}"
