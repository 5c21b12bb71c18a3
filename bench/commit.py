"""What the commit protocol costs: the time ingest spends checksumming and flushing committed files vs the whole
ingest, on the same 5,000-ROI IFCB bin as `bench/ingest.py`, in this process; and what readers gain: finding a
dataset's files through `committed.json` vs walking its folders (what readers did before), on a store of
`--files` files.

Every committed file is read back once for its checksum (`committed.json`, verified by `plankton check`) and
fsynced before the journal. Goal: both together well under 10 % of an ingest.

    python bench/commit.py [--rois 5000] [--repeat 3] [--files 5000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from ingest import build_bin

from plankton_cli.ingest import ingest
from plankton_cli.store import Store, transaction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args()
    spent = {"checksum": 0.0, "fsync": 0.0}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    transaction.checksum = timed("checksum", transaction.checksum)
    os.fsync = timed("fsync", os.fsync)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "bins").mkdir()
        build_bin(tmp / "bins", args.rois)
        total = 0.0
        for i in range(args.repeat):
            t0 = time.perf_counter()
            ingest(Store(tmp / f"store-{i}"), [tmp / "bins"])
            total += time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (tmp / "store-0").rglob("*.parquet"))
    print(f"ingest of {args.rois} ROIs ({size / 1e6:.1f} MB stored): {total / args.repeat:.2f} s per run")
    for name, seconds in spent.items():
        print(f"  {name}: {seconds / args.repeat:.3f} s per run = {seconds / total:.1%} of ingest")
    listing(args.files, args.repeat)


def listing(n_files: int, repeat: int) -> None:
    """`layout.data_files` (the committed list) vs a folder walk, over `n_files` files in 20 partitions."""
    import json

    from plankton_cli.store import layout

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = {}
        for i in range(n_files):
            rel = f"objects/instrument=I{i % 20}/part-{i:06d}.parquet"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).touch()
            files[rel] = {"size": 0, "checksum": None}
        (root / layout.COMMITTED).write_text(json.dumps({"files": files}))
        timings = {}
        for name, fn in (("committed.json", lambda: layout.data_files(root, "objects")),
                         ("folder walk", lambda: layout.listed_files(root))):
            t0 = time.perf_counter()
            for _ in range(repeat):
                assert len(fn()) == n_files
            timings[name] = (time.perf_counter() - t0) / repeat
    listed, walked = timings["committed.json"], timings["folder walk"]
    print(f"listing {n_files} files: committed.json {listed * 1e3:.1f} ms, folder walk {walked * 1e3:.1f} ms "
          f"(walk / list = {walked / listed:.1f}x)")


if __name__ == "__main__":
    main()
