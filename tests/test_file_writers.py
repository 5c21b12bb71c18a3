"""Parquet, CSV and embeddings writers, on predictions for real demo vignettes and real IFCB ROIs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plankton_cli.core.records import Record
from plankton_cli.core.writers import UNCLASSIFIED, Prediction, PredictionRun
from plankton_plugins.files.writers import CsvWriter, EmbeddingsWriter, ParquetWriter
from plankton_plugins.ifcb.reader import IFCBBinReader

DATA = Path(__file__).resolve().parent / "data"
CLASSES = sorted(p.name for p in (DATA / "planktonclass-demo" / "demo-images").iterdir() if p.is_dir())
THRESHOLD = 0.3


def make_run(top_k: int = 3) -> PredictionRun:
    return PredictionRun(model_id="vit-test-fold0", model_hash="b2-0123abcd", classes=CLASSES,
                         thresholds=np.full(len(CLASSES), THRESHOLD), classifier_name="test", top_k=top_k,
                         options={"run_id": "run-1"})


def predictions(embeddings: bool = True, seed: int = 0) -> list[Prediction]:
    """Demo vignettes (sample = class folder) and IFCB ROIs (with ROI numbers), seeded probabilities."""
    rng = np.random.default_rng(seed)
    items = [(f"{p.parent.name}/{p.name}", p.parent.name, None, None)
             for p in sorted((DATA / "planktonclass-demo" / "demo-images").glob("*/*.jpg"))[::10]]
    reader = IFCBBinReader()
    for source in reader.discover(DATA / "ifcb" / "pyifcb-testdata" / "white"):
        items += [(r.object_id, r.sample_id, r.source_row, r.instrument) for r in reader.read(source)
                  if isinstance(r, Record)]
    out = []
    for object_id, sample, roi, instrument in items:
        probabilities = rng.dirichlet(np.ones(len(CLASSES))).astype(np.float32)
        best = int(probabilities.argmax())
        label = CLASSES[best] if probabilities[best] >= THRESHOLD else UNCLASSIFIED
        out.append(Prediction(object_id, probabilities, label, CLASSES[best], sample_id=sample, source_row=roi,
                              instrument=instrument,
                              embedding=rng.normal(size=16).astype(np.float32) if embeddings else None))
    return out


def write(writer, out: Path, items: list[Prediction], batch: int = 8, run: PredictionRun | None = None) -> dict:
    session = writer.open(out, run or make_run())
    for start in range(0, len(items), batch):
        session.write(items[start : start + batch])
    return session.close()


def test_parquet_has_the_prediction_columns(tmp_path):
    items = predictions()
    summary = write(ParquetWriter(), tmp_path, items)
    path = tmp_path / "predictions.parquet"
    assert summary == {"writer": "parquet", "files": [str(path)], "rows": len(items), "columns": summary["columns"]}
    table = pq.read_table(path)
    assert table.column_names == ["object_id", "model_id", "model_hash", "label", "label_auto", "score",
                                  "top_k_labels", "top_k_probabilities", "probabilities", "embedding",
                                  "sample_id", "instrument", "predicted_at", "run"]
    assert json.loads(table.schema.metadata[b"classes"]) == CLASSES
    rows = table.to_pylist()
    assert [r["object_id"] for r in rows] == [p.object_id for p in items]
    for row, p in zip(rows, items):
        order = np.argsort(-p.probabilities, kind="stable")[:3]
        assert row["score"] == pytest.approx(float(p.probabilities.max()))
        assert row["top_k_labels"] == [CLASSES[i] for i in order]
        assert row["top_k_probabilities"] == pytest.approx(p.probabilities[order].tolist())
        assert row["probabilities"] == pytest.approx(p.probabilities.tolist())
        assert row["embedding"] == pytest.approx(p.embedding.tolist())
        assert (row["label"], row["label_auto"], row["run"]) == (p.label, p.label_auto, "run-1")
        assert row["instrument"] == (p.instrument or "unknown")


def test_parquet_leaves_out_embeddings_when_there_are_none(tmp_path):
    write(ParquetWriter(), tmp_path, predictions(embeddings=False))
    assert "embedding" not in pq.read_schema(tmp_path / "predictions.parquet").names
    write(ParquetWriter(), tmp_path / "empty", [])  # a run without predictions still leaves a readable file
    assert pq.read_table(tmp_path / "empty" / "predictions.parquet").num_rows == 0


def test_csv_columns_values_and_identical_reruns(tmp_path):
    items = predictions()
    write(CsvWriter(), tmp_path / "a", items, run=make_run(top_k=2))
    with open(tmp_path / "a" / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["object_id", "sample_id", "roi_number", "label", "label_auto", "score",
                             "top1_label", "top1_score", "top2_label", "top2_score"]
    for row, p in zip(rows, items, strict=True):
        order = np.argsort(-p.probabilities, kind="stable")
        assert row["roi_number"] == ("" if p.source_row is None else str(p.source_row))
        assert (row["label"], row["label_auto"], row["top1_label"]) == (p.label, p.label_auto, CLASSES[order[0]])
        assert float(row["score"]) == pytest.approx(float(p.probabilities.max()), rel=1e-5)
        assert float(row["top2_score"]) == pytest.approx(float(p.probabilities[order[1]]), rel=1e-5)
    assert any(r["roi_number"] for r in rows) and any(r["label"] == UNCLASSIFIED for r in rows)
    write(CsvWriter(), tmp_path / "b", items, batch=3, run=make_run(top_k=2))
    assert (tmp_path / "a" / "predictions.csv").read_bytes() == (tmp_path / "b" / "predictions.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["predictions.csv"]  # no temporaries left


def test_embeddings_are_fixed_size_float32_vectors(tmp_path):
    items = predictions()
    items[1].embedding = None
    summary = write(EmbeddingsWriter(), tmp_path, items)
    assert summary["rows"] == len(items) - 1 and summary["without_embedding"] == 1 and summary["dim"] == 16
    table = pq.read_table(tmp_path / "embeddings.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 16)
    kept = [p for p in items if p.embedding is not None]
    assert table["object_id"].to_pylist() == [p.object_id for p in kept]
    np.testing.assert_array_equal(np.stack(table["embedding"].to_numpy(zero_copy_only=False)),
                                  np.stack([p.embedding for p in kept]))


def test_embeddings_writer_writes_nothing_without_embeddings_and_refuses_mixed_sizes(tmp_path):
    summary = write(EmbeddingsWriter(), tmp_path, predictions(embeddings=False))
    assert summary["files"] == [] and not (tmp_path / "embeddings.parquet").exists()
    items = predictions()
    items[-1].embedding = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="8 values"):
        write(EmbeddingsWriter(), tmp_path, items, batch=len(items) - 1)
    assert not (tmp_path / "embeddings.parquet").exists()  # a failed run leaves no half-written file in place
