"""The manifest of ingested sources (`STORE/manifest.parquet`): what makes re-running ingest a no-op.

A source is unchanged when its fingerprint (file names, sizes, mtimes) matches; only when that differs is its
content hashed, so a nightly re-run over years of bins costs one `stat` per file. A source whose content changed is
read again and its new rows supersede the old ones (see `ingest.py`).

The manifest of a station's years holds ~10^5 sources: it is kept as the Arrow table read from the file, an entry
becomes a Python dict only when a run asks for it (a new or changed source), and a commit writes the table with the
entries this run changed replaced (columnar, never a dict per source): reading and writing it costs milliseconds
where a dict per source cost seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
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


class Manifest:
    def __init__(self, root: Path, entries: dict[str, dict] | None = None):
        """The manifest of the store at `root`, or one holding `entries` (to be staged over it)."""
        self.root = root
        path = root / MANIFEST
        table = pq.read_table(path) if entries is None and path.exists() else None
        self.entries = Entries(table, entries)
        self.dirty = entries is not None

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
        pq.write_table(table, session.stage(MANIFEST), compression="zstd")
        self.dirty = False
