"""The store: a directory of Parquet datasets that any Parquet reader can open.

    STORE/
      objects/instrument=IFCB/part-<run>-0001.parquet   one dataset per folder, hive-partitioned
      padded/...                                         crop + pad per object (`plankton pad`; padded on read)
      rejections/part-<run>-0001.parquet                 what could not be stored, and why
      manifest.parquet  manifest-sealed.parquet          ingested sources, for idempotent re-runs (recent, sealed)
      committed.json                                     the committed files, their sizes and checksums
      store.json                                         store format version
      .lock .journal/ .staging/ .spool/                  writer bookkeeping (ignored by Parquet readers)
      .quarantine/<commit>/                              journals `check --repair` could not apply, kept

`pyarrow.dataset.dataset(STORE / "objects", format="parquet", partitioning="hive")` reads a dataset directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.dataset as ds

from plankton_cli.store import layout
from plankton_cli.store.lock import LockTimeout, StoreLock
from plankton_cli.store.schema import DatasetSchema, load_schema
from plankton_cli.core.atomic import atomic_write_bytes
from plankton_cli.store.shards import remove_ended
from plankton_cli.store.transaction import Transaction, recover

__all__ = ["Store", "LockTimeout", "load_schema", "DatasetSchema"]

FORMAT_VERSION = 1
T = TypeVar("T")


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @property
    def exists(self) -> bool:
        return (self.root / "store.json").is_file()

    def datasets(self) -> list[str]:
        return sorted({rel.split("/", 1)[0] for rel in layout.committed_paths(self.root) if "/" in rel})

    def files(self, dataset: str) -> list[Path]:
        """The committed data files of `dataset`, sorted (see `layout.py`)."""
        return layout.data_files(self.root, dataset)

    def stats(self, dataset: str, where: Callable[[dict | None], bool] | None = None) -> dict[Path, dict | None]:
        """The committed data files of `dataset` with their stats (`layout.file_stats`; None for a file whose
        footer cannot be read), from the committed list: what a nightly step selects its few files by. With `where`,
        only the files whose stats it accepts (pruning: a path is made only for those)."""
        entries = layout.read_committed(self.root)
        if entries is None:  # a store from before the committed list: its files' footers
            found = {path: layout.stats_of(self.root, str(path.relative_to(self.root)), None)
                     for path in self.files(dataset)}
            return {path: stats for path, stats in found.items() if where is None or where(stats)}
        prefix = f"{dataset}/"  # one pass over the list, no path arithmetic per file: the list grows with the store
        held = [(rel, layout.stats_of(self.root, rel, entry)) for rel, entry in entries.items()
                if rel.startswith(prefix)]
        if not held or "/" in dataset:
            layout.dataset_name(dataset)  # as `files`: a name it does not hold must be a dataset's name
        kept = sorted((rel, stats) for rel, stats in held if where is None or where(stats))
        return {self.root / rel: stats for rel, stats in kept}

    def dataset(self, name: str, files: list[Path] | None = None) -> ds.Dataset:
        """A pyarrow dataset over `name` (or over `files` of it), with the schema from `schemas/` when there is one
        (so an empty dataset still has its columns); a dataset without a schema file (e.g. `plankton pad --target
        other`) is read with the schema of its files. Files are opened when it is read: `read()` rides out a commit
        that deletes one meanwhile."""
        paths = [str(f) for f in (self.files(name) if files is None else files)]
        try:
            described = load_schema(name)
        except KeyError:
            return ds.dataset(paths, format="parquet", partitioning="hive", partition_base_dir=str(self.root / name))
        schema = described.arrow
        if not paths:
            return ds.dataset(pa.Table.from_batches([], schema=schema))
        partitioning = ds.partitioning(pa.schema([schema.field(k) for k in described.partitioning]), flavor="hive")
        return ds.dataset(paths, schema=schema, format="parquet", partitioning=partitioning,
                          partition_base_dir=str(self.root / name))

    def read(self, name: str, read: Callable[[ds.Dataset], T]) -> T:
        """`read(self.dataset(name))`, again over a fresh file list when a commit deleted a listed file meanwhile
        (`layout.read_listed`)."""
        return layout.read_listed(self.root / name, lambda files: read(self.dataset(name, files)))

    @contextmanager
    def locked(self, timeout: float = 60.0) -> Iterator[Store]:
        """Hold the writer lock (waiting up to `timeout` s) after finishing any interrupted commit."""
        with StoreLock(self.root, timeout=timeout):
            recover(self.root)
            remove_ended(self.root)  # shard folders of fanned-out runs that ended (no journal points there now)
            if not self.exists:
                atomic_write_bytes(self.root / "store.json", json.dumps({"format": FORMAT_VERSION}).encode(), durable=True)
            yield self

    def transaction(self, run_id: str | None = None) -> Transaction:
        """A new transaction; call only while holding `locked()`."""
        return Transaction(self.root, run_id)
