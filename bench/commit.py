"""What the commit protocol costs: the time ingest spends checksumming and flushing committed files vs the whole
ingest, on the same 5,000-ROI IFCB bin as `bench/ingest.py`, in this process.

Every committed file is read back once for its checksum (`committed.json`, verified by `plankton check`) and
fsynced before the journal. Goal: both together well under 10 % of an ingest.

    python bench/commit.py [--rois 5000] [--repeat 3]
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


if __name__ == "__main__":
    main()
