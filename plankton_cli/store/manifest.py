"""The manifest of ingested sources (`STORE/manifest.parquet`): what makes re-running ingest a no-op.

A source is unchanged when its fingerprint (file names, sizes, mtimes) matches; only when that differs is its
content hashed, so a nightly re-run over years of bins costs one `stat` per file. A source whose content changed is
read again and its new rows supersede the old ones (see `ingest.py`).

The manifest of a station's years holds ~10^5 sources: it is kept as the Arrow table read from the file, an entry
becomes a Python dict only when a run asks for it (a new or changed source), and a commit writes the table with the
entries this run changed replaced (columnar, never a dict per source): reading and writing it costs milliseconds
where a dict per source cost seconds.

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
from plankton_cli.store.layout import MANIFEST
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


class Entries(MutableMapping[str, dict]):
    """source key -> manifest entry, over the manifest's Arrow table: an entry is made a dict (which callers may
    change in place) when it is first asked for; iterating over all of them makes every one (check, repairs)."""

    def __init__(self, table: pa.Table | None, live: dict[str, dict] | None = None):
        self.table = table
        keys = [] if table is None else table["source_key"].to_pylist()
        self.rows = {key: i for i, key in enumerate(keys)}
        self.live: dict[str, dict] = live if live is not None else {}  # made, changed or added by this run
        self._seen: tuple[list, list] | None = None  # the fingerprint and checksum columns, once asked for

    def seen(self, key: str) -> tuple[str, str] | None:
        """(fingerprint, checksum) of `key`'s entry, None when there is none: what `status` asks of every source
        a run is given, answered from two columns."""
        entry = self.live.get(key)
        if entry is not None:
            return entry["fingerprint"], entry["checksum"]
        i = self.rows.get(key)
        if i is None or self.table is None:
            return None
        if self._seen is None:
            self._seen = self.table["fingerprint"].to_pylist(), self.table["checksum"].to_pylist()
        return self._seen[0][i], self._seen[1][i]

    def __getitem__(self, key: str) -> dict:
        entry = self.live.get(key)
        if entry is None:
            i = self.rows[key]  # KeyError for an unknown source
            assert self.table is not None
            entry = self.live[key] = self.table.slice(i, 1).to_pylist()[0]
        return entry

    def __setitem__(self, key: str, entry: dict) -> None:
        self.live[key] = entry

    def __delitem__(self, key: str) -> None:
        raise TypeError("manifest entries are replaced, never deleted")

    def __contains__(self, key: object) -> bool:
        return key in self.live or key in self.rows

    def __iter__(self) -> Iterator[str]:
        yield from self.rows
        yield from (key for key in self.live if key not in self.rows)

    def __len__(self) -> int:
        return len(self.rows) + sum(1 for key in self.live if key not in self.rows)

    def keys_where(self, column: str, value) -> list[str]:
        """Keys of the entries whose `column` equals `value`, without making the others dicts."""
        found = [] if self.table is None else [
            key for key in self.table.filter(pc.equal(self.table[column], value))["source_key"].to_pylist()
            if key not in self.live]
        return found + [key for key, entry in self.live.items() if entry.get(column) == value]

    def keys_with_file(self, data_file: str) -> list[str]:
        """Keys of the entries whose `data_files` holds `data_file`."""
        found: list[str] = []
        if self.table is not None:
            files = self.table["data_files"].combine_chunks()
            rows = pc.filter(pc.list_parent_indices(files), pc.equal(pc.list_flatten(files), data_file))
            found = [key for key in pc.take(self.table["source_key"], rows).to_pylist() if key not in self.live]
        return found + [key for key, entry in self.live.items() if data_file in entry["data_files"]]

    def to_table(self, schema: pa.Schema) -> pa.Table:
        """Every entry, sorted by source key: the unchanged ones as they were read, the live ones from their dicts."""
        live = pa.Table.from_pylist(list(self.live.values()), schema=schema)
        if self.table is None:
            return live.sort_by("source_key")
        kept = self.table.filter(pc.invert(pc.is_in(self.table["source_key"], pa.array(list(self.live), pa.string()))))
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
        path = root / MANIFEST
        table = pq.read_table(path) if entries is None and path.exists() else None
        self.entries = Entries(table, entries)
        self.folders = _folders_of(None if table is None else table.schema.metadata)
        self.dirty = entries is not None

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
        describes."""
        table = self.entries.to_table(load_schema("manifest").arrow)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               FOLDERS_KEY: json.dumps(self.folders, separators=(",", ":"))})
        pq.write_table(table, session.stage(MANIFEST), compression="zstd")
        self.dirty = False
