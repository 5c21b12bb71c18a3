"""Pure parsing of IFCB raw bins: bin ids, `.hdr` headers, `.adc` rows, `.roi` pixels, V1 stitching, ml_analyzed.

Nothing here touches the store or yields records; `reader.py` turns these pieces into `Record`s. Format facts and
their sources are in `reference/ifcb-format.md` (pyifcb, ifcbkit, ifcb-analysis); section numbers below refer to it.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

PIXEL_SIZE_UM = 1 / 3.4
"""Micrometres per pixel: IFCB images are about 3.4 px/µm (iRfcb's default `scale_micron_factor`)."""

MAX_ROI_PIXELS = 20_000_000
"""Larger ROIs are absurd geometry (ifcbkit `adc_absurd_geometry`): a 1380x1034 camera frame has 1.4 million."""

# ---------------------------------------------------------------------------------------------------------- bin ids

_BIN_IDS = (  # V2 first, as pyifcb tries it
    ("v2", re.compile(r"D(?P<time>\d{8}T\d{6})_(?P<serial>IFCB\d{3})", re.ASCII), "%Y%m%dT%H%M%S"),
    ("v1", re.compile(r"(?P<serial>IFCB\d)_(?P<time>\d{4}_\d{3}_\d{6})", re.ASCII), "%Y_%j_%H%M%S"),
)


@dataclass(frozen=True, slots=True)
class BinId:
    """A parsed bin id: which ADC layout it uses, which instrument took it and when (UTC)."""

    bin_id: str
    schema: str  # "v1" (IFCB1-6, I-style, e.g. IFCB5_2012_028_081515) or "v2" (D-style, D20130526T095207_IFCB013)
    instrument_serial: str  # "IFCB013", "IFCB5": as written in the id
    acquired_at: datetime  # timezone-aware UTC

    @property
    def instrument_number(self) -> int:
        return int(self.instrument_serial[4:])


def parse_bin_id(name: str) -> BinId | None:
    """The `BinId` of a bin basename (no extension), or None when `name` is not a valid V1/V2 bin id."""
    for schema, pattern, time_format in _BIN_IDS:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        try:
            when = datetime.strptime(match["time"], time_format).replace(tzinfo=timezone.utc)
        except ValueError:  # e.g. month 13 or day-of-year 400: looks like an id, is not one
            return None
        return BinId(name, schema, match["serial"], when)
    return None


# ------------------------------------------------------------------------------------------------------------ .hdr


class Header(Mapping[str, object]):
    """Header properties with case-insensitive keys (`softwareVersion` became `SoftwareVersion`).

    Iterates over the keys as the file spells them; a repeated key keeps its last value (ifcb-analysis keeps the
    last `runType`).
    """

    def __init__(self, items: Sequence[tuple[str, object]] = ()) -> None:
        self._items: dict[str, tuple[str, object]] = {}
        for key, value in items:
            self._items[key.lower()] = (key, value)

    def __getitem__(self, key: str) -> object:
        return self._items[key.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def number(self, key: str) -> float | None:
        """The value of `key` as a float, or None when absent or not a number."""
        value = self.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _literal(text: str) -> object:
    """`text` as an int or float when it is one, else the text (pyifcb literal-evaluates, but only numbers matter)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else text


# V1 quoted-CSV headers end with a label row and a value row, in this order (pyifcb `hdr.py`, `HDR_SCHEMA`).
_V1_HEADER_FIELDS = (
    ("temperature", float),
    ("humidity", float),
    ("binarizeThreshold", int),
    ("scatteringPhotomultiplierSetting", float),
    ("fluorescencePhotomultiplierSetting", float),
    ("blobSizeThreshold", int),
)
_V2_FIRST_LINE = re.compile(r"^softwareversion:", re.IGNORECASE)
_RUN_TIME = re.compile(r"run\s*time\s*=\s*(-?[\d.]+)", re.IGNORECASE)
_INHIBIT_TIME = re.compile(r"inhibit\s*time\s*=\s*(-?[\d.]+)", re.IGNORECASE)
_TEMPERATURE_HUMIDITY = re.compile(r"(-?[\d.]+)\s*temperature\s*,\s*(-?[\d.]+)\s*humidity", re.IGNORECASE)


def parse_hdr(text: str) -> Header:
    """Parse a `.hdr` file's text (section 7): V2 `key: value`, V1 quoted CSV, or the 2010 transitional family."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        return Header()
    items: list[tuple[str, object]] = [("context", lines[0].strip('"'))]
    if _V2_FIRST_LINE.match(lines[0]):
        for line in lines:
            key, sep, value = line.partition(": ")
            if sep and key:  # lines like "Housekeeping firmware version 31" do not split: ignored
                items.append((key.strip(), _literal(value.strip())))
    elif len(lines) > 1 and lines[1].lstrip('"').lower().startswith("sample date"):
        body = "\n".join(lines)
        for key, pattern in (("runTime", _RUN_TIME), ("inhibitTime", _INHIBIT_TIME)):
            if match := pattern.search(body):
                items.append((key, _literal(match.group(1))))
        if match := _TEMPERATURE_HUMIDITY.search(body):
            items += [("temperature", _literal(match.group(1))), ("humidity", _literal(match.group(2)))]
    elif len(lines) >= 6:  # V1: shorter files are the original header format, with nothing to parse
        items = [("context", "\n".join(line.strip('"') for line in lines[:-2]))]
        values = re.sub(r'[",]', " ", lines[-1]).split()
        for (name, cast), value in zip(_V1_HEADER_FIELDS, values):
            try:
                items.append((name, cast(value)))
            except ValueError:
                items.append((name, value))
    return Header(items)


# ------------------------------------------------------------------------------------------------------------ .adc

V1_COLUMNS = (
    "TRIGGER", "PROCESSING_END_TIME", "FLUORESCENCE_LOW", "FLUORESCENCE_HIGH", "SCATTERING_LOW", "SCATTERING_HIGH",
    "COMPARATOR_PULSE", "TRIGGER_OPEN_TIME", "FRAME_GRAB_TIME", "ROI_X", "ROI_Y", "ROI_WIDTH", "ROI_HEIGHT",
    "START_BYTE", "VALVE_STATUS",
)  # fmt: skip
V2_COLUMNS = (
    "TRIGGER", "ADC_TIME", "PMT_A", "PMT_B", "PMT_C", "PMT_D", "PEAK_A", "PEAK_B", "PEAK_C", "PEAK_D",
    "TIME_OF_FLIGHT", "GRAB_TIME_START", "GRAB_TIME_END", "ROI_X", "ROI_Y", "ROI_WIDTH", "ROI_HEIGHT", "START_BYTE",
    "COMPARATOR_OUT", "START_POINT", "SIGNAL_LENGTH", "STATUS", "RUN_TIME", "INHIBIT_TIME",
)  # fmt: skip
V2_ACOUSTIC_COLUMNS = ("TEMPERATURE", "FREQUENCY")  # appended when acoustic focusing is on (26 columns)


@dataclass(frozen=True, slots=True)
class AdcSchema:
    """Column layout of one ADC family: names and the indexes of the columns the reader needs."""

    name: str
    columns: tuple[str, ...]
    trigger: int
    roi_x: int
    roi_y: int
    width: int
    height: int
    start_byte: int


SCHEMA_V1 = AdcSchema("v1", V1_COLUMNS, 0, 9, 10, 11, 12, 13)
SCHEMA_V2 = AdcSchema("v2", V2_COLUMNS, 0, 13, 14, 15, 16, 17)
SCHEMAS = {"v1": SCHEMA_V1, "v2": SCHEMA_V2}


def column_names(schema: AdcSchema, n: int) -> tuple[str, ...]:
    """Names for `n` columns: the schema's, then V2's acoustic pair, then `COLUMN_<i>` (0-based) for the rest."""
    names = schema.columns + (V2_ACOUSTIC_COLUMNS if schema is SCHEMA_V2 else ())
    return names[:n] + tuple(f"COLUMN_{i}" for i in range(len(names), n))


def allowed_column_counts(schema: AdcSchema, header: Mapping[str, object] | None = None) -> frozenset[int]:
    """How many columns an ADC line may have: 15 (V1); 24 or 26 (V2), or what the header's `ADCFileFormat` says."""
    if schema is SCHEMA_V1:
        return frozenset({len(V1_COLUMNS)})
    counts = {len(V2_COLUMNS), len(V2_COLUMNS) + len(V2_ACOUSTIC_COLUMNS)}
    declared = header.get("ADCFileFormat") if header is not None else None
    if isinstance(declared, str) and declared.count(",") >= len(V2_COLUMNS) - 1:
        counts.add(declared.count(",") + 1)
    return frozenset(counts)


@dataclass(frozen=True, slots=True)
class AdcRow:
    """One well-formed ADC line. `target` is its 1-based line number; `fields` are the raw column texts."""

    target: int
    fields: tuple[str, ...]
    trigger: int
    x: int
    y: int
    width: int
    height: int
    start_byte: int

    @property
    def has_image(self) -> bool:
        """Zero-size rows are triggers without an ROI (section 4); most rows are."""
        return self.width > 0 and self.height > 0

    @property
    def n_bytes(self) -> int:
        return self.width * self.height


@dataclass(frozen=True, slots=True)
class AdcLineError:
    """An ADC line that cannot be used, and why."""

    target: int
    reason: str


def _integer(text: str) -> int | None:
    """`text` as an int; "64.0" counts, "64.5", "nan", "x" and "6_4" (Python's digit grouping) do not."""
    if "_" in text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value.is_integer() else None


def parse_adc(data: bytes, schema: AdcSchema, counts: frozenset[int] | None = None) -> Iterator[AdcRow | AdcLineError]:
    """Every non-blank line of an `.adc` file, as an `AdcRow` or an `AdcLineError` (never raises).

    Target numbers are 1-based line numbers, so a blank line still uses up its number (ifcbkit `adc_blank_line`).
    Splitting is plain `bytes.split`: no CSV module, no pandas, because bins hold thousands of lines.
    """
    counts = counts or allowed_column_counts(schema)
    lines = data.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()  # the final line end
    for target, raw in enumerate(lines, start=1):
        raw = raw.strip()
        if not raw:
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield AdcLineError(target, f"ADC line is not UTF-8 (byte {exc.start})")
            continue
        fields = line.split(",")
        if not fields[-1].strip() and (schema is SCHEMA_V1 or len(fields) - 1 in counts):
            fields.pop()  # V1 lines end with a comma
        if len(fields) not in counts:
            expected = " or ".join(str(n) for n in sorted(counts))
            yield AdcLineError(target, f"ADC line has {len(fields)} columns, expected {expected}")
            continue
        yield _adc_row(target, tuple(fields), schema)


def _adc_row(target: int, fields: tuple[str, ...], schema: AdcSchema) -> AdcRow | AdcLineError:
    width, height = _integer(fields[schema.width]), _integer(fields[schema.height])
    if width == 0 or height == 0:  # no image: the other geometry fields do not matter
        return AdcRow(target, fields, _integer(fields[schema.trigger]) or 0, 0, 0, width or 0, height or 0, 0)
    values = []
    for attribute in _GEOMETRY:
        index = getattr(schema, attribute)
        value = _integer(fields[index])
        if value is None:
            return AdcLineError(target, f"non-numeric {schema.columns[index]} {fields[index].strip()!r}")
        values.append(value)
    trigger, x, y, width, height, start = values
    if width < 0 or height < 0 or start < 0:
        return AdcLineError(target, f"negative geometry: width {width}, height {height}, START_BYTE {start}")
    if width * height > MAX_ROI_PIXELS:
        return AdcLineError(target, f"absurd geometry: {width}x{height} = {width * height} pixels")
    return AdcRow(target, fields, trigger, x, y, width, height, start)


_GEOMETRY = ("trigger", "roi_x", "roi_y", "width", "height", "start_byte")  # AdcSchema fields a usable row needs


# ------------------------------------------------------------------------------------------------------------ .roi


def roi_range_problem(row: AdcRow, roi_size: int) -> str | None:
    """Why `row`'s pixels cannot be read from a `.roi` of `roi_size` bytes, or None when they can."""
    if row.start_byte >= roi_size:
        return f"START_BYTE {row.start_byte} is past the end of the .roi file ({roi_size} bytes)"
    if row.start_byte + row.n_bytes > roi_size:
        return (
            f"truncated .roi: target {row.target} at START_BYTE {row.start_byte} needs {row.n_bytes} bytes "
            f"({row.height}x{row.width}) but only {roi_size - row.start_byte} are available"
        )
    return None


def overlapping_targets(rows: Sequence[AdcRow], roi_size: int | None = None) -> dict[int, int]:
    """Targets whose byte ranges in the `.roi` overlap another's (ifcbkit `roi_overlapping_targets`), mapped to one
    target each overlaps: the rows whose geometry is wrong.

    IFCB writes ROIs back to back, so a row whose range covers two or more others (a corrupt width or height) is
    the wrong one: it alone is blamed, and the rows it covers are kept. Two rows that overlap only each other are
    both blamed, as nothing says which is wrong. Rows that run past the end of a `.roi` of `roi_size` bytes are
    left out: they are rejected for that, and must not take their neighbours with them.
    """
    spans = sorted(
        (row.start_byte, row.start_byte + row.n_bytes, row.target)
        for row in rows
        if row.has_image and (roi_size is None or row.start_byte + row.n_bytes <= roi_size)
    )
    neighbours: dict[int, set[int]] = {}
    open_spans: list[tuple[int, int]] = []  # (end, target) of the spans that reach past the current start
    for start, end, target in spans:
        open_spans = [(e, t) for e, t in open_spans if e > start]
        for _, other in open_spans:
            neighbours.setdefault(target, set()).add(other)
            neighbours.setdefault(other, set()).add(target)
        open_spans.append((end, target))

    def drop(target: int) -> None:
        for other in neighbours.pop(target):
            neighbours[other].discard(target)
            if not neighbours[other]:
                del neighbours[other]

    blamed: dict[int, int] = {}
    while neighbours:
        worst = max(neighbours, key=lambda t: (len(neighbours[t]), -t))
        others = neighbours[worst]
        if len(others) == 1:  # only pairs are left
            (other,) = others
            blamed[worst], blamed[other] = other, worst
            drop(worst)
        else:
            blamed[worst] = min(others)
            drop(worst)
    return blamed


def roi_pixels(buffer: bytes | memoryview, row: AdcRow) -> np.ndarray:
    """The ROI of `row` as a (height, width) uint8 array, copied out of `buffer` (the whole `.roi` file).

    Row-major with `height` rows of `width` pixels, starting at START_BYTE (section 3). The caller has checked the
    range with `roi_range_problem`.
    """
    return np.frombuffer(buffer, np.uint8, row.n_bytes, row.start_byte).reshape(row.height, row.width).copy()


# ------------------------------------------------------------------------------------------------ V1 stitching

STITCH_OVERLAP_PX = 2


def stitch_pairs(rows: Sequence[AdcRow]) -> dict[int, AdcRow]:
    """V1 ROI pairs to stitch: first target -> the row of the second (pyifcb `Stitcher.coordinates`).

    Consecutive image rows with the same trigger whose boxes overlap by more than 2 px in both directions.
    """
    images = [row for row in rows if row.has_image]
    pairs = {}
    for a, b in zip(images, images[1:]):
        if a.trigger != b.trigger:
            continue
        t = STITCH_OVERLAP_PX
        if (a.x < b.x + b.width - t and a.x + a.width > b.x + t
                and a.y < b.y + b.height - t and a.y + a.height > b.y + t):  # fmt: skip
            pairs[a.target] = b
    return pairs


def stitch(a: AdcRow, a_pixels: np.ndarray, b: AdcRow, b_pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paste two ROIs onto the union of their boxes; returns (image, gap mask), the gap being 0 in the image.

    The second ROI is pasted last and wins where they overlap, as in pyifcb's `Stitcher`.
    """
    x0, y0 = min(a.x, b.x), min(a.y, b.y)
    x1, y1 = max(a.x + a.width, b.x + b.width), max(a.y + a.height, b.y + b.height)
    image = np.zeros((y1 - y0, x1 - x0), np.uint8)
    gap = np.ones(image.shape, bool)
    for row, pixels in ((a, a_pixels), (b, b_pixels)):
        box = np.s_[row.y - y0 : row.y - y0 + row.height, row.x - x0 : row.x - x0 + row.width]
        image[box] = pixels
        gap[box] = False
    return image, gap


def _neighbours(mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four 4-connected neighbours of every pixel of `mask`, False beyond the edge."""
    padded = np.pad(mask, 1, constant_values=False)
    return padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]


def infill(image: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Fill the gap of a stitched image with the mean of its boundary pixels (pyifcb `infill_image`).

    The boundary is the rim of the gap dilated by one pixel (4-connectivity), with the outermost rows and columns
    copied from their inner neighbours; only boundary pixels outside the gap enter the mean, rounded half to even.
    """
    up, down, left, right = _neighbours(gap)
    dilated = gap | up | down | left | right
    up, down, left, right = _neighbours(dilated)
    boundary = dilated & ~(up & down & left & right)
    if min(boundary.shape) >= 2:  # pyifcb `chop_boundary_edges`
        boundary[:, 0] = boundary[:, 1]
        boundary[:, -1] = boundary[:, -2]
        boundary[0, :] = boundary[1, :]
        boundary[-1, :] = boundary[-2, :]
    known = image[boundary & ~gap]
    value = int(round(float(known.mean()))) if known.size else 0
    filled = image.copy()
    filled[gap] = value
    return filled


# ---------------------------------------------------------------------------------------------------- ml_analyzed

FLOW_RATE_ML_PER_MIN = 0.25  # syringe pump: 5 ml / 48,000 steps at 40 steps/s


def _column(rows: Sequence[AdcRow], index: int) -> np.ndarray | None:
    try:
        return np.array([float(row.fields[index]) for row in rows])
    except (ValueError, IndexError):
        return None


def ml_analyzed_v1(rows: Sequence[AdcRow], bin_id: BinId) -> float | None:
    """Volume analysed (ml) for a V1 bin from ADC times (pyifcb `compute_ml_analyzed_s1_adc`, section 8)."""
    seen, firsts = set(), []
    for row in rows:  # one row per trigger: stitched pairs repeat it
        if row.trigger not in seen:
            seen.add(row.trigger)
            firsts.append(row)
    frame_grab, trigger_open = _column(firsts, 8), _column(firsts, 7)
    if frame_grab is None or trigger_open is None or not len(firsts):
        return None
    day = 24 * 60 * 60.0  # bins spanning midnight have negative times
    frame_grab = frame_grab + (frame_grab < 0) * day
    trigger_open = trigger_open + (trigger_open < 0) * day
    late_ifcb5 = bin_id.instrument_number == 5 and bin_id.acquired_at >= datetime(2015, 6, 1, tzinfo=timezone.utc)
    min_proc_time = 0.05 if late_ifcb5 else 0.073
    proc_time = np.maximum(trigger_open[1:] - frame_grab[:-1], min_proc_time)
    # subtracting one more min_proc_time matches the MATLAB code (pyifcb: "that code may have a bug")
    look_time = frame_grab[-1] - proc_time.sum() - min_proc_time
    return float(look_time * FLOW_RATE_ML_PER_MIN / 60)


def _look_time_v2_adc(rows: Sequence[AdcRow]) -> tuple[float, float] | None:
    """(run time, inhibit time) in s from ADC columns RUN_TIME and INHIBIT_TIME (`IFCB_volume_analyzed_fromADC.m`)."""
    adc_time, run, inhibit = _column(rows, 1), _column(rows, 22), _column(rows, 23)
    if adc_time is None or run is None or inhibit is None or not len(rows):
        return None
    run_time, inhibit_time = run[-1], inhibit[-1]
    # a bad last line: use the one before
    if len(rows) > 1 and (run_time - inhibit_time <= 0 or abs(run[-1] - adc_time[-1]) >= 0.3):
        run_time, inhibit_time = run[-2], inhibit[-2]
    if run_time - inhibit_time <= 0 and len(rows) > 1:  # zero times in many final rows: estimate from the rest
        nonzero = np.flatnonzero(run)
        if len(nonzero) < 2:
            return None
        steps, counts = np.unique(np.diff(inhibit[nonzero]), return_counts=True)
        run_time = adc_time[-2]
        inhibit_time = inhibit[nonzero[-1]] + (len(rows) - len(nonzero)) * steps[counts.argmax()]
    if not (math.isfinite(run_time) and math.isfinite(inhibit_time)) or run_time - inhibit_time <= 0:
        return None
    return float(run_time), float(inhibit_time)


def ml_analyzed_v2(rows: Sequence[AdcRow], header: Header) -> float | None:
    """Volume analysed (ml) for a V2 bin: 0.25 ml/min x (runTime - inhibitTime) (section 8).

    Like ifcb-analysis since 2022 and pyifcb's `compute_ml_analyzed_s2`: header times are used unless they differ
    from the ADC's by more than 2 %; ADC times alone when the header has none (older software), header times alone
    when the ADC gives none.
    """
    from_adc = _look_time_v2_adc(rows)
    header_run, header_inhibit = header.number("runTime"), header.number("inhibitTime")
    if from_adc is None and (header_run is None or header_inhibit is None):
        return None
    if from_adc is None:
        run_time, inhibit_time = header_run, header_inhibit
    else:
        run_time, inhibit_time = from_adc
        if header_run is not None and run_time and 0.98 <= header_run / run_time <= 1.02:
            run_time = header_run
        if header_inhibit is not None and inhibit_time and 0.98 <= header_inhibit / inhibit_time <= 1.02:
            inhibit_time = header_inhibit
    return float(FLOW_RATE_ML_PER_MIN * (run_time - inhibit_time) / 60)


def ml_analyzed(rows: Sequence[AdcRow], header: Header, bin_id: BinId) -> float | None:
    """Volume analysed in ml, or None when the bin does not say (empty, or its times are unusable)."""
    value = ml_analyzed_v1(rows, bin_id) if bin_id.schema == "v1" else ml_analyzed_v2(rows, header)
    return value if value is not None and math.isfinite(value) else None
