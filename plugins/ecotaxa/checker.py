"""A strict check of an EcoTaxa import zip: would EcoTaxa import it, and import what we meant?

The reader (`reader.py`, `tsv.py`) is lenient; this module is the opposite. It applies EcoTaxa's own import rules
(`reference/ecotaxa-format.md` §1–§7, from `ecotaxa_back: py/BO/TSVFile.py`) plus the two rules EcoTaxa does not
enforce but silently gets wrong without: a UTF-8 byte-order mark (without one, EcoTaxa decodes the file as
latin-1) and the `[t]/[f]` types row (without one, EcoTaxa swallows the first object as types).

`check_import_zip(path)` returns a list of problems, each naming the TSV and row; an empty list means valid. The
EcoTaxa writer runs it on every zip it produces.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import posixpath
import re
import warnings
import zipfile
from collections import Counter
from pathlib import Path

from PIL import Image

from plankton_plugins.ecotaxa.reader import TSV_NAME, is_safe_member, parse_coordinate, parse_date, parse_time

MAX_TSV_FILES = 2000  # "You tried to import too many files, max. is 2000"
MAX_ROW_PROBLEMS = 50  # per TSV: a broken export would otherwise list one problem per row
IMAGE_FORMATS = {"PNG", "JPEG", "GIF"}  # py/BO/Image.py
MAX_IMAGE_PIXELS = 20000 * 20000

PREFIXES = ("object", "acq", "process", "sample")
PREDEFINED = {
    "img_file_name", "img_rank", "complement_info",
    "object_id", "object_lat", "object_lon", "object_date", "object_time", "object_link",
    "object_depth_min", "object_depth_max",
    "object_annotation_status", "object_annotation_category", "object_annotation_category_id",
    "object_annotation_person_name", "object_annotation_person_email",
    "object_annotation_date", "object_annotation_time", "object_annotation_hierarchy",
    "sample_id", "sample_dataportal_descriptor", "acq_id", "acq_instrument", "process_id",
}  # fmt: skip
"""Columns EcoTaxa maps to fixed fields; every other `<prefix>_<name>` column is a custom (free) field."""

NUMERIC_PREDEFINED = {"img_rank", "object_depth_min", "object_depth_max", "object_annotation_category_id"}
CUSTOM_LIMITS = {  # py/DB/Object.py, Sample.py, Acquisition.py, Process.py
    ("object", "[f]"): 500,
    ("object", "[t]"): 20,
    ("sample", None): 60,
    ("acq", None): 30,
    ("process", None): 30,
}
STATUSES = {"predicted", "validated", "dubious", "discarded"}
MODES = ("new", "update")


def check_import_zip(path: str | Path, *, mode: str = "new", taxa: dict[str, str | None] | None = None) -> list[str]:
    """Problems that would make EcoTaxa reject `path` or import it wrongly; empty when it is a valid import.

    `mode="new"` checks a bundle of new objects (every row needs an image in the zip); `mode="update"` checks the
    update form for objects already in EcoTaxa (`update_mode="Cla"`): `object_id`, status and category, images
    optional. `taxa` (EcoTaxa name -> category id or None, as a taxon map or an export confirms them) makes every
    category a row names one of them, with that id or none: EcoTaxa keeps the id and drops the name, so an id
    nobody confirmed lands the object on whatever taxon has it.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        return [f"not a readable zip archive: {exc}"]
    problems: list[str] = []
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        problems += [f"zip member {i.filename!r} escapes the archive" for i in infos if not is_safe_member(i.filename)]
        members = {posixpath.normpath(i.filename): i for i in infos if is_safe_member(i.filename)}
        tsvs = sorted(
            name for name in members
            if TSV_NAME.match(posixpath.basename(name)) and not name.startswith("__MACOSX/")
        )  # fmt: skip
        if not tsvs:
            problems.append("no file named ecotaxa*.tsv in the zip: EcoTaxa would find nothing to import")
        if len(tsvs) > MAX_TSV_FILES:
            problems.append(f"{len(tsvs)} TSV files; EcoTaxa imports at most {MAX_TSV_FILES}")
        images = _ImageChecker(archive)
        for tsv in tsvs:
            problems += [f"{tsv}: {p}" for p in _check_tsv(archive.read(members[tsv]), tsv, members, images, mode,
                                                           taxa)]
    return problems


class _ImageChecker:
    """Checks each image member once (an object may list the same file twice)."""

    def __init__(self, archive: zipfile.ZipFile):
        self.archive = archive
        self._seen: dict[str, str | None] = {}

    def problem(self, info: zipfile.ZipInfo) -> str | None:
        if info.filename not in self._seen:
            self._seen[info.filename] = self._check(info)
        return self._seen[info.filename]

    def _check(self, info: zipfile.ZipInfo) -> str | None:
        try:
            data = self.archive.read(info)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    kind, (width, height) = image.format, image.size
        except Exception as exc:  # Pillow raises many types for garbage
            return f"image {info.filename!r} is not readable: {type(exc).__name__}: {exc}"
        if kind not in IMAGE_FORMATS:
            return f"image {info.filename!r} is {kind}; EcoTaxa imports only PNG, JPEG and GIF"
        if width * height > MAX_IMAGE_PIXELS:
            return f"image {info.filename!r} is {width}x{height}, over EcoTaxa's 20000x20000 limit"
        return None


def _is_number(text: str) -> bool:
    """A finite number, or empty / `nan` / `na` (which EcoTaxa stores as empty)."""
    text = text.strip().lower()
    if text in ("", "nan", "na"):
        return True
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _check_header(header: list[str], types: list[str] | None, mode: str) -> list[str]:
    problems = []
    for name, count in Counter(header).items():
        if count > 1:
            problems.append(f"column {name!r} appears {count} times")
    for name in header:
        if name not in PREDEFINED and not re.fullmatch(rf"({'|'.join(PREFIXES)})_\S+", name):
            problems.append(f"column {name!r} is neither predefined nor named <prefix>_<name> ({', '.join(PREFIXES)})")
    required = ["object_id"] + (["img_file_name"] if mode == "new" else
                                ["object_annotation_status", "object_annotation_category"])
    problems += [f"no {column} column" for column in required if column not in header]
    for prefix in ("sample", "acq", "process"):
        if any(n.startswith(f"{prefix}_") for n in header) and f"{prefix}_id" not in header:
            problems.append(f"{prefix}_* columns without {prefix}_id (EcoTaxa requires it)")
    if "object_annotation_hierarchy" in header:
        problems.append("object_annotation_hierarchy present: EcoTaxa no longer imports it; leave it out")
    if types is not None:
        counts: Counter = Counter()
        for name, kind in zip(header, types):
            prefix = name.split("_", 1)[0]
            if name in PREDEFINED or prefix not in PREFIXES:
                continue
            counts[(prefix, kind if prefix == "object" else None)] += 1
        for (prefix, kind), limit in CUSTOM_LIMITS.items():
            if counts[(prefix, kind)] > limit:
                what = {"[f]": "numeric ", "[t]": "text "}.get(kind or "", "")
                problems.append(f"{counts[(prefix, kind)]} custom {what}{prefix} columns; EcoTaxa allows {limit}")
    return problems


def _read_rows(data: bytes) -> tuple[list[list[str]] | None, list[str]]:
    problems = []
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    else:
        problems.append("no UTF-8 byte-order mark: EcoTaxa would decode the file as latin-1")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, problems + [f"not valid UTF-8 (byte {exc.start})"]
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar='"', strict=True))
    except csv.Error as exc:
        return None, problems + [f"unparsable TSV: {exc}"]
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    return rows, problems


def _check_tsv(data: bytes, tsv: str, members: dict[str, zipfile.ZipInfo], images: _ImageChecker,
               mode: str, taxa: dict[str, str | None] | None = None) -> list[str]:
    rows, problems = _read_rows(data)
    if rows is None:
        return problems
    if not rows:
        return problems + ["empty file"]
    header = [name.strip(" \t").lower() for name in rows[0]]
    if len(header) == 1:
        return problems + [f"a single column {rows[0][0][:80]!r}: the file is not tab-separated"]
    types = None
    has_types_row = len(rows) >= 2 and all(cell.strip().lower() in ("[t]", "[f]") for cell in rows[1])
    if not has_types_row:
        problems.append("line 2 is not a [t]/[f] types row: EcoTaxa would swallow the first object as types")
    elif len(rows[1]) != len(header):
        problems.append(f"the types row has {len(rows[1])} tokens for {len(header)} columns")
    else:
        types = [cell.strip().lower() for cell in rows[1]]
    problems += _check_header(header, types, mode)
    kinds = dict(zip(header, types or ["[t]"] * len(header)))
    numeric = [n for n in header if n in NUMERIC_PREDEFINED or
               (kinds[n] == "[f]" and n.startswith("object_") and n not in PREDEFINED)]
    row_problems: list[str] = []
    seen_ids: set[str] = set()
    seen_keys: set[tuple[str, str, str]] = set()
    sample_of: dict[str, str] = {}  # acq_id -> the sample it was first seen in
    folder = posixpath.dirname(tsv)
    first_data_line = 3 if has_types_row else 2
    for line, cells in enumerate(rows[first_data_line - 1:], start=first_data_line):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            row_problems.append(f"line {line}: {len(cells)} fields, the header has {len(header)}")
            continue
        values = {name: cell.strip() for name, cell in zip(header, cells)}
        row_problems += [f"line {line}: {p}" for p in _check_row(values, numeric, mode, folder, members, images,
                                                                  seen_ids, seen_keys)]
        row_problems += [f"line {line}: {p}" for p in _check_parents(values, mode, sample_of)]
        if taxa is not None:
            row_problems += [f"line {line}: {p}" for p in _check_taxon(values, taxa)]
    if len(row_problems) > MAX_ROW_PROBLEMS:
        more = len(row_problems) - MAX_ROW_PROBLEMS
        row_problems = row_problems[:MAX_ROW_PROBLEMS] + [f"... and {more} more row problems"]
    return problems + row_problems


def _check_row(values: dict[str, str], numeric: list[str], mode: str, folder: str,
               members: dict[str, zipfile.ZipInfo], images: _ImageChecker,
               seen_ids: set[str], seen_keys: set[tuple[str, str, str]]) -> list[str]:
    problems = []
    object_id = values.get("object_id", "")
    image = values.get("img_file_name", "")
    if "object_id" in values and not object_id:
        problems.append("empty object_id")
    elif object_id:
        # An object may carry several images, each its own row: accepted only with another file and another
        # img_rank (EcoTaxa would renumber a clash silently; the same object with the same image is an error).
        rank = values.get("img_rank", "").strip() or "0"
        keys = {(object_id, "image", image), (object_id, "rank", rank)}
        if object_id in seen_ids and (keys & seen_keys or not image):
            problems.append(f"object_id {object_id!r} appears twice (a further image needs its own file and img_rank)")
        seen_ids.add(object_id)
        seen_keys |= keys
    if mode == "new" and "img_file_name" in values and not image:
        problems.append("empty img_file_name")
    if image:
        problems += _image_problems(image, folder, members, images)

    status = values.get("object_annotation_status", "")
    category = values.get("object_annotation_category", "") or values.get("object_annotation_category_id", "")
    if status and not category:
        problems.append(f"status {status!r} without a category (EcoTaxa rejects it)")
    if category and not status:
        problems.append(f"category {category!r} without a status (EcoTaxa rejects it)")
    if status and status.lower() not in STATUSES:
        problems.append(f"unknown status {status!r} (expected one of {', '.join(sorted(STATUSES))})")

    for column in numeric:
        if not _is_number(values[column]):
            problems.append(f"{column} {values[column]!r} is not a number")
    for column, limit in (("object_lat", 90), ("object_lon", 180)):
        text = values.get(column, "")
        if text and text.lower() not in ("nan", "na") and parse_coordinate(text, limit) is None:
            problems.append(f"{column} {text!r} is not a coordinate within ±{limit}")
    if values.get("object_date") and parse_date(values["object_date"]) is None:
        problems.append(f"object_date {values['object_date']!r} is not a date (YYYYMMDD)")
    if values.get("object_time") and parse_time(values["object_time"]) is None:
        problems.append(f"object_time {values['object_time']!r} is not a time (HHMMSS)")
    return problems


def _check_parents(values: dict[str, str], mode: str, sample_of: dict[str, str]) -> list[str]:
    """A new object's sample and acquisition: named (EcoTaxa would file an empty one under `__DUMMY_ID__`), and
    one acquisition in one sample only (EcoTaxa's acquisitions belong to one sample)."""
    if mode != "new":
        return []
    problems = [f"empty {column}" for column in ("sample_id", "acq_id") if column in values and not values[column]]
    acq, sample = values.get("acq_id", ""), values.get("sample_id", "")
    if acq and sample:
        first = sample_of.setdefault(acq, sample)
        if first != sample:
            problems.append(f"acq_id {acq!r} in two samples ({first!r} and {sample!r})")
    return problems


def _check_taxon(values: dict[str, str], taxa: dict[str, str | None]) -> list[str]:
    """The row's category against the confirmed taxa: a known name, with its own id or none."""
    name = values.get("object_annotation_category", "")
    category_id = values.get("object_annotation_category_id", "")
    if not name and not category_id:
        return []
    if name not in taxa:
        return [f"category {name or category_id!r} is not a confirmed EcoTaxa taxon (taxon map or export)"]
    if category_id and category_id != taxa[name]:
        expected = f"id {taxa[name]}" if taxa[name] else "no id"
        return [f"category {name!r} with id {category_id}, but the taxon map or export gives it {expected}"]
    return []


def _image_problems(name: str, folder: str, members: dict[str, zipfile.ZipInfo], images: _ImageChecker) -> list[str]:
    name = name.replace("\\", "/")
    if not is_safe_member(name):
        return [f"img_file_name {name!r} escapes the archive"]
    wanted = posixpath.normpath(posixpath.join(folder, name))
    info = members.get(wanted)
    if info is None:
        return [f"img_file_name {name!r}: no {wanted!r} in the zip (paths are relative to the TSV)"]
    problem = images.problem(info)
    return [problem] if problem else []
