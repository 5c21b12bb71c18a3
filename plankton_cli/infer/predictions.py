"""The store's `predictions` dataset: prediction batches as Arrow tables, and the `store` writer plugin.

`prediction_table()` turns `Prediction`s into rows of `schemas/predictions.v1.json` (the file writers reuse it).
`StoreWriter` appends a run's rows to `STORE/predictions/instrument=<x>/` in one transaction under the store lock.

Re-running predict never duplicates: (object_id, model_hash) is unique. Rows are spooled to a Parquet file in
`STORE/.spool/predictions/<model_hash>/` while predict runs (the store lock is not held meanwhile, so ingest is
not blocked); `finish()` renames the spool from `<run>.part` to `<run>.parquet` (from then on the predictions are
never computed again), and `commit()` takes the lock and, in one commit, rewrites every existing data file that
holds one of the spooled (object_id, model_hash) pairs without those rows (under a new name, as ingest supersedes
a changed source), adds the new files and deletes the spools. An object predicted twice keeps its last prediction.
`close()` is both, for a run whose only writer is the store.

A finished spool that no commit consumed belongs to a run that failed, was killed, or could not take the lock
(`LockTimeout`): the next run of the same model skips its objects, writes them to its file writers, and commits
it with its own (`plankton_cli.infer.predict` explains the protocol). Who may commit a finished spool is decided by an
flock on it: its run holds it until it commits or ends; a run that can take it has *claimed* the spool. The spool
records the file outputs its run asked for (`OUTPUTS_KEY`), so the run that finishes it owes them too. A killed
run's unfinished `.part` spool is removed by the next run (see `pending_spools`).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli.core.records import UNKNOWN_INSTRUMENT
from plankton_cli.store import LockTimeout, Store
from plankton_cli.store.layout import partition_dir
from plankton_cli.store.schema import load_schema
from plankton_cli.store.session import WriteSession
from plankton_cli.store.transaction import new_run_id
from plankton_cli.store.writer import parquet_options
from plankton_cli.core.writers import Prediction, PredictionRun

DATASET = "predictions"
SPOOL = ".spool/predictions"
OUTPUTS_KEY = b"plankton.outputs"
"""Spool schema metadata key: JSON {"outputs": {writer: OUT folder}, "options": writer options} of its run."""
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
    """Writes predictions into the store's `predictions` dataset (store path: `run.options["store"]`; seconds to
    wait for the store lock: `run.options["lock_timeout"]`, default 60)."""

    name = "store"
    description = "the store's predictions dataset (one row per object and model; re-runs replace rows)"

    def open(self, out_dir: Path, run: PredictionRun) -> StoreSession:
        store = run.options.get("store")
        if not store:
            raise ValueError("the store writer needs the store path in run.options['store']")
        return StoreSession(Store(store), run, lock_timeout=float(run.options.get("lock_timeout", 60.0)))


def _spool_dir(store: Store, model_hash: str) -> Path:
    """Where a model's predictions wait for the store lock: inside the store (hidden from Parquet readers), so a
    run that could not take the lock keeps its work where the next run of the same model finds it."""
    return store.root / SPOOL / model_hash


def pending_spools(store: Store, model_hash: str) -> list[Path]:
    """Finished spools of `model_hash` not yet committed (oldest first), after removing those of killed runs."""
    folder = _spool_dir(store, model_hash)
    if not folder.is_dir():
        return []
    for part in folder.glob("*.part"):
        with open(part, "rb") as f:
            try:  # the writing run holds an flock on its spool: free means that run died
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
        part.unlink(missing_ok=True)
    return sorted(folder.glob("*.parquet"))


def pending_ids(store: Store, model_hash: str) -> set[str]:
    """Object ids that earlier runs of `model_hash` predicted but could not store yet (they need no new run)."""
    ids: set[str] = set()
    for path in pending_spools(store, model_hash):
        ids.update(pq.read_table(path, columns=["object_id"])["object_id"].to_pylist())
    return ids


def _claim(store: Store, model_hash: str) -> dict[Path, IO[bytes]]:
    """Finished spools no live run holds, each with the open file whose flock this run now holds (oldest first)."""
    claimed: dict[Path, IO[bytes]] = {}
    for path in pending_spools(store, model_hash):
        try:
            f = open(path, "rb")  # noqa: SIM115 - held until this run commits or ends
        except FileNotFoundError:  # committed meanwhile by the run that held it
            continue
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(f.fileno()).st_ino != path.stat().st_ino:
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):  # its run is alive, or it committed just before the lock
            f.close()
            continue
        claimed[path] = f
    return claimed


def spool_outputs(spool: IO[bytes] | Path) -> tuple[dict[str, str], dict]:
    """The file outputs (writer -> OUT folder) and writer options the run of `spool` asked for ({} for none)."""
    recorded = json.loads((pq.read_schema(spool).metadata or {}).get(OUTPUTS_KEY, b"{}"))
    return dict(recorded.get("outputs", {})), dict(recorded.get("options", {}))


def _rows_in(spools: list[Path]) -> int:
    return sum(pq.ParquetFile(s).metadata.num_rows for s in spools)


class StoreSession:
    def __init__(self, store: Store, run: PredictionRun, *, lock_timeout: float = 60.0):
        self.store = store
        self.run = run
        self.lock_timeout = lock_timeout
        self.run_id = run.options.get("run_id") or new_run_id()
        self.predicted_at = datetime.now(UTC)
        self.schema = load_schema(DATASET)
        folder = _spool_dir(store, run.model_hash)
        folder.mkdir(parents=True, exist_ok=True)
        self.earlier = _claim(store, run.model_hash)  # finished spools of ended runs: this run commits them
        self._spool_path = folder / f"{self.run_id}.parquet"
        self._part = folder / f"{self.run_id}.part"
        self._part_lock = open(self._part, "wb")  # noqa: SIM115 - held until commit; see pending_spools and _claim
        fcntl.flock(self._part_lock, fcntl.LOCK_EX)
        recorded = {"outputs": run.options.get("outputs", {}),
                    "options": {k: v for k, v in run.options.items() if k not in ("outputs", "run_id")}}
        schema = self.schema.arrow.with_metadata({OUTPUTS_KEY: json.dumps(recorded, default=str).encode()})
        self._spool = pq.ParquetWriter(self._part, schema, compression="zstd")
        self._finished = False

    def write(self, batch: Sequence[Prediction]) -> None:
        if batch:
            self._spool.write_table(prediction_table(batch, self.run, run_id=self.run_id,
                                                     predicted_at=self.predicted_at))

    def finish(self) -> None:
        """Make the spool durable under its finished name: from here on a later run never predicts it again."""
        self._spool.close()
        os.replace(self._part, self._spool_path)  # the flock stays with the file: no other run commits it
        self._finished = True

    def abort(self) -> None:
        """Drop an unfinished spool (predict failed) and release the claimed ones for the next run."""
        if not self._finished:
            self._spool.close()
            self._part.unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Leave the finished spools (this run's and the claimed ones) to the next run of this model."""
        for f in [self._part_lock, *self.earlier.values()]:
            f.close()

    def close(self) -> dict:
        self.finish()
        return self.commit()

    def commit(self) -> dict:
        """Commit the claimed spools and this run's in one store commit, under the lock; releases the flocks."""
        try:
            with self.store.locked(timeout=self.lock_timeout):
                # Only the spools this run holds: a live run's finished spool is that run's to commit
                spools = [p for p in [*self.earlier, self._spool_path] if p.exists()]
                session = WriteSession(self.store.root, self.run_id, "predict")
                spooled = _rows_in(spools)
                earlier = spooled - _rows_in([self._spool_path])
                try:
                    rows = self._latest_rows(spools)
                    replaced = self._drop_replaced_rows(session, rows)
                    files = self._stage_new_rows(session, spools, rows)
                    for spool in spools:  # consumed in the same commit, so no spool is ever applied twice
                        session.delete(spool.relative_to(self.store.root))
                    session.commit()
                except BaseException:
                    session.abort()
                    raise
        except LockTimeout as exc:
            raise LockTimeout(f"{exc}; the {_rows_in([self._spool_path])} predictions of this run are kept in "
                              f"{self._spool_path.parent} for the next run of this model") from None
        finally:
            self.release()
        n_rows = sum(len(r) for r in rows.values())
        return {
            "writer": StoreWriter.name,
            "store": str(self.store.root),
            "dataset": DATASET,
            "run": self.run_id,
            "rows": n_rows,
            "replaced": replaced,
            "from_earlier_runs": earlier,
            "duplicates_in_run": spooled - n_rows,
            "files": files,
        }

    @staticmethod
    def _latest_rows(spools: list[Path]) -> dict[Path, dict[str, int]]:
        """spool → {object_id: row} of the rows that survive: an object predicted twice keeps its last prediction
        (the later spool, then the later row)."""
        latest: dict[str, tuple[Path, int]] = {}
        for spool in spools:
            ids = pq.read_table(spool, columns=["object_id"])["object_id"].to_pylist()
            for i, oid in enumerate(ids):
                latest[oid] = (spool, i)
        rows: dict[Path, dict[str, int]] = {s: {} for s in spools}
        for oid, (spool, i) in latest.items():
            rows[spool][oid] = i
        return rows

    def _drop_replaced_rows(self, session: WriteSession, rows: dict[Path, dict[str, int]]) -> int:
        """Stage rewrites of the data files holding this model's rows for the objects to store; rows removed."""
        ids = pa.array(sorted({oid for r in rows.values() for oid in r}), pa.string())
        if not len(ids):
            return 0
        removed = 0
        for path in self.store.files(DATASET):
            keys = pq.read_table(path, columns=["object_id", "model_hash"])
            hit = pc.and_(pc.equal(keys["model_hash"].cast(pa.string()), self.run.model_hash),
                          pc.is_in(keys["object_id"], value_set=ids))
            n_hit = pc.sum(hit).as_py() or 0
            if not n_hit:
                continue
            table = pq.ParquetFile(path).read()  # the file alone: its own schema, partition column not added
            session.remove_rows(str(path.relative_to(self.store.root)), table, hit, self.schema)
            removed += n_hit
        return removed

    def _stage_new_rows(self, session: WriteSession, spools: list[Path], rows: dict[Path, dict[str, int]]
                        ) -> list[str]:
        """Copy the surviving spooled rows into one staged file per instrument partition; returns their paths."""
        file_schema = with_classes(self.schema.file_schema, self.run.classes)
        writers: dict[str, pq.ParquetWriter] = {}
        finals: list[str] = []
        for spool in spools:
            keep = np.fromiter(rows[spool].values(), np.int64)
            start = 0
            for batch in pq.ParquetFile(spool).iter_batches(batch_size=4096):
                table = pa.Table.from_batches([batch])
                table = table.filter(pa.array(np.isin(np.arange(start, start + table.num_rows), keep)))
                start += batch.num_rows
                for instrument in pc.unique(table["instrument"]).to_pylist():
                    part = table.filter(pc.equal(table["instrument"], instrument)).select(file_schema.names)
                    if instrument not in writers:
                        final = f"{DATASET}/{partition_dir(self.schema.partitioning, {'instrument': instrument})}/" \
                                f"part-{session.txn_id}-{len(writers) + 1:04d}.parquet"
                        writers[instrument] = pq.ParquetWriter(session.stage(final), file_schema,
                                                               **parquet_options(self.schema))
                        finals.append(final)
                    writers[instrument].write_table(part.cast(file_schema))
        for writer in writers.values():
            writer.close()
        return finals
