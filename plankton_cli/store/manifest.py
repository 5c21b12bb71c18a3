"""The manifest of ingested sources (`STORE/manifest.parquet`, `manifest-sealed.parquet`): what makes re-running
ingest a no-op.

A source is unchanged when its fingerprint (file names, sizes, mtimes) matches; only when that differs is its
content hashed, so a nightly re-run over years of bins costs one `stat` per file. A source whose content changed is
read again and its new rows supersede the old ones (see `ingest.py`).

The manifest of a station's years holds ~10^5 sources, in two parts so that a night rewrites what the night
changed, not the years: the recent part (`manifest.parquet`, read whole and rewritten at each commit, at most
`SEAL_ROWS` entries) and the sealed part (`manifest-sealed.parquet`, sorted by source key, read only in the row groups
whose statistics may hold a key asked for, rewritten only when one of its entries changes or the recent part is
merged into it). An entry becomes a Python dict only when a run asks for it (a new or changed source); the rest stay
columnar. A store written with one manifest file is read the same way: its file is the recent part, sealed at its
next commit once it holds `SEAL_ROWS` sources.

A station's nightly job hands ingest its whole data folder: one `stat` per bin file of every night ever seen grew
to ~0.5 s at 350 nights. The manifest therefore also keeps, in its footer, a fingerprint of each settled leaf
source folder (an IFCB day folder): `Folders`. A folder whose fingerprint matches is not even listed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli.core.records import ReadOptions, Source
from plankton_cli.store.layout import MANIFEST, MANIFEST_SEALED
from plankton_cli.store.schema import load_schema


def fingerprint(files: tuple[Path, ...]) -> tuple[str, int]:
    h = hashlib.blake2b(digest_size=16)
    total = 0
    for f in files:
        st = os.stat(f)
        total += st.st_size
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest(), total


def checksum(files: tuple[Path, ...]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(f"{Path(f).name}\0".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


SEAL_ROWS = 4096
"""The recent part (`manifest.parquet`) is merged into the sealed part once it holds this many sources: ~170
nights of a 24-bin station. So a commit rewrites at most this many entries, whatever the store's age, and the
sealed part is rewritten a few times a year (or when one of its sources changes)."""
SEALED_GROUP_ROWS = 1024
"""Rows per row group of the sealed part: a lookup reads the groups whose footer statistics may hold the key."""


class _Sealed:
    """The sealed part of the manifest (`manifest-sealed.parquet`), sorted by source key and read a row group at a
    time: only the groups whose footer statistics (min/max per column) may hold what is asked are read. A night's
    new bins sort after every sealed key, so a night reads none."""

    def __init__(self, path: Path):
        self.file = pq.ParquetFile(path)
        meta = self.file.metadata
        self._column = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
        self._ranges: dict[str, list[tuple | None]] = {}  # column -> (min, max) of each row group, None: unknown
        self._groups: dict[int, pa.Table] = {}
        self._keys: dict[int, dict[str, int]] = {}
        self._located: dict[str, tuple[int, int] | None] = {}

    def _range(self, column: str) -> list[tuple | None]:
        if column not in self._ranges:
            meta, i = self.file.metadata, self._column[column]
            stats = [meta.row_group(g).column(i).statistics for g in range(meta.num_row_groups)]
            self._ranges[column] = [(st.min, st.max) if st is not None and st.has_min_max else None for st in stats]
        return self._ranges[column]

    def groups(self, column: str, value) -> list[int]:
        """The row groups that may hold `value` in `column`."""
        found = []
        for g, bounds in enumerate(self._range(column)):
            try:
                if bounds is None or bounds[0] <= value <= bounds[1]:
                    found.append(g)
            except TypeError:  # a value of another type than the statistics': cannot rule the group out
                found.append(g)
        return found

    def group(self, g: int) -> pa.Table:
        if g not in self._groups:
            self._groups[g] = self.file.read_row_group(g)
        return self._groups[g]

    def locate(self, key: str) -> tuple[int, int] | None:
        """(row group, row) of `key`'s entry, None when the sealed part has none."""
        if key not in self._located:
            self._located[key] = None
            for g in self.groups("source_key", key):
                if g not in self._keys:
                    self._keys[g] = {k: i for i, k in enumerate(self.group(g)["source_key"].to_pylist())}
                if (i := self._keys[g].get(key)) is not None:
                    self._located[key] = g, i
                    break
        return self._located[key]

    def keys_where(self, column: str, value) -> list[str]:
        found: list[str] = []
        for g in self.groups(column, value):
            table = self.group(g)
            found += table.filter(pc.equal(table[column], value))["source_key"].to_pylist()
        return found

    def table(self, columns: list[str] | None = None) -> pa.Table:
        return self.file.read(columns=columns)


class Entries(MutableMapping[str, dict]):
    """source key -> manifest entry, over the manifest's two parts: the recent one (an Arrow table read whole) and
    the sealed one (`_Sealed`, read by row group). An entry is made a dict (which callers may change in place)
    when it is first asked for; iterating over all of them makes every one (check, repairs). A key is in one part
    only: an entry of the sealed part that changes is written back into it (`Manifest.stage`)."""

    def __init__(self, table: pa.Table | None, live: dict[str, dict] | None = None, sealed: _Sealed | None = None):
        self.table = table
        self.sealed = sealed
        keys = [] if table is None else table["source_key"].to_pylist()
        self.rows = {key: i for i, key in enumerate(keys)}
        self.live: dict[str, dict] = live if live is not None else {}  # made, changed or added by this run
        self.read_sealed: dict[str, dict] = {}  # sealed entries made dicts, as read: which of them changed
        self._seen: tuple[list, list] | None = None  # the fingerprint and checksum columns, once asked for

    def in_sealed(self, key: str) -> bool:
        return key not in self.rows and self.sealed is not None and self.sealed.locate(key) is not None

    def seen(self, key: str) -> tuple[str, str] | None:
        """(fingerprint, checksum) of `key`'s entry, None when there is none: what `status` asks of every source
        a run is given, answered from two columns."""
        entry = self.live.get(key)
        if entry is not None:
            return entry["fingerprint"], entry["checksum"]
        i = self.rows.get(key)
        if i is not None and self.table is not None:
            if self._seen is None:
                self._seen = self.table["fingerprint"].to_pylist(), self.table["checksum"].to_pylist()
            return self._seen[0][i], self._seen[1][i]
        at = None if self.sealed is None else self.sealed.locate(key)
        if at is None:
            return None
        group = self.sealed.group(at[0])  # type: ignore[union-attr]
        return group["fingerprint"][at[1]].as_py(), group["checksum"][at[1]].as_py()

    def __getitem__(self, key: str) -> dict:
        entry = self.live.get(key)
        if entry is not None:
            return entry
        if (i := self.rows.get(key)) is not None:
            assert self.table is not None
            entry = self.live[key] = self.table.slice(i, 1).to_pylist()[0]
            return entry
        at = None if self.sealed is None else self.sealed.locate(key)
        if at is None:
            raise KeyError(key)
        entry = self.live[key] = self.sealed.group(at[0]).slice(at[1], 1).to_pylist()[0]  # type: ignore[union-attr]
        self.read_sealed[key] = dict(entry)
        return entry

    def __setitem__(self, key: str, entry: dict) -> None:
        self.live[key] = entry

    def __delitem__(self, key: str) -> None:
        raise TypeError("manifest entries are replaced, never deleted")

    def __contains__(self, key: object) -> bool:
        return key in self.live or key in self.rows or (isinstance(key, str) and self.in_sealed(key))

    def _sealed_keys(self) -> list[str]:
        return [] if self.sealed is None else self.sealed.table(["source_key"])["source_key"].to_pylist()

    def __iter__(self) -> Iterator[str]:
        sealed = self._sealed_keys()
        yield from self.rows
        yield from sealed
        known = set(sealed)
        yield from (key for key in self.live if key not in self.rows and key not in known)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def keys_where(self, column: str, value) -> list[str]:
        """Keys of the entries whose `column` equals `value`, reading only what may hold it (the recent part's
        column, the sealed row groups whose statistics allow the value)."""
        found = [] if self.table is None else \
            self.table.filter(pc.equal(self.table[column], value))["source_key"].to_pylist()
        if self.sealed is not None:
            found += self.sealed.keys_where(column, value)
        return [key for key in found if key not in self.live] + \
            [key for key, entry in self.live.items() if entry.get(column) == value]

    def keys_with_file(self, data_file: str) -> list[str]:
        """Keys of the entries whose `data_files` holds `data_file` (reads the sealed part whole: a source that
        changed, rare)."""
        found: list[str] = []
        for table in (self.table, None if self.sealed is None else self.sealed.table()):
            if table is None:
                continue
            files = table["data_files"].combine_chunks()
            rows = pc.filter(pc.list_parent_indices(files), pc.equal(pc.list_flatten(files), data_file))
            found += [key for key in pc.take(table["source_key"], rows).to_pylist() if key not in self.live]
        return found + [key for key, entry in self.live.items() if data_file in entry["data_files"]]

    def changed_sealed(self) -> dict[str, dict]:
        """The sealed part's entries this run changed or replaced."""
        return {key: entry for key, entry in self.live.items()
                if key not in self.rows and self.read_sealed.get(key) != entry and self.in_sealed(key)}

    def recent_table(self, schema: pa.Schema) -> pa.Table:
        """The recent part's entries, sorted by source key: the unchanged ones as they were read, the live ones
        (not of the sealed part) from their dicts."""
        live = [entry for key, entry in self.live.items() if key in self.rows or not self.in_sealed(key)]
        return _merged(self.table, live, schema)

    def sealed_table(self, schema: pa.Schema, changed: dict[str, dict]) -> pa.Table:
        """The sealed part's entries with `changed` written over them, sorted by source key."""
        return _merged(None if self.sealed is None else self.sealed.table(), list(changed.values()), schema)


def _merged(table: pa.Table | None, entries: list[dict], schema: pa.Schema) -> pa.Table:
    """`table`'s rows less those of `entries`' keys, plus `entries`, in `schema`, sorted by source key."""
    live = pa.Table.from_pylist(entries, schema=schema)
    if table is None:
        return live.sort_by("source_key")
    keys = pa.array([entry["source_key"] for entry in entries], pa.string())
    kept = table.filter(pc.invert(pc.is_in(table["source_key"], keys)))
    for field in schema:  # a manifest written before a column existed: empty in its old entries
        if field.name not in kept.column_names:
            kept = kept.append_column(field.name, pa.nulls(kept.num_rows, field.type))
    kept = pa.Table.from_batches(kept.select(schema.names).cast(schema).to_batches(), schema=schema)
    return pa.concat_tables([kept, live]).sort_by("source_key")


FOLDERS_KEY = b"plankton.folders"
"""The manifest's footer key holding `Folders`' fingerprints (JSON: folder -> [mtime_ns, inode, sources])."""

SETTLED_S = 3600
"""A folder is fingerprinted only when nothing was added to it for this long. Its mtime says when an entry was
last added, removed or renamed in it, but not when a file in it was rewritten in place, which is how an instrument
writes the bin it is acquiring (~20 minutes a bin, its files created when it starts): an hour without a new entry
means no bin in it is being written. A folder stays settled after that: bins arrive as new files (a copy or
rsync writes a temporary name and renames it), which changes the folder's mtime."""


def _folders_of(metadata: dict | None) -> dict[str, list[int]]:
    text = (metadata or {}).get(FOLDERS_KEY)
    return json.loads(text) if text else {}


class Folders:
    """Which leaf source folders (folders without subfolders, e.g. IFCB day folders) are unchanged since their
    sources were last ingested, told by one `stat` of the folder instead of a listing and a `stat` per file.

    Unchanged: the folder's mtime and inode are those recorded when it was last listed, and it was settled then
    (see `SETTLED_S`). What this does not see, by design: a file rewritten in place in a settled folder, e.g. a
    bin restored from a backup over its old files; `plankton ingest --rescan` checks every file's fingerprint
    (and `--retry-rejected` implies it). A walker (`plugins/ifcb`) asks `unchanged(folder)` before listing each
    subfolder, and tells `listed(folder, n)` the sources it found in a leaf it listed."""

    def __init__(self, root: Path, rescan: bool = False):
        path = root / MANIFEST
        self.known = _folders_of(pq.read_schema(path).metadata) if path.exists() else {}
        self.rescan = rescan
        self._stat: dict[str, list[int]] = {}  # folders about to be listed: their [mtime_ns, inode] before it
        self.found: dict[str, list[int]] = {}  # settled leaves listed by this run: [mtime_ns, inode, sources]
        self.skipped: dict[str, int] = {}  # unchanged folders, not listed: their number of sources

    def unchanged(self, folder: Path) -> bool:
        key = os.path.abspath(folder)
        st = os.stat(key)
        now = [st.st_mtime_ns, st.st_ino]
        old = self.known.get(key)
        if not self.rescan and old is not None and old[:2] == now:
            self.skipped[key] = old[2]
            return True
        self._stat[key] = now  # taken before the listing: an entry added during it changes the mtime again
        return False

    def listed(self, folder: Path, sources: int) -> None:
        key = os.path.abspath(folder)
        before = self._stat.get(key)
        if before is not None and time.time_ns() - before[0] >= SETTLED_S * 10**9:
            self.found[key] = [*before, sources]

    def merged(self) -> dict[str, list[int]]:
        """The fingerprints to keep once this run's sources are committed: the known ones, less those of folders
        listed again (changed, or not settled), plus the settled leaves listed."""
        return {k: v for k, v in self.known.items() if k not in self._stat} | self.found


class Manifest:
    def __init__(self, root: Path, entries: dict[str, dict] | None = None):
        """The manifest of the store at `root`, or one holding `entries` (to be staged over it; a repaired
        manifest keeps no folder fingerprints: the next ingest checks every file)."""
        self.root = root
        path, sealed = root / MANIFEST, root / MANIFEST_SEALED
        table = pq.read_table(path) if entries is None and path.exists() else None
        self.entries = Entries(table, entries, _Sealed(sealed) if entries is None and sealed.exists() else None)
        self.folders = _folders_of(None if table is None else table.schema.metadata)
        self.dirty = entries is not None
        self.replaces = entries is not None  # a repaired manifest: its entries replace both parts

    def keep_folders(self, folders: dict[str, list[int]]) -> None:
        """Record `folders` (`Folders.merged()`) at the next commit: only the run's last, once all its sources
        are committed, or a crash could leave a folder recorded whose bins were never stored."""
        if folders != self.folders:
            self.folders = folders
            self.dirty = True

    def status(self, source: Source) -> tuple[str, dict]:
        """("new" | "unchanged" | "changed", facts) for `source`; facts go back into `record()`."""
        fp, size = fingerprint(source.files)
        facts = {"fingerprint": fp, "size": size}
        old = self.entries.seen(source.key)
        if old is None:
            return "new", facts
        if old[0] == fp:
            return "unchanged", facts | {"checksum": old[1]}
        facts["checksum"] = checksum(source.files)
        if facts["checksum"] == old[1]:  # touched, not changed: remember the new mtimes
            self.entries[source.key]["fingerprint"] = fp
            self.dirty = True
            return "unchanged", facts
        return "changed", facts

    def record(self, source: Source, facts: dict, counts: dict, data_files: list[str], run: str,
               discovered_from: Path | None = None, options: ReadOptions | None = None) -> None:
        self.entries[source.key] = {
            "source_key": source.key,
            "reader": source.reader,
            "files": [str(f) for f in source.files],
            "discovered_from": None if discovered_from is None else str(Path(discovered_from).absolute()),
            # what a repair needs to read it again into the same rows (ids depend on the collection)
            "read_options": None if options is None else json.dumps(asdict(options), sort_keys=True),
            "size": facts["size"],
            "fingerprint": facts["fingerprint"],
            "checksum": facts.get("checksum") or checksum(source.files),
            "n_read": counts["read"],
            "n_stored": counts["stored"],
            "n_skipped": counts["skipped"],
            "n_rejected": counts["rejected"],
            "data_files": sorted(set(data_files)),
            "run": run,
            "ingested_at": datetime.now(UTC),
        }
        self.dirty = True

    @staticmethod
    def read_options(entry: dict) -> ReadOptions | None:
        """The read options an entry was ingested with; None for entries written before they were recorded."""
        text = entry.get("read_options")
        return None if text is None else ReadOptions(**json.loads(text))

    def replace_data_file(self, old: str, new: str | None) -> None:
        """A data file was rewritten (`new`) or removed (`None`) while superseding a source."""
        for key in self.entries.keys_with_file(old):
            entry = self.entries[key]
            if old in entry["data_files"]:
                files = [f for f in entry["data_files"] if f != old]
                if new is not None:
                    files.append(new)
                entry["data_files"] = sorted(files)
                self.dirty = True

    def stage(self, session) -> None:
        """Write the manifest into the session's transaction, so it changes in the same commit as the data it
        describes: the recent part always (it holds the folder fingerprints), the sealed part only when one of its
        entries changed or the recent part reached `SEAL_ROWS` and is merged into it."""
        schema = load_schema("manifest").arrow
        recent = self.entries.recent_table(schema)
        changed = self.entries.changed_sealed()
        sealed = None
        if changed or recent.num_rows >= SEAL_ROWS:
            table = self.entries.sealed_table(schema, changed)
            if recent.num_rows >= SEAL_ROWS:
                table, recent = pa.concat_tables([table, recent]).sort_by("source_key"), recent.slice(0, 0)
            sealed = session.stage(MANIFEST_SEALED)
            pq.write_table(table, sealed, compression="zstd", row_group_size=SEALED_GROUP_ROWS)
        elif self.replaces and (self.root / MANIFEST_SEALED).exists():
            session.delete(MANIFEST_SEALED)
        recent = recent.replace_schema_metadata({**(recent.schema.metadata or {}),
                                                 FOLDERS_KEY: json.dumps(self.folders, separators=(",", ":"))})
        pq.write_table(recent, session.stage(MANIFEST), compression="zstd")
        # What was written is the manifest from here on (a run may commit again): the staged sealed part is read
        # through its open file, which stays valid when the commit moves it.
        self.entries = Entries(recent, None, _Sealed(sealed) if sealed is not None else self.entries.sealed)
        self.dirty = self.replaces = False
