"""What a reader yields: one `Record` per object, or one `Rejection` per object it could not read.

Readers never raise on bad input. Every malformed object becomes a `Rejection` naming the file, the row
(or byte offset, or ADC line) and the reason, so that `read = stored + skipped + rejected` always holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

LABEL_STATUSES = ("validated", "predicted", "dubious", "discarded", "none")
"""EcoTaxa's annotation statuses (V, P, D, X) plus `none` for unlabelled objects."""

UNKNOWN_INSTRUMENT = "unknown"
"""Stored when a source does not say which instrument took the image (the store partition needs a value)."""


@dataclass(slots=True)
class Record:
    """One object (one image) read from a source.

    `image` is either the encoded bytes of an image file exactly as they were in the source (PNG, JPEG, …; stored
    as is, so nothing is re-encoded or lost) or a uint8 array of shape (H, W) or (H, W, C) for sources that hold raw
    pixels (IFCB `.roi`), which the store encodes losslessly as PNG.
    """

    object_id: str
    image: bytes | np.ndarray
    source_file: str
    source_row: int | None = None
    label: str | None = None
    label_status: str = "none"
    lineage: str | None = None
    instrument: str | None = None
    instrument_serial: str | None = None
    sample_id: str | None = None
    acquired_at: datetime | None = None  # timezone-aware UTC
    lat: float | None = None
    lon: float | None = None
    depth: float | None = None
    pixel_size_um: float | None = None  # micrometres per pixel
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Rejection:
    """An object a reader could not turn into a `Record`, and why."""

    source_file: str
    source_row: int | str | None
    reason: str
    object_id: str | None = None

    def __str__(self) -> str:
        where = self.source_file if self.source_row is None else f"{self.source_file}:{self.source_row}"
        return f"{where}: {self.reason}"


@dataclass(slots=True, frozen=True)
class Source:
    """One unit of ingestion: an IFCB bin, one EcoTaxa TSV, one image file.

    The store's manifest keys on `key` and checksums `files`: a source whose files are unchanged is never read
    twice, and one whose content changed is read again and supersedes its old rows.
    """

    key: str  # stable and unique, e.g. the bin's path without extension, or the TSV's path
    files: tuple[Path, ...]
    reader: str
    extra: Any = None  # reader-private (e.g. the zip member holding a TSV)


@dataclass(slots=True)
class ReadOptions:
    """Options the `ingest` command passes to every reader; readers ignore what does not apply to them."""

    instrument: str | None = None  # overrides/sets the instrument (EcoTaxa `acq_instrument` vocabulary)
    label_from: str = "folder"  # image folders: "folder" (class = parent folder name) or "none"
    # Qualifies the ids of sources that have no store-wide ids of their own (image folders, EcoTaxa), so two
    # sources never share one; default: the name of the folder (or zip) given. See schemas/README.md.
    collection: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # `-o key=value` pairs for third-party readers
