"""Tolerant, streaming parsing of EcoTaxa TSV files (import bundles and exports).

EcoTaxa itself opens every TSV as latin-1 and always swallows line 2 as the types row; real files break both
rules (UTF-8 without BOM, CR-only line ends, no types row). Following MorphoCluster's `fix-ecotaxa` and
pyecotaxa, this module is lenient where EcoTaxa is strict:

1. decode UTF-8 with BOM, UTF-16 (Excel's "Unicode text", with or without BOM), then UTF-8, then latin-1 (which
   never fails);
2. accept CR, LF and CRLF line ends;
3. treat line 2 as the types row only when every cell is `[t]`, `[f]` or `[n]`, quoted or not;
4. strip and lower-case header names (and stray quotes around them).

Rows are read one at a time with the `csv` module over a decoded text stream, so memory does not grow with the
file.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

BinaryOpener = Callable[[], BinaryIO]
"""Opens the TSV afresh as a binary stream (a file or a zip member): the encoding is found in a first pass."""

_UTF8_BOM = codecs.BOM_UTF8
_CHUNK = 1 << 16
_TYPE_TOKEN = re.compile(r"\[[tfn]\]")
_NAME_PARENT = re.compile(r"^(?P<name>.*?\S)\s*\((?P<parent>[^()]*\S)\s*\)\s*$")


def detect_encoding(open_binary: BinaryOpener) -> str:
    """`utf-8-sig` when the file starts with a BOM; `utf-16-le`/`utf-16-be` (Excel's "Unicode text") when it
    starts with a UTF-16 BOM, or without one when its first bytes are ASCII spread over two bytes a character;
    `utf-8` when all of it decodes as UTF-8; else `latin-1`.

    Reads the file in chunks through an incremental decoder, so even a large TSV is never held in memory.
    """
    with open_binary() as stream:
        head = stream.read(_CHUNK)
        if head.startswith(_UTF8_BOM):
            return "utf-8-sig"
        wide = utf16_codec(head)
        if wide:
            return wide
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            decoder.decode(head)
            while chunk := stream.read(_CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "latin-1"
    return "utf-8"


def utf16_codec(head: bytes) -> str | None:
    """The UTF-16 codec of a file starting with `head`, or None. `utf-16` (BOM-aware) when there is a BOM,
    which the decoder then drops; otherwise NUL bytes at every odd (even) offset of the ASCII header line."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    sample = head[: len(head) & ~1][:200]
    if len(sample) < 4:
        return None
    if not any(sample[1::2]) and all(sample[0::2]):
        return "utf-16-le"
    if not any(sample[0::2]) and all(sample[1::2]):
        return "utf-16-be"
    return None


def is_types_row(cells: list[str]) -> bool:
    """True for an EcoTaxa types row: every cell is `[t]`, `[f]` or `[n]` (the csv module has removed quotes)."""
    return bool(cells) and all(_TYPE_TOKEN.fullmatch(cell.strip().lower()) for cell in cells)


def normalize_header(name: str) -> str:
    """EcoTaxa's header rule (strip spaces and tabs, lower-case), plus quotes the csv module left in place
    because a space preceded them (` "object_id"`)."""
    return name.strip(" \t").strip('"').strip(" \t").lower()


def normalize_category(name: str) -> str:
    """`name (parent)` → `name<parent` (EcoTaxa's own conversion); other names are only stripped."""
    name = name.strip()
    match = _NAME_PARENT.match(name)
    if match:
        return f"{match['name']}<{match['parent'].strip()}"
    return name


@dataclass(slots=True, frozen=True)
class TsvRow:
    """One data row: `number` is 1-based, counted after the header and the types row, blank lines skipped.

    `values` maps lower-cased header names to cell text; it is None when the row is malformed, and `error` says
    why.
    """

    number: int
    values: dict[str, str] | None
    error: str | None = None


class TsvReader:
    """Header, types row and a stream of `TsvRow`s of one EcoTaxa TSV.

    Use as a context manager; iterate for the rows. `header` and `types` are available after entering, which
    raises `csv.Error` when not even the header line can be parsed.
    """

    def __init__(self, open_binary: BinaryOpener, encoding: str | None = None):
        self._open_binary = open_binary
        self.encoding = encoding
        self.header: list[str] = []
        self.types: list[str] | None = None
        self._stream: BinaryIO | None = None
        self._rows: Iterator[list[str]] | None = None
        self._pending: list[str] | None = None  # line 2 when it turned out not to be a types row
        self._pending_error: str | None = None  # or why line 2 could not be parsed

    def __enter__(self) -> TsvReader:
        if self.encoding is None:
            self.encoding = detect_encoding(self._open_binary)
        self._stream = self._open_binary()
        # newline="" hands line ends to the csv module untranslated; it ends a record on CR, LF or CRLF alike.
        text = io.TextIOWrapper(self._stream, encoding=self.encoding, newline="")
        self._rows = csv.reader(text, delimiter="\t", quotechar='"', strict=False)
        first = self._next_nonblank()
        self.header = [normalize_header(name) for name in first] if first else []
        try:
            second = self._next_nonblank() if first else None
        except csv.Error as exc:  # the first data row is broken: report it as row 1
            second, self._pending_error = None, f"unparsable TSV row: {exc}"
        if second is not None and is_types_row(second):
            self.types = [cell.strip().lower() for cell in second]
        else:
            self._pending = second
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            self._stream.close()

    def _next_nonblank(self) -> list[str] | None:
        assert self._rows is not None
        for cells in self._rows:
            if any(cell.strip() for cell in cells):
                return cells
        return None

    def __iter__(self) -> Iterator[TsvRow]:
        assert self._rows is not None, "use TsvReader as a context manager"
        number = 0
        if self._pending is not None:
            number += 1
            yield self._row(number, self._pending)
        elif self._pending_error is not None:
            number += 1
            yield TsvRow(number, None, self._pending_error)
        while True:
            try:
                cells = next(self._rows)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over the csv size limit; the reader resumes on the next line
                number += 1
                yield TsvRow(number, None, f"unparsable TSV row: {exc}")
                continue
            if not any(cell.strip() for cell in cells):
                continue
            number += 1
            yield self._row(number, cells)

    def _row(self, number: int, cells: list[str]) -> TsvRow:
        width = len(self.header)
        if len(cells) > width and not any(cell.strip() for cell in cells[width:]):
            cells = cells[:width]  # trailing tabs: harmless
        if len(cells) != width:
            return TsvRow(number, None, f"row has {len(cells)} fields, the header has {width}")
        return TsvRow(number, dict(zip(self.header, cells)))
