"""`plankton select` on a store of ~100k predicted objects: seconds per strategy for a budget of 1,000.

Real IFCB ROIs: the pyifcb V2 test bin (19 ROIs) copied under as many bin ids as it takes, ingested into a store
in --work (kept: a re-run skips the ingest); predictions of a tiny real classifier file written through the store
writer with a ViT-Ti-wide embedding (192) per object (random values: select reads numbers, not pixels). The
reference, measured in the same run, is reading the model's probabilities and embeddings from the store (what any
strategy must do first): "× read" is a strategy's time over it.

    OMP_NUM_THREADS=2 .venv/bin/python bench/select_speed.py [--objects 100000] [--budget 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
V2_ROIS = 19


def predict_all(store, model_path: Path, classes: list[str], dim: int) -> None:
    """A prediction with an embedding for every object this model has not predicted, through the store writer."""
    from plankton_cli.infer.predict import already_predicted
    from plankton_cli.infer.predictions import StoreWriter
    from plankton_cli.publish.summarize import model_info
    from plankton_cli.core.writers import Prediction, PredictionRun

    info = model_info(model_path)
    done = already_predicted(store, info.model_hash)
    rows = [r for r in store.dataset("objects").to_table(columns=["object_id", "sample_id", "instrument"]).to_pylist()
            if r["object_id"] not in done]
    if not rows:
        return
    rng = np.random.default_rng(0)
    run = PredictionRun(model_id=info.model_id, model_hash=info.model_hash, classes=classes, thresholds=None,
                        classifier_name="bench", options={"store": str(store.root)})
    session = StoreWriter().open(store.root, run)
    centres = rng.normal(size=(len(classes), dim)).astype(np.float32)
    for start in range(0, len(rows), 4096):
        batch = []
        for row in rows[start:start + 4096]:
            p = rng.dirichlet(np.ones(len(classes)) * 0.3).astype(np.float32)
            best = int(p.argmax())
            embedding = centres[best] + rng.normal(size=dim).astype(np.float32)
            batch.append(Prediction(row["object_id"], p, classes[best], classes[best], sample_id=row["sample_id"],
                                    instrument=row["instrument"], embedding=embedding))
        session.write(batch)
    session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=192, help="embedding width (ViT-Ti: 192)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/plankton-bench-select"))
    parser.add_argument("--strategies", nargs="+", default=["margin", "entropy", "coreset", "typiclust", "random"])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO / "bench"))
    from summarize import copy_bins  # bench/summarize.py: the V2 bin under new bin ids

    from plankton_cli.infer.select import select, stored_predictions, candidate_ids
    from plankton_cli.ingest import ingest
    from plankton_cli.store import Store
    from plankton_cli.store.layout import checksum
    from test_predict import PADDING, tiny_model

    classes = [f"class_{i:02d}" for i in range(20)]
    work = args.work
    bins = work / "bins"
    bins.mkdir(parents=True, exist_ok=True)
    n_bins = -(-args.objects // V2_ROIS)
    source = REPO / "tests" / "data" / "ifcb" / "pyifcb-testdata" / "white" / "D2013" / "D201305" / "D20130526"
    have = len(list(bins.glob("*.roi")))
    if have < n_bins:
        copy_bins(source, bins, have, n_bins - have)
    model = work / "model" / "fold-0" / "model.safetensors"
    if not model.exists():
        tiny_model(model.parent, classes, PADDING)
    store = Store(work / "store")
    started = time.perf_counter()
    ingest(store, [bins])
    predict_all(store, model, classes, args.dim)
    print(f"store ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    t0 = time.perf_counter()
    ids = candidate_ids(store, ["none", "predicted"])
    pool = stored_predictions(store, checksum(model), ids, embeddings=True)
    t_read = time.perf_counter() - t0
    assert pool.embeddings is not None
    print(f"{len(pool.ids):,} candidates, {len(classes)} classes, embeddings {pool.embeddings.shape[1]}: reading "
          f"them takes {t_read:.2f} s (the reference)")
    print("| strategy | budget | seconds | × read |\n|---|---|---|---|")
    for strategy in args.strategies:
        t0 = time.perf_counter()
        summary = select(model, store, budget=args.budget, strategy=strategy, out_dir=work / "out" / strategy)
        seconds = time.perf_counter() - t0
        assert summary.selected == args.budget and summary.predicted_now == 0
        print(f"| {strategy} | {args.budget} | {seconds:.1f} | {seconds / t_read:.1f} |", flush=True)


if __name__ == "__main__":
    main()
