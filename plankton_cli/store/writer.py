"""Buffered, partitioned Parquet writing into a transaction's staging area.

Settings come from measurement (reference/data-and-backends.md §2): row groups of a few hundred images (one random
image costs 0.3–1 ms to read at 64–256 rows per group, 39 ms at 4,000), files rolled over at ~256 MB, no compression
on image bytes (PNG/JPEG do not compress further), zstd on the rest, dictionary encoding only where values repeat.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from plankton_cli.store.layout import MAX_FILE_BYTES, ROW_GROUP_ROWS, partition_dir
from plankton_cli.store.schema import DatasetSchema
from plankton_cli.store.transaction import Transaction


def _leaves(field: pa.Field, prefix: str = "") -> list[str]:
    """Parquet column paths under `field` (how per-column options name nested columns)."""
    path = prefix + field.name
    if pa.types.is_struct(field.type):
        return [leaf for sub in field.type for leaf in _leaves(sub, path + ".")]
    if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
        return _leaves(field.type.value_field.with_name("element"), path + ".list.")
    return [path]


def parquet_options(schema: DatasetSchema) -> dict:
    """`pq.ParquetWriter` options for one file of `schema`: what every file of the store is written with."""
    file_schema = schema.file_schema
    compression = {leaf: "none" if field.name == "image" else "zstd" for field in file_schema for leaf in _leaves(field)}
    # Metadata keys repeat in every row (IFCB header keys, ADC column names): a dictionary shrinks them ~10x.
    dictionary = [c for c in schema.dictionary_columns if c not in schema.partitioning]
    if "metadata" in file_schema.names:
        dictionary.append("metadata")
    return {"compression": compression, "use_dictionary": dictionary, "write_statistics": True}


def stage_rewrite(txn: Transaction, rel: str, table: pa.Table, drop: pa.ChunkedArray | pa.Array,
                  schema: DatasetSchema) -> str | None:
    """Replace the data file `rel` (holding `table`) by one without the rows where `drop` is true, in `txn`.

    Store files are never modified in place: the kept rows go to a new file and `rel` is deleted on commit, so
    readers see the old file or the new one. Returns the new store-relative path, or None when no row is left.
    """
    import pyarrow.compute as pc

    keep = table.filter(pc.invert(drop))
    txn.delete(rel)
    if not keep.num_rows:
        return None
    new_rel = txn.new_name(Path(rel).parent)  # a fresh short name: never `rel` plus a suffix, which grew each rewrite
    with pq.ParquetWriter(txn.stage(new_rel), keep.schema, **parquet_options(schema)) as writer:
        writer.write_table(keep, row_group_size=ROW_GROUP_ROWS)
    return new_rel


class _PartFile:
    def __init__(self, staged: Path, final: str, schema: DatasetSchema):
        self.final = final
        self.rows = 0
        self.bytes = 0
        self.writer = pq.ParquetWriter(staged, schema.file_schema, **parquet_options(schema))

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch, row_group_size=batch.num_rows)
        self.rows += batch.num_rows
        self.bytes += batch.nbytes

    def close(self) -> None:
        self.writer.close()


class DatasetWriter:
    """Rows in, Parquet files out: one open file per partition, one row group per `row_group_rows` rows."""

    def __init__(self, txn: Transaction, dataset: str, schema: DatasetSchema, *,
                 row_group_rows: int = ROW_GROUP_ROWS, max_file_bytes: int = MAX_FILE_BYTES):
        self.txn = txn
        self.dataset = dataset
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.max_file_bytes = max_file_bytes
        self._buffers: dict[str, list[dict]] = {}
        self._open: dict[str, _PartFile] = {}
        self.files_written: list[str] = []  # store-relative final paths
        self.rows_written = 0

    def add(self, row: dict) -> str:
        """Buffer one row; returns the store-relative file it will land in."""
        part = partition_dir(self.schema.partitioning, row)
        buf = self._buffers.setdefault(part, [])
        buf.append(row)
        target = self._file(part).final
        if len(buf) >= self.row_group_rows:
            self._flush(part)
        return target

    @property
    def staged_bytes(self) -> int:
        """Bytes written to the files still open (what decides when a long run commits)."""
        return sum(f.bytes for f in self._open.values())

    def _file(self, part: str) -> _PartFile:
        f = self._open.get(part)
        if f is None:
            final = self.txn.new_name(Path(self.dataset) / part)
            f = _PartFile(self.txn.stage(final), final, self.schema)
            self._open[part] = f
            self.files_written.append(final)
        return f

    def _flush(self, part: str) -> None:
        rows = self._buffers.pop(part, [])
        if not rows:
            return
        file_schema = self.schema.file_schema
        columns = {name: [r.get(name) for r in rows] for name in file_schema.names}
        batch = pa.RecordBatch.from_pydict(columns, schema=file_schema)
        f = self._file(part)
        f.write(batch)
        self.rows_written += batch.num_rows
        if f.bytes >= self.max_file_bytes:
            f.close()
            del self._open[part]

    def close(self) -> None:
        for part in list(self._buffers):
            self._flush(part)
        for f in self._open.values():
            f.close()
        self._open.clear()
