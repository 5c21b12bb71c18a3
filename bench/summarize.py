"""A nightly `plankton summarize` (a few new bins) against summarising the whole season again (`--rebuild`).

Real IFCB data: the pyifcb V2 test bin (19 ROIs) copied under BINS bin ids a few hours apart, ingested into a
fresh store; predictions of a tiny real classifier file written through the store writer (random probabilities:
summarize reads labels, not pixels). The reference is the full rebuild measured in the same run.

    python bench/summarize.py [--bins 300] [--new 6]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
V2 = "D20130526T095207_IFCB013"


def copy_bins(source: Path, target: Path, first: int, count: int) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(first, first + count):
        name = (start + timedelta(hours=4 * i)).strftime("D%Y%m%dT%H%M%S_IFCB013")
        for ext in (".adc", ".hdr", ".roi"):
            shutil.copyfile(source / f"{V2}{ext}", target / f"{name}{ext}")


def predict_all(store, model_path: Path, classes: list[str]) -> None:
    """Predictions for every object this model has not predicted yet, through the real store writer."""
    from plankton_cli.infer.predict import already_predicted
    from plankton_cli.infer.predictions import StoreWriter
    from plankton_cli.publish.summarize import model_info
    from plankton_cli.core.writers import Prediction, PredictionRun

    info = model_info(model_path)
    done = already_predicted(store, info.model_hash)
    rows = [r for r in store.dataset("objects").to_table(columns=["object_id", "sample_id", "instrument"]).to_pylist()
            if r["object_id"] not in done]
    rng = np.random.default_rng(0)
    run = PredictionRun(model_id=info.model_id, model_hash=info.model_hash, classes=classes, thresholds=None,
                        classifier_name="bench", options={"store": str(store.root)})
    session = StoreWriter().open(store.root, run)
    batch = []
    for row in rows:
        p = rng.dirichlet(np.ones(len(classes))).astype(np.float32)
        batch.append(Prediction(row["object_id"], p, classes[int(p.argmax())], classes[int(p.argmax())],
                                sample_id=row["sample_id"], instrument=row["instrument"]))
    session.write(batch)
    session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bins", type=int, default=300)
    parser.add_argument("--new", type=int, default=6, help="bins a nightly run adds")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from plankton_cli.ingest import ingest
    from plankton_cli.store import Store
    from plankton_cli.publish.summarize import summarize
    from test_predict import PADDING, tiny_model

    classes = [f"class_{i:02d}" for i in range(20)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bins = tmp / "bins"
        bins.mkdir()
        source = REPO / "tests" / "data" / "ifcb" / "pyifcb-testdata" / "white" / "D2013" / "D201305" / "D20130526"
        model = tiny_model(tmp / "model" / "fold-0", classes, PADDING)
        store = Store(tmp / "store")
        copy_bins(source, bins, 0, args.bins)
        ingest(store, [bins])
        predict_all(store, model, classes)
        summarize(store, model, "bin", tmp / "summary", plots=False)
        copy_bins(source, bins, args.bins, args.new)
        ingest(store, [bins])
        predict_all(store, model, classes)

        t0 = time.perf_counter()
        nightly = summarize(store, model, "bin", tmp / "summary", plots=False)
        t_nightly = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = summarize(store, model, "bin", tmp / "full", plots=False, rebuild=True)
        t_full = time.perf_counter() - t0
    assert nightly.new_samples == args.new and full.new_samples == args.bins + args.new
    print(f"{args.bins + args.new} bins, {full.objects} objects: nightly run adding {args.new} bins "
          f"{t_nightly * 1000:.0f} ms, full rebuild {t_full * 1000:.0f} ms (nightly = {t_nightly / t_full:.2f}x)")


if __name__ == "__main__":
    main()
