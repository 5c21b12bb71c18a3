"""Prediction writers that produce one plain file each in the output folder.

- `parquet` → `predictions.parquet`: the columns of the store's predictions dataset (`schemas/predictions.v1.json`),
  `embedding` only when the first batch carries embeddings; class order in the file metadata key `classes`.
- `csv` → `predictions.csv`: object_id, sample_id, roi_number, label, label_auto, score, top1_label, top1_score, ...
- `embeddings` → `embeddings.parquet`: object_id + `embedding` as fixed_size_list<float32>[dim].

Each file is written under a hidden temporary name and renamed into place at `close()`, so a reader never sees a
half-written file and a failed run leaves the previous file untouched. Rows are streamed, never held in memory.
"""

from __future__ import annotations

import csv
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from plankton_cli.infer.predictions import prediction_table, probability_matrix, top_k, with_classes
from plankton_cli.store.transaction import new_run_id
from plankton_cli.core.writers import Prediction, PredictionRun


class _AtomicFile:
    """A hidden temporary path next to `final`; `commit()` renames it into place."""

    def __init__(self, final: Path):
        final.parent.mkdir(parents=True, exist_ok=True)
        self.final = final
        self.tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")

    def commit(self) -> None:
        os.replace(self.tmp, self.final)


def _run_metadata(run: PredictionRun) -> dict[bytes, bytes]:
    return {b"model_id": run.model_id.encode(), b"model_hash": run.model_hash.encode(),
            b"classifier_name": run.classifier_name.encode()}


# -- parquet ---------------------------------------------------------------------------------------------------


class ParquetWriter:
    name = "parquet"
    description = "predictions.parquet: one row per object (label, score, top-k, probabilities)"

    def open(self, out_dir: Path, run: PredictionRun) -> ParquetSession:
        return ParquetSession(Path(out_dir), run)


class ParquetSession:
    def __init__(self, out_dir: Path, run: PredictionRun):
        self.run = run
        self.run_id = run.options.get("run_id") or new_run_id()
        self.predicted_at = datetime.now(UTC)
        self.file = _AtomicFile(out_dir / "predictions.parquet")
        self._writer: pq.ParquetWriter | None = None
        self._columns: list[str] = []
        self.rows = 0

    def write(self, batch: Sequence[Prediction]) -> None:
        if not batch:
            return
        table = prediction_table(batch, self.run, run_id=self.run_id, predicted_at=self.predicted_at)
        if self._writer is None:
            with_embedding = any(p.embedding is not None for p in batch)
            self._open([f for f in table.schema.names if with_embedding or f != "embedding"], table.schema)
        self._writer.write_table(table.select(self._columns).cast(self._writer.schema))
        self.rows += len(batch)

    def _open(self, columns: list[str], schema: pa.Schema) -> None:
        self._columns = columns
        schema = with_classes(pa.schema([schema.field(c) for c in columns], metadata=schema.metadata),
                              self.run.classes)
        schema = schema.with_metadata(schema.metadata | _run_metadata(self.run))
        self._writer = pq.ParquetWriter(self.file.tmp, schema, compression="zstd")

    def close(self) -> dict:
        if self._writer is None:  # no predictions: still write an (empty) file with the columns
            empty = prediction_table([], self.run, run_id=self.run_id, predicted_at=self.predicted_at)
            self._open([c for c in empty.schema.names if c != "embedding"], empty.schema)
        self._writer.close()
        self.file.commit()
        return {"writer": ParquetWriter.name, "files": [str(self.file.final)], "rows": self.rows,
                "columns": self._columns}


# -- csv -------------------------------------------------------------------------------------------------------


def _number(value: float) -> str:
    return format(float(value), ".6g")


class CsvWriter:
    name = "csv"
    description = "predictions.csv: object_id, sample_id, roi_number, label, label_auto, score, top-k"

    def open(self, out_dir: Path, run: PredictionRun) -> CsvSession:
        return CsvSession(Path(out_dir), run)


class CsvSession:
    def __init__(self, out_dir: Path, run: PredictionRun):
        self.run = run
        self.k = max(1, min(run.top_k, len(run.classes)))
        self.file = _AtomicFile(out_dir / "predictions.csv")
        self._stream = open(self.file.tmp, "w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._stream, lineterminator="\n")
        top = [c for i in range(1, self.k + 1) for c in (f"top{i}_label", f"top{i}_score")]
        self._csv.writerow(["object_id", "sample_id", "roi_number", "label", "label_auto", "score", *top])
        self.rows = 0

    def write(self, batch: Sequence[Prediction]) -> None:
        if not batch:
            return
        order, probabilities = top_k(probability_matrix(batch, self.run), self.k)
        for p, indices, scores in zip(batch, order, probabilities):
            top = [v for i, s in zip(indices, scores) for v in (self.run.classes[i], _number(s))]
            roi = "" if p.source_row is None else str(p.source_row)
            self._csv.writerow([p.object_id, p.sample_id or "", roi, p.label, p.label_auto, _number(scores[0]), *top])
        self.rows += len(batch)

    def close(self) -> dict:
        self._stream.close()
        self.file.commit()
        return {"writer": CsvWriter.name, "files": [str(self.file.final)], "rows": self.rows}


# -- embeddings ------------------------------------------------------------------------------------------------


class EmbeddingsWriter:
    name = "embeddings"
    description = "embeddings.parquet: object_id + encoder features (fixed-size float32 vectors)"

    def open(self, out_dir: Path, run: PredictionRun) -> EmbeddingsSession:
        return EmbeddingsSession(Path(out_dir), run)


class EmbeddingsSession:
    def __init__(self, out_dir: Path, run: PredictionRun):
        self.run = run
        self.file = _AtomicFile(out_dir / "embeddings.parquet")
        self._writer: pq.ParquetWriter | None = None
        self.dim: int | None = None
        self.rows = 0
        self.without_embedding = 0

    def write(self, batch: Sequence[Prediction]) -> None:
        kept = [p for p in batch if p.embedding is not None]
        self.without_embedding += len(batch) - len(kept)
        if not kept:
            return
        vectors = np.stack([np.asarray(p.embedding, np.float32).reshape(-1) for p in kept])
        if self.dim is None:
            self.dim = vectors.shape[1]
            schema = pa.schema(
                [pa.field("object_id", pa.string(), nullable=False),
                 pa.field("embedding", pa.list_(pa.float32(), self.dim), nullable=False)],
                metadata=_run_metadata(self.run) | {b"dim": str(self.dim).encode()},
            )
            self._writer = pq.ParquetWriter(self.file.tmp, schema, compression="zstd")
        if vectors.shape[1] != self.dim:
            raise ValueError(f"embedding of {vectors.shape[1]} values after ones of {self.dim}")
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim)
        ids = pa.array([p.object_id for p in kept], pa.string())
        self._writer.write_table(pa.Table.from_arrays([ids, column], schema=self._writer.schema))
        self.rows += len(kept)

    def close(self) -> dict:
        summary = {"writer": EmbeddingsWriter.name, "rows": self.rows, "dim": self.dim,
                   "without_embedding": self.without_embedding}
        if self._writer is None:
            # Nothing to write (predict ran without embeddings): no file, rather than a table of unknown width.
            return summary | {"files": [], "note": "no prediction carried an embedding; nothing written"}
        self._writer.close()
        self.file.commit()
        return summary | {"files": [str(self.file.final)]}
