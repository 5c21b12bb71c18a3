"""The manifest of ingested sources (`STORE/manifest.parquet`): what makes re-running ingest a no-op.

A source is unchanged when its fingerprint (file names, sizes, mtimes) matches; only when that differs is its
content hashed, so a nightly re-run over years of bins costs one `stat` per file. A source whose content changed is
read again and its new rows supersede the old ones (see `ingest.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
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


class Manifest:
    def __init__(self, root: Path, entries: dict[str, dict] | None = None):
        """The manifest of the store at `root`, or one holding `entries` (to be staged over it)."""
        self.root = root
        self.entries: dict[str, dict] = entries if entries is not None else {}
        self.dirty = entries is not None
        path = root / MANIFEST
        if entries is None and path.exists():
            for row in pq.read_table(path).to_pylist():
                self.entries[row["source_key"]] = row

    def status(self, source: Source) -> tuple[str, dict]:
        """("new" | "unchanged" | "changed", facts) for `source`; facts go back into `record()`."""
        fp, size = fingerprint(source.files)
        facts = {"fingerprint": fp, "size": size}
        old = self.entries.get(source.key)
        if old is None:
            return "new", facts
        if old["fingerprint"] == fp:
            return "unchanged", facts | {"checksum": old["checksum"]}
        facts["checksum"] = checksum(source.files)
        if facts["checksum"] == old["checksum"]:  # touched, not changed: remember the new mtimes
            old["fingerprint"] = fp
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
        for entry in self.entries.values():
            if old in entry["data_files"]:
                files = [f for f in entry["data_files"] if f != old]
                if new is not None:
                    files.append(new)
                entry["data_files"] = sorted(files)
                self.dirty = True

    def stage(self, session) -> None:
        """Write the manifest into the session's transaction, so it changes in the same commit as the data it
        describes."""
        schema = load_schema("manifest").arrow
        rows = sorted(self.entries.values(), key=lambda e: e["source_key"])
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, session.stage(MANIFEST), compression="zstd")
        self.dirty = False
