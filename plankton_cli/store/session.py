"""A writer's session with the store: the one way ingest, pad and predictions change it.

A session holds the store lock (the caller's `Store.locked()`), and between commits one transaction with a
`DatasetWriter` per dataset it writes, the rejections, and the rewrites that remove rows. `commit()` makes all of
it visible at once and starts the next transaction; `abort()` forgets what was not committed (and, past the
commit point, leaves the journal for `recover()`; see `transaction.py`). Commands never touch staging, journals
or a writer's internals; they add rows, reject, remove rows and commit.
"""

from __future__ import annotations

from pathlib import Path

from collections.abc import Collection, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli.store.layout import dataset_name
from plankton_cli.store.schema import DatasetSchema, load_schema
from plankton_cli.store.transaction import Transaction
from plankton_cli.store.writer import DatasetWriter, stage_rewrite

REJECTIONS = "rejections"


class WriteSession:
    def __init__(self, root: Path, run_id: str, command: str):
        self.root = root
        self.run_id = run_id
        self.command = command
        self.commits = 0
        self._schemas: dict[str, tuple[DatasetSchema, int | None]] = {}
        self._begin()

    def _begin(self) -> None:
        self.commits += 1
        self.txn = Transaction(self.root, f"{self.run_id}-{self.commits:03d}")
        self._writers: dict[str, DatasetWriter] = {}

    def writer(self, dataset: str, schema: DatasetSchema | None = None, *, row_group_rows: int | None = None
               ) -> DatasetWriter:
        """The writer of `dataset` in the current transaction (its schema: `schema`, else `schemas/<dataset>`)."""
        if dataset not in self._schemas:
            dataset_name(dataset, written_by=None if dataset == REJECTIONS else self.command)
            self._schemas[dataset] = (schema or load_schema(dataset), row_group_rows)
        if dataset not in self._writers:
            schema, rows = self._schemas[dataset]
            options = {"row_group_rows": rows} if rows else {}
            self._writers[dataset] = DatasetWriter(self.txn, dataset, schema, **options)
        return self._writers[dataset]

    def add(self, dataset: str, row: dict) -> str:
        """Add one row to `dataset`; returns the store-relative file it lands in."""
        return self.writer(dataset).add(row)

    def reject(self, row: dict) -> None:
        """Record a rejection (`source_key`, `source_file`, `source_row`, `object_id`, `reason`, `rejected_at`)."""
        self.writer(REJECTIONS, row_group_rows=4096).add({"run": self.run_id, "command": self.command, **row})

    def remove_rows(self, rel: str, table: pa.Table, drop, schema: DatasetSchema) -> str | None:
        """Replace the committed file `rel` (holding `table`) by one without the rows where `drop` is true."""
        return stage_rewrite(self.txn, rel, table, drop, schema)

    def remove_ids(self, files: Iterable[str], ids: Collection[str], schema: DatasetSchema
                   ) -> tuple[int, dict[str, str | None]]:
        """Replace each committed file of `files` by one without the rows whose `object_id` is in `ids`.

        Returns (rows removed, old file -> its replacement, None when no row was left)."""
        values = pa.array(sorted(ids), pa.string())
        removed, replaced = 0, {}
        for rel in sorted(set(files)):
            table = pq.read_table(self.root / rel, schema=schema.file_schema)
            gone = pc.is_in(table["object_id"], values)
            removed += pc.sum(gone).as_py() or 0
            replaced[rel] = self.remove_rows(rel, table, gone, schema)
        return removed, replaced

    def stage(self, final: str) -> Path:
        """A path for a whole file (e.g. the manifest) that replaces `final` on commit."""
        return self.txn.stage(final)

    def delete(self, rel: str | Path) -> None:
        """Delete the store file `rel` in the same commit (e.g. a spool whose rows this commit stores)."""
        self.txn.delete(rel)

    @property
    def txn_id(self) -> str:
        """The current transaction's id (new file names carry it, so they never clash with committed ones)."""
        return self.txn.id

    @property
    def staged_bytes(self) -> int:
        return sum(w.staged_bytes for w in self._writers.values())

    @property
    def empty(self) -> bool:
        return self.txn.empty

    def commit(self) -> None:
        for w in self._writers.values():
            w.close()
        self.txn.commit()
        self._begin()

    def abort(self) -> None:
        for w in self._writers.values():
            try:
                w.close()
            except OSError:  # the disk that failed the run may fail this too; the staged files are dropped anyway
                pass
        self.txn.abort()
