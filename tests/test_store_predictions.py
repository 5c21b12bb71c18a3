"""The store writer: predictions for real ingested objects land in STORE/predictions, re-runs replace rows."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from plankton_cli.ingest import ingest
from plankton_cli.infer.predictions import StoreWriter
from plankton_cli.store import Store
from plankton_cli.core.writers import UNCLASSIFIED, Prediction, PredictionRun

DATA = Path(__file__).resolve().parent / "data"
CLASSES = ["Ciliophora", "Mesodinium_rubrum", "detritus"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """A real store holding the IFCB V2 test bin and two demo class folders."""
    store = Store(tmp_path_factory.mktemp("store"))
    demo = DATA / "planktonclass-demo" / "demo-images"
    ingest(store, [DATA / "ifcb" / "pyifcb-testdata" / "white"])
    ingest(store, [demo / "Ciliophora", demo / "Tripos"], fmt="folders")
    return store


def objects(store: Store) -> list[dict]:
    columns = ["object_id", "sample_id", "source_row", "instrument"]
    return sorted(store.dataset("objects").to_table(columns=columns).to_pylist(), key=lambda r: r["object_id"])


def make_run(store: Store, model_hash: str = "b2-model-a", run_id: str | None = None) -> PredictionRun:
    options = {"store": str(store.root)} | ({"run_id": run_id} if run_id else {})
    return PredictionRun(model_id=f"vit-{model_hash}", model_hash=model_hash, classes=CLASSES, thresholds=None,
                         classifier_name="test", top_k=2, options=options)


def predictions(rows: list[dict], seed: int) -> list[Prediction]:
    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        probabilities = rng.dirichlet(np.ones(len(CLASSES))).astype(np.float32)
        best = CLASSES[int(probabilities.argmax())]
        out.append(Prediction(row["object_id"], probabilities, best if probabilities.max() > 0.5 else UNCLASSIFIED,
                              best, sample_id=row["sample_id"], source_row=row["source_row"],
                              instrument=row["instrument"]))
    return out


def write(store: Store, items: list[Prediction], batch: int = 10, **run_args) -> dict:
    session = StoreWriter().open(store.root, make_run(store, **run_args))
    for start in range(0, len(items), batch):
        session.write(items[start : start + batch])
    return session.close()


def stored(store: Store) -> list[dict]:
    return sorted(store.dataset("predictions").to_table().to_pylist(), key=lambda r: (r["model_hash"], r["object_id"]))


def test_predictions_land_partitioned_and_reruns_replace_rows(store):
    rows = objects(store)
    assert {r["instrument"] for r in rows} == {"IFCB", "unknown"}
    first = predictions(rows, seed=0)
    summary = write(store, first, run_id="run-1")
    assert summary["rows"] == len(rows) and summary["replaced"] == 0 and summary["run"] == "run-1"
    assert {Path(f).parent.name for f in summary["files"]} == {"instrument=IFCB", "instrument=unknown"}
    got = stored(store)
    assert [g["object_id"] for g in got] == [r["object_id"] for r in rows]
    by_id = {p.object_id: p for p in first}
    for g in got:
        p = by_id[g["object_id"]]
        assert g["probabilities"] == pytest.approx(p.probabilities.tolist())
        assert g["score"] == pytest.approx(float(p.probabilities.max()))
        assert (g["label"], g["label_auto"], g["model_hash"], g["run"]) == (p.label, p.label_auto, "b2-model-a",
                                                                             "run-1")
    assert json.loads(pq.read_schema(store.root / summary["files"][0]).metadata[b"classes"]) == CLASSES

    # the same model again, on half the objects: those rows are replaced, the others kept
    half = predictions(rows[::2], seed=1)
    summary = write(store, half, run_id="run-2")
    assert summary["replaced"] == len(half)
    got = {g["object_id"]: g for g in stored(store)}
    assert len(got) == len(rows)
    for p in half:
        assert got[p.object_id]["run"] == "run-2"
        assert got[p.object_id]["probabilities"] == pytest.approx(p.probabilities.tolist())
    assert {g["run"] for g in got.values()} == {"run-1", "run-2"}

    # another model adds rows beside the first one's
    write(store, predictions(rows, seed=2), model_hash="b2-model-b")
    counts = duckdb.sql(f"select model_hash, count(*) n from read_parquet('{store.root}/predictions/**/*.parquet', "
                        "hive_partitioning=true) group by model_hash order by model_hash").fetchall()
    assert counts == [("b2-model-a", len(rows)), ("b2-model-b", len(rows))]
    assert not (store.root / ".staging").exists() and not list((store.root / ".journal").glob("*.json"))


def test_an_object_predicted_twice_in_one_run_keeps_the_last(store):
    rows = objects(store)[:4]
    items = predictions(rows, seed=3) + predictions(rows[:1], seed=4)
    summary = write(store, items, batch=2, model_hash="b2-model-c")
    assert summary["rows"] == 4 and summary["duplicates_in_run"] == 1
    table = ds.dataset(store.root / "predictions", format="parquet", partitioning="hive").to_table(
        filter=ds.field("model_hash") == "b2-model-c")
    assert table.num_rows == 4
    row = [r for r in table.to_pylist() if r["object_id"] == rows[0]["object_id"]][0]
    assert row["probabilities"] == pytest.approx(items[-1].probabilities.tolist())


def test_the_store_path_is_required(tmp_path):
    run = PredictionRun("m", "h", CLASSES, None, "test")
    with pytest.raises(ValueError, match="store"):
        StoreWriter().open(tmp_path, run)
