"""The store's `predictions` dataset: prediction batches as Arrow tables, and the `store` writer plugin.

`prediction_table()` turns `Prediction`s into rows of `schemas/predictions.v1.json` (the file writers reuse it).
`StoreWriter` appends a run's rows to `STORE/predictions/instrument=<x>/` in one transaction under the store lock.

Re-running predict never duplicates: (object_id, model_hash) is unique. Rows are spooled to a temporary Parquet
file while predict runs (the store lock is not held meanwhile, so ingest is not blocked); at `close()` the writer
takes the lock and, in one commit, rewrites every existing data file that holds one of the run's
(object_id, model_hash) pairs without those rows (under a new name, as ingest supersedes a changed source) and
adds the new files. Within one run, an object predicted twice keeps its last prediction.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli.records import UNKNOWN_INSTRUMENT
from plankton_cli.store import Store
from plankton_cli.store.schema import load_schema
from plankton_cli.store.transaction import Transaction, new_run_id
from plankton_cli.store.writer import parquet_options, partition_dir, stage_rewrite
from plankton_cli.writers import Prediction, PredictionRun

DATASET = "predictions"
CLASSES_KEY = b"classes"
"""Parquet schema metadata key holding the JSON list of class names (the order of `probabilities`)."""


def probability_matrix(batch: Sequence[Prediction], run: PredictionRun) -> np.ndarray:
    """The (n, n_classes) float32 probabilities of `batch`, checked against `run.classes`."""
    n_classes = len(run.classes)
    if not batch:
        return np.zeros((0, n_classes), np.float32)
    matrix = np.stack([np.asarray(p.probabilities, np.float32).reshape(-1) for p in batch])
    if matrix.shape[1] != n_classes:
        raise ValueError(f"predictions have {matrix.shape[1]} probabilities but the run has {n_classes} classes")
    return matrix


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of the `k` most probable classes per row, most probable first.

    Ties go to the lower class index, so the result is deterministic.
    """
    k = max(1, min(k, probabilities.shape[1]))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=1)


def _lists(values: np.ndarray) -> pa.ListArray:
    """A list<float32> or list<string> array from an (n, m) matrix, one row per list."""
    n, m = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * m, m, dtype=np.int32)) if m else pa.array(np.zeros(n + 1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))


def prediction_table(
    batch: Sequence[Prediction],
    run: PredictionRun,
    *,
    run_id: str,
    predicted_at: datetime,
    probabilities: bool = True,
    embedding: bool = True,
) -> pa.Table:
    """`batch` as a table with the columns of predictions.v1 (partition column `instrument` included).

    `probabilities=False` / `embedding=False` leave those nullable columns null.
    """
    schema = load_schema(DATASET).arrow
    matrix = probability_matrix(batch, run)
    order, top_probabilities = top_k(matrix, run.top_k)
    classes = np.asarray(run.classes, dtype=object)
    n = len(batch)
    columns = {
        "object_id": [p.object_id for p in batch],
        "model_id": [run.model_id] * n,
        "model_hash": [run.model_hash] * n,
        "label": [p.label for p in batch],
        "label_auto": [p.label_auto for p in batch],
        "score": pa.array(top_probabilities[:, 0] if n else np.zeros(0, np.float32)),
        "top_k_labels": _lists(classes[order]),
        "top_k_probabilities": _lists(top_probabilities.astype(np.float32)),
        "probabilities": _lists(matrix) if probabilities else pa.nulls(n, pa.list_(pa.float32())),
        "embedding": pa.array(
            [None if p.embedding is None or not embedding else np.asarray(p.embedding, np.float32) for p in batch],
            pa.list_(pa.float32()),
        ),
        "sample_id": [p.sample_id for p in batch],
        "instrument": [p.instrument or UNKNOWN_INSTRUMENT for p in batch],
        "predicted_at": [predicted_at] * n,
        "run": [run_id] * n,
    }
    arrays = [pa.array(columns[f.name], f.type) if not isinstance(columns[f.name], pa.Array)
              else columns[f.name].cast(f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def with_classes(schema: pa.Schema, classes: Sequence[str]) -> pa.Schema:
    """`schema` with the class order of `probabilities` added to its metadata."""
    return schema.with_metadata({**(schema.metadata or {}), CLASSES_KEY: json.dumps(list(classes)).encode()})


class StoreWriter:
    """Writes predictions into the store's `predictions` dataset (store path: `run.options["store"]`)."""

    name = "store"
    description = "the store's predictions dataset (one row per object and model; re-runs replace rows)"

    def open(self, out_dir: Path, run: PredictionRun) -> StoreSession:
        store = run.options.get("store")
        if not store:
            raise ValueError("the store writer needs the store path in run.options['store']")
        return StoreSession(Store(store), run)


class StoreSession:
    def __init__(self, store: Store, run: PredictionRun, *, lock_timeout: float = 60.0):
        self.store = store
        self.run = run
        self.lock_timeout = lock_timeout
        self.run_id = run.options.get("run_id") or new_run_id()
        self.predicted_at = datetime.now(UTC)
        self.schema = load_schema(DATASET)
        self._spool_dir = Path(tempfile.mkdtemp(prefix="plankton-predictions-"))
        self._spool_path = self._spool_dir / "spool.parquet"
        self._spool = pq.ParquetWriter(self._spool_path, self.schema.arrow, compression="zstd")
        self._last_row: dict[str, int] = {}  # object_id -> index of its last row in the spool
        self._rows = 0

    def write(self, batch: Sequence[Prediction]) -> None:
        if not batch:
            return
        self._spool.write_table(prediction_table(batch, self.run, run_id=self.run_id,
                                                 predicted_at=self.predicted_at))
        for p in batch:
            self._last_row[p.object_id] = self._rows
            self._rows += 1

    def close(self) -> dict:
        self._spool.close()
        try:
            with self.store.locked(timeout=self.lock_timeout):
                txn = self.store.transaction(self.run_id)
                try:
                    replaced = self._drop_replaced_rows(txn)
                    files = self._stage_new_rows(txn)
                    txn.commit()
                except BaseException:
                    txn.abort()
                    raise
        finally:
            shutil.rmtree(self._spool_dir, ignore_errors=True)
        return {
            "writer": StoreWriter.name,
            "store": str(self.store.root),
            "dataset": DATASET,
            "run": self.run_id,
            "rows": len(self._last_row),
            "replaced": replaced,
            "duplicates_in_run": self._rows - len(self._last_row),
            "files": files,
        }

    def _drop_replaced_rows(self, txn: Transaction) -> int:
        """Stage rewrites of the data files holding this model's rows for objects of this run; rows removed."""
        if not self._last_row:
            return 0
        ids = pa.array(list(self._last_row), pa.string())
        removed = 0
        for path in self.store.files(DATASET):
            keys = pq.read_table(path, columns=["object_id", "model_hash"])
            hit = pc.and_(pc.equal(keys["model_hash"].cast(pa.string()), self.run.model_hash),
                          pc.is_in(keys["object_id"], value_set=ids))
            n_hit = pc.sum(hit).as_py() or 0
            if not n_hit:
                continue
            table = pq.ParquetFile(path).read()  # the file alone: its own schema, partition column not added
            stage_rewrite(txn, str(path.relative_to(self.store.root)), table, hit, self.schema)
            removed += n_hit
        return removed

    def _stage_new_rows(self, txn: Transaction) -> list[str]:
        """Copy the spooled rows into one staged file per instrument partition; returns their store paths."""
        file_schema = with_classes(self.schema.file_schema, self.run.classes)
        writers: dict[str, pq.ParquetWriter] = {}
        finals: list[str] = []
        deduplicate = self._rows != len(self._last_row)
        start = 0
        for batch in pq.ParquetFile(self._spool_path).iter_batches(batch_size=4096):
            table = pa.Table.from_batches([batch])
            if deduplicate:
                rows = np.arange(start, start + table.num_rows)
                last = np.array([self._last_row[i] for i in table["object_id"].to_pylist()])
                table = table.filter(pa.array(rows == last))
            start += batch.num_rows
            for instrument in pc.unique(table["instrument"]).to_pylist():
                part = table.filter(pc.equal(table["instrument"], instrument)).select(file_schema.names)
                if instrument not in writers:
                    final = f"{DATASET}/{partition_dir(self.schema, {'instrument': instrument})}/" \
                            f"part-{txn.id}-{len(writers) + 1:04d}.parquet"
                    writers[instrument] = self._writer(txn.stage(final), file_schema)
                    finals.append(final)
                writers[instrument].write_table(part.cast(file_schema))
        for writer in writers.values():
            writer.close()
        return finals

    def _writer(self, path: Path, schema: pa.Schema) -> pq.ParquetWriter:
        return pq.ParquetWriter(path, schema, **parquet_options(self.schema))
