"""Where the store's files are: the committed file list, data files per dataset, hive partition folders.

Every reader and writer of the store goes through here, so they can never disagree about a file or a partition
name. The truth about which files make up the store is `STORE/committed.json`, replaced atomically at each
commit (`transaction.py`): readers that use it see the store before or after a commit, never half of one, even
while a commit is being applied or after a crash in the middle of one. Plain Parquet readers (pyarrow, duckdb,
HF datasets) list the folders instead; they see the same files except during those few milliseconds.

A store written before `committed.json` existed is read by listing its folders; its first commit writes the list.

A reader that took the list just before a commit may find a file of it deleted (a rewritten or superseded file):
`read_listed` / `iter_listed` take the list again and retry, the one place readers handle that.

Each entry of the list also holds the file's `stats` (`file_stats`: rows, min/max of the key columns, label
counts, the objects files a predictions file covers), taken from the file when it is committed. So a nightly step
finds the night's files (partition pruning on date, id ranges, predictions by model) from the list alone, without
opening the store's other files: its cost follows the night, not the store. A store written before stats existed
gets them for every file at its next commit (`Transaction.commit`); until then, readers take them from the files'
footers (`stats_of`). The first line of the list holds the store's running totals (`fold_totals`), which each
commit updates by what it adds and deletes: `plankton info` reads that line alone.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote

from plankton_cli.core.atomic import atomic_write_bytes
from plankton_cli.core.errors import StoreIOError, UsageError
from plankton_cli.store.schema import SCHEMA_METADATA_KEY

T = TypeVar("T")

COMMITTED = "committed.json"
TOTALS, LISTED_BYTES = "totals", "listed_bytes"
MANIFEST = "manifest.parquet"
MANIFEST_SEALED = "manifest-sealed.parquet"
MANIFEST_FILES = (MANIFEST, MANIFEST_SEALED)
"""The manifest of ingested sources (`store/manifest.py`): its recent part, rewritten at each ingest commit, and
its sealed part, rewritten a few times a year. Together they are one dataset of the totals (`dataset_of`)."""

MAX_NAME_BYTES = 100
"""Longest file name the store writes (its own are ~45 bytes); `check` flags longer ones, which `--repair`
renames. File systems refuse names over 255 bytes, so a name that grows on each rewrite ends every ingest."""

DATASETS = {"objects": "ingest", "padded": "pad", "features": "features", "predictions": "predict",
            "rejections": None}
"""The datasets the store knows, and the one command that writes each (rejections: every command). A command may
also write a dataset of another name (e.g. `plankton pad --target padded-224`) that passes `dataset_name`."""
RESERVED = frozenset({"manifest", "committed", "store", "journal", "journals", "staging", "spool", "lock",
                      "quarantine"})
"""Names of the store's own bookkeeping (with or without their dot or extension), never a dataset's."""
_DATASET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def dataset_name(name: str, *, written_by: str | None = None) -> str:
    """`name` when it may name a dataset of the store (one folder of it: lower-case letters, digits, `_`, `-`;
    not the store's own bookkeeping), and, when `written_by` a command, one that command may write. Anything else
    is a UsageError, raised before anything is read or written: a name such as `../x` or `manifest.parquet` would
    write outside the store or over its own files."""
    if not _DATASET_NAME.fullmatch(name or "") or len(name) > MAX_NAME_BYTES:
        raise UsageError(f"invalid dataset name {name!r}: use lower-case letters, digits, '_' and '-' (a folder of "
                         f"the store, never a path)")
    if name in RESERVED:
        raise UsageError(f"invalid dataset name {name!r}: reserved for the store's own files")
    if written_by is not None and name in DATASETS and DATASETS[name] != written_by:
        owner = DATASETS[name]
        raise UsageError(f"dataset {name!r} is written by {f'plankton {owner}' if owner else 'the store itself'}, "
                         f"not by plankton {written_by}; choose another name")
    return name


ROW_GROUP_ROWS = 256
"""Rows per row group: one random image costs 0.3–1 ms to read at 64–256 rows per group, 39 ms at 4,000
(reference/data-and-backends.md §2)."""
MAX_FILE_BYTES = 256 * 1024**2
"""A data file is rolled over (and a long run commits) at about this size."""


def hidden(name: str) -> bool:
    """Names Parquet readers skip: the store's bookkeeping (`.staging`, `.journal`, temporary files)."""
    return name.startswith((".", "_"))


def partition_dir(keys: list[str] | tuple[str, ...], row: dict) -> str:
    """Hive folder for a row, e.g. `instrument=FlowCam%20macro` (URI-encoded, as pyarrow's hive partitioning
    expects and decodes)."""
    return "/".join(f"{key}={quote(str(row[key]), safe='')}" for key in keys)


def partition_values(path: Path, dataset_dir: str | Path) -> dict[str, str]:
    """Decoded hive partition values: `instrument=FlowCam%20macro` → {"instrument": "FlowCam macro"}."""
    values = {}
    for part in Path(path).relative_to(dataset_dir).parent.parts:
        key, sep, value = part.partition("=")
        if sep:
            values[key] = unquote(value)
    return values


STAT_COLUMNS = ("object_id", "sample_id", "model_hash", "acquired_at", "predicted_at", "rejected_at", "ingested_at")
"""Columns whose min/max a file's stats hold: what nightly steps select files by (ids, samples, model, dates)."""
COUNTED_COLUMNS = ("label", "command", "ingest_run", "label_status", "reader")
"""Columns whose value counts a file's stats hold, when they have at most MAX_COUNTED values (`plankton info`)."""
MAX_COUNTED = 256
COVERS_KEY = b"plankton.covers"
"""Parquet schema metadata key of a predictions file: the JSON list of objects files (store-relative) whose every
row its model had predicted when it was committed (see `plankton_cli.infer.predict`)."""


def _stat_value(value) -> str | float | int:
    return value.isoformat() if hasattr(value, "isoformat") else value


def file_stats(path: Path) -> dict:
    """Facts about one Parquet data file, from its footer (and its label/command columns, read when present):
    {"rows", "min": {column: value}, "max": {...}, "counts": {column: {value: n}}, "covers": [...]}. Timestamps
    are ISO text (UTC, so they sort as text). A column lacking statistics in a row group with values gets no
    min/max: a reader then cannot rule the file out by it."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    meta = parquet.metadata
    stats: dict = {"rows": meta.num_rows, "min": {}, "max": {}}
    lows: dict[str, list] = {}
    highs: dict[str, list] = {}
    unknown: set[str] = set()
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            name = column.path_in_schema
            if name not in STAT_COLUMNS:
                continue
            st = column.statistics
            if st is not None and st.has_min_max:
                lows.setdefault(name, []).append(_stat_value(st.min))
                highs.setdefault(name, []).append(_stat_value(st.max))
            elif st is None or st.null_count != column.num_values:  # values without statistics
                unknown.add(name)
    for name in set(lows) - unknown:
        stats["min"][name], stats["max"][name] = min(lows[name]), max(highs[name])
    counted = [c for c in COUNTED_COLUMNS if c in parquet.schema_arrow.names]
    if counted and meta.num_rows:
        table = parquet.read(columns=counted)
        counts = {}
        for name in counted:
            values = table[name].value_counts()
            if len(values) <= MAX_COUNTED:
                counts[name] = {("" if v["values"] is None else str(v["values"])): v["counts"]
                                for v in values.to_pylist()}
        stats["counts"] = counts
    if "n_stored" in parquet.schema_arrow.names:  # the manifest: how many sources stored objects (`info`)
        stats["stored_sources"] = int(pc.sum(pc.greater(parquet.read(columns=["n_stored"])["n_stored"], 0)).as_py() or 0)
    metadata = parquet.schema_arrow.metadata or {}
    if covers := metadata.get(COVERS_KEY):
        stats["covers"] = json.loads(covers)
    if schema := metadata.get(SCHEMA_METADATA_KEY):  # `info` reports it without opening the file
        stats["schema"] = {k: json.loads(schema)[k] for k in ("dataset", "version")}
    return stats


def stats_of(root: Path, rel: str, entry: dict | None) -> dict | None:
    """The stats of committed file `rel`: its entry's, else (a store from before stats) from the file itself;
    None when the file cannot be read (the caller then reads it as it would without stats)."""
    if entry is not None and "stats" in entry:
        return entry["stats"]
    try:
        return file_stats(Path(root) / rel)
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return None


def may_hold(stats: dict | None, column: str, values: Sequence) -> bool:
    """Whether a file with `stats` may hold one of the sorted `values` in `column`: False only when its stats rule
    every value out (no rows, or none within its min/max); a file without stats, or without them for `column`,
    may."""
    if stats is None:
        return True
    if not stats.get("rows") or not values:
        return False
    if column not in stats.get("min", {}):
        return True
    i = bisect.bisect_left(values, stats["min"][column])
    return i < len(values) and values[i] <= stats["max"][column]


def may_overlap(stats: dict | None, column: str, low: str, high: str) -> bool:
    """Whether a file with `stats` may hold a `column` value in [low, high) (ISO text for timestamps)."""
    if stats is None:
        return True
    if not stats.get("rows"):
        return False
    if column not in stats.get("min", {}):
        return True
    return stats["min"][column] < high and stats["max"][column] >= low


def checksum(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def committed_entry(root: Path, staged: str, final: str) -> dict:
    """The file list's entry for staged file `staged` that commits as `final`: size, checksum and, for Parquet,
    the stats readers prune by (a file that is no Parquet gets none: readers then open it)."""
    path = Path(root) / staged
    entry: dict = {"size": path.stat().st_size, "checksum": checksum(path)}
    if final.endswith(".parquet") and (stats := stats_of(root, staged, None)) is not None:
        entry["stats"] = stats
    return entry


class UnreadableFileList(StoreIOError):
    """`committed.json` is there but cannot be read: which files make up the store is unknown until a repair."""


_read_cache: dict[Path, tuple[bytes, dict[str, dict]]] = {}


def read_committed(root: Path) -> dict[str, dict] | None:
    """store-relative path → {"size", "checksum"} of every committed file, or None for a store without a list.

    A list that cannot be read (garbage, truncated) is an UnreadableFileList naming it: guessing the store's files
    from its folders could show a reader rows that were deleted or never committed; `check --repair` rebuilds it."""
    path = Path(root) / COMMITTED
    try:
        # Parsed once per process however many times a command asks (it grows with the store's files). The bytes
        # are the key: an inode, size and mtime can all repeat (a freed inode reused within a coarse NFS mtime).
        raw = path.read_bytes()
        cached = _read_cache.get(path)
        if cached is not None and cached[0] == raw:
            return dict(cached[1])
        files = json.loads(raw)["files"]
        if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
            raise TypeError("'files' is not a mapping of file entries")
        _read_cache[path] = (raw, files)
        return dict(files)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as exc:
        raise UnreadableFileList(f"{path}: unreadable committed file list ({type(exc).__name__}: {exc}); run "
                                 f"`plankton check --repair --store {Path(root)}` to rebuild it", path=path) from exc


def committed_bytes(files: dict[str, dict], totals: dict | None) -> bytes:
    """`committed.json` as written: the totals alone on the first line with the byte length of the rest (so a
    truncated list is never taken for whole), then the sorted file list. Still one JSON object for any reader;
    `read_totals` reads the first line only (json.dumps escapes every newline inside a value)."""
    listed = json.dumps({"files": dict(sorted(files.items()))})[1:].encode()
    if totals is None:
        return b"{" + listed
    return f'{{"{TOTALS}": {json.dumps(totals)}, "{LISTED_BYTES}": {len(listed)},\n'.encode() + listed


def write_committed(root: Path, files: dict[str, dict], totals: dict | None) -> None:
    """Replace `committed.json` atomically and durably with `files` and `totals` (`committed_bytes`); this process's
    next `read_committed` takes the list as written, without parsing it again."""
    files = dict(sorted(files.items()))
    raw = committed_bytes(files, totals)
    atomic_write_bytes(Path(root) / COMMITTED, raw, durable=True)
    _read_cache[Path(root) / COMMITTED] = (raw, files)


def read_totals(root: Path) -> dict[str, dict] | None:
    """The store's running totals per dataset (`fold_totals`) from the first line of `committed.json`, without
    reading its file list: what `plankton info` answers from. None when the list has none (written before them,
    or no list) or is not whole: the caller then reads the whole list, which reports it unreadable."""
    try:
        with open(Path(root) / COMMITTED, "rb") as f:
            first, size = f.readline(), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return None
    try:
        head = json.loads(first.removesuffix(b",\n") + b"}")
        if size != len(first) + head[LISTED_BYTES] or not isinstance(head[TOTALS], dict):
            return None
    except (ValueError, TypeError, KeyError):
        return None
    return head[TOTALS]


def dataset_of(rel: str) -> str:
    """The dataset a committed file belongs to (its top folder), or `MANIFEST` for the manifest's files."""
    return MANIFEST if rel in MANIFEST_FILES else rel.split("/", 1)[0]


def totals_of(files: dict[str, dict]) -> dict[str, dict]:
    """The running totals (`fold_totals`) of a whole file list, added up from scratch."""
    totals: dict[str, dict] = {}
    for rel, entry in files.items():
        fold_totals(totals, rel, entry, +1)
    return totals


def fold_totals(totals: dict[str, dict], rel: str, entry: dict, sign: int) -> None:
    """Add (sign +1) or take out (-1) one committed file to the running totals of its dataset, in place:

        {"files", "rows", "bytes", "schemas": {"objects.v1": files},
         "counts": {column: {value: rows}}    COUNTED_COLUMNS and hive partition keys ("" for null)
         "uncounted": {column: files}         files with rows whose stats lack the column's counts (too many values,
                                              or no such column)
         "unsummed": files                    files without stats: of them only files and bytes are counted
         "runs": {ingest_run: {"objects", "by_status": {label_status: rows}, "starts": {ingested_at: files}}},
         "runs_uncounted": files,             files holding several ingest runs
         "stored_sources": sources}           the manifest's sources that stored objects

    Every value is a sum over files, so a commit folds in what it adds and takes out what it deletes, and the
    totals stay exact without the other entries being read: `plankton info` then costs the same in a store's tenth
    year as in its first. A reader uses a value only when nothing it depends on is uncounted or unsummed."""
    name = dataset_of(rel)
    t = totals.setdefault(name, {"files": 0, "rows": 0, "bytes": 0, "schemas": {}, "counts": {}, "uncounted": {},
                                 "unsummed": 0, "runs": {}, "runs_uncounted": 0})
    stats = entry.get("stats")
    t["files"] += sign
    t["bytes"] += sign * (entry.get("size") or 0)
    if not t["files"]:
        del totals[name]
        return
    if stats is None:
        t["unsummed"] += sign
        return
    rows = stats.get("rows", 0)
    t["rows"] += sign * rows
    if "stored_sources" in stats:  # the manifest's
        t["stored_sources"] = t.get("stored_sources", 0) + sign * stats["stored_sources"]
    if "schema" in stats:
        _count(t["schemas"], f"{stats['schema']['dataset']}.v{stats['schema']['version']}", sign)
    if not rows:
        return
    counts = stats.get("counts", {})
    for part in rel.split("/")[1:-1]:  # hive partition folders: every row of the file has the folder's value
        column, sep, value = part.partition("=")
        if sep:
            _count(t["counts"].setdefault(column, {}), unquote(value), sign * rows)
    for column in COUNTED_COLUMNS:
        if column == "ingest_run":  # totalled by run, below
            continue
        if column in counts:
            for value, n in counts[column].items():
                _count(t["counts"].setdefault(column, {}), value, sign * n)
        else:
            _count(t["uncounted"], column, sign)
    runs = counts.get("ingest_run", {})
    if len(runs) == 1 and "label_status" in counts:
        run = next(iter(runs))
        r = t["runs"].setdefault(run, {"objects": 0, "by_status": {}, "starts": {}})
        _count(r["starts"], stats["min"].get("ingested_at") or "", sign)  # a min cannot be taken out: its files
        r["objects"] += sign * rows
        for status, n in counts["label_status"].items():
            _count(r["by_status"], status, sign * n)
        if not r["objects"]:
            del t["runs"][run]
    elif runs:
        t["runs_uncounted"] += sign


def _count(counter: dict[str, int], key: str, n: int) -> None:
    """counter[key] += n, dropping a key that reaches zero: a total never lists what is no longer there."""
    counter[key] = counter.get(key, 0) + n
    if not counter[key]:
        del counter[key]


def listed_files(root: Path) -> list[str]:
    """Store-relative paths of the data files and manifest found by listing folders (stores without a list)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [name for name in MANIFEST_FILES if (root / name).is_file()]
    for top in sorted(root.iterdir()):
        if top.is_dir() and not hidden(top.name):
            found += [str(p.relative_to(root)) for p in top.rglob("*.parquet")
                      if not any(hidden(part) for part in p.relative_to(top).parts)]
    return sorted(found)


def committed_paths(root: Path) -> list[str]:
    """Store-relative paths of every file of the store's current state."""
    files = read_committed(root)
    return sorted(files) if files is not None else listed_files(root)


def data_files(root: Path, dataset: str) -> list[Path]:
    """The data files of one dataset of the store, sorted.

    A name the store does not hold must be a valid dataset name (a path such as `../x` is a UsageError, not an
    empty dataset); one it holds is read whatever it is called (a store written before names were checked)."""
    prefix = f"{dataset}/"
    found = [Path(root) / rel for rel in committed_paths(root) if rel.startswith(prefix)]
    if not found or "/" in dataset:
        dataset_name(dataset)
    return found


def dataset_files(dataset_dir: str | Path) -> list[Path]:
    """The data files of a dataset folder (as paths under `dataset_dir`, sorted): through its store's committed
    list when it is inside a store, else by listing it (a folder of Parquet files from elsewhere)."""
    given = Path(dataset_dir)
    absolute = given.absolute()
    if (absolute.parent / COMMITTED).is_file():
        return [given / p.relative_to(absolute) for p in data_files(absolute.parent, absolute.name)]
    if not given.is_dir():
        return []
    return sorted((p for p in given.rglob("*.parquet") if not any(hidden(part) for part in p.relative_to(given).parts)),
                  key=lambda p: p.relative_to(given).as_posix())


RELIST_ATTEMPTS = 3
"""How many commits a reader rides out in one read before it gives up."""


def read_listed(dataset_dir: str | Path, read: Callable[[list[Path]], T]) -> T:
    """`read(files)` over the data files of a dataset (`dataset_files`), safe against commits meanwhile: when a
    listed file is gone because a writer committed between listing and opening, the listing is taken again and
    `read` called again with it. A file that the listing still names but that is gone is a StoreIOError naming it."""
    files = dataset_files(dataset_dir)
    for attempt in range(1, RELIST_ATTEMPTS + 1):
        try:
            return read(files)
        except FileNotFoundError as exc:
            files = _relisted(dataset_dir, files, exc, give_up=attempt == RELIST_ATTEMPTS)
    raise AssertionError("unreachable: the last attempt returns or raises")


def iter_listed(dataset_dir: str | Path, read_file: Callable[[Path], Iterable[T]]) -> Iterator[T]:
    """The items of `read_file(path)` for each data file of a dataset, in order, safe against commits meanwhile
    (for reads too long to repeat, e.g. predict's): when a listed file is gone, reading goes on with the files of
    a fresh listing not read yet. Rows of a file that a commit rewrote under a new name come again; callers whose
    output keeps one row per key (every prediction writer) need not mind."""
    files = dataset_files(dataset_dir)
    done: set[Path] = set()
    failures = 0
    while True:
        try:
            for path in files:
                if path not in done:
                    yield from read_file(path)
                    done.add(path)
            return
        except FileNotFoundError as exc:
            failures += 1
            files = _relisted(dataset_dir, files, exc, give_up=failures == RELIST_ATTEMPTS)


def _relisted(dataset_dir: str | Path, files: list[Path], exc: FileNotFoundError, *, give_up: bool) -> list[Path]:
    """The dataset's files listed again after `exc`, or the error to raise instead."""
    now = dataset_files(dataset_dir)
    missing = [f for f in now if not f.exists()]
    if missing:  # not a commit in between: the store lost a file its list names
        raise StoreIOError(f"{missing[0]} is in the store's committed file list but missing"
                           f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; run "
                           f"`plankton check --repair` on {Path(dataset_dir).absolute().parent}", path=missing[0]) from exc
    if now == files:  # the listing did not change: the missing file is not one of it
        raise exc
    if give_up:
        raise StoreIOError(f"{dataset_dir} changed {RELIST_ATTEMPTS} times while being read (writers committing); "
                           "run the command again") from exc
    return now
