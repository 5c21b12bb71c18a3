"""Ingest speed: a 5,000-ROI IFCB bin into the store vs writing each ROI to its own PNG with Pillow.

The reference is what users do today (pyifcb / ifcb-analysis PNG exports). Both run in this process, pinned to
one core, on the same bin, so the ratio is meaningful on a noisy machine. Goal: ingest >= 3x the reference.

    python bench/ingest.py [--rois 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_BIN = REPO / "tests/data/ifcb/pyifcb-testdata/white/D2013/D201305/D20130526/D20130526T095207_IFCB013"


def build_bin(out_dir: Path, n_rois: int) -> Path:
    """A V2 bin of `n_rois` images made by repeating the real bin's ADC rows and ROI bytes."""
    rows = [line.split(",") for line in REAL_BIN.with_suffix(".adc").read_text().splitlines()]
    roi = REAL_BIN.with_suffix(".roi").read_bytes()
    with_image = [r for r in rows if int(r[15]) and int(r[16])]
    base = out_dir / "D20240101T000000_IFCB999"
    shutil.copy(REAL_BIN.with_suffix(".hdr"), base.with_suffix(".hdr"))
    adc_lines, chunks, offset = [], [], 0
    for i in range(n_rois):
        r = list(with_image[i % len(with_image)])
        w, h, start = int(r[15]), int(r[16]), int(r[17])
        chunks.append(roi[start:start + w * h])
        r[0], r[17] = str(i + 1), str(offset)
        offset += w * h
        adc_lines.append(",".join(r))
    base.with_suffix(".adc").write_text("\r\n".join(adc_lines) + "\r\n")
    base.with_suffix(".roi").write_bytes(b"".join(chunks))
    return base


def bench_ingest(bin_dir: Path, work: Path) -> tuple[float, int]:
    from plankton_cli.ingest import ingest
    from plankton_cli.store import Store

    store = Store(work / f"store-{time.monotonic_ns()}")
    t0 = time.perf_counter()
    summary = ingest(store, [bin_dir], fmt="ifcb")
    elapsed = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in store.files("objects"))
    assert summary.stored == summary.read, summary
    return elapsed, size


def bench_png_files(bin_dir: Path, work: Path) -> float:
    """Reference: parse the same bin, write every ROI as <roi_id>.png with Pillow's defaults."""
    from PIL import Image

    from plankton_cli.core import plugins
    from plankton_cli.core.records import ReadOptions

    reader = plugins.load("reader", "ifcb")
    out = work / f"png-{time.monotonic_ns()}"
    out.mkdir()
    t0 = time.perf_counter()
    for source in reader.discover(bin_dir, ReadOptions()):
        for rec in reader.read(source, ReadOptions()):
            Image.fromarray(rec.image).save(out / f"{rec.object_id}.png")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bin_dir = work / "bins"
        bin_dir.mkdir()
        base = build_bin(bin_dir, args.rois)
        roi_bytes = base.with_suffix(".roi").stat().st_size
        ingest_times, png_times = [], []
        for _ in range(args.repeat):  # interleaved, so both see the same machine load
            elapsed, store_bytes = bench_ingest(bin_dir, work)
            ingest_times.append(elapsed)
            png_times.append(bench_png_files(bin_dir, work))
        ingest_s, png_s = min(ingest_times), min(png_times)
    print(f"bin: {args.rois} ROIs, {roi_bytes / 1e6:.1f} MB of .roi; best of {args.repeat}, one core")
    print(f"ingest into store      {args.rois / ingest_s:8,.0f} ROI/s")
    print(f"PNG files (reference)  {args.rois / png_s:8,.0f} ROI/s")
    print(f"ratio ingest / reference: {png_s / ingest_s:.2f}x  (goal >= 3x)")
    print(f"store bytes / .roi bytes: {store_bytes / roi_bytes:.2f} (lossless PNG + metadata)")


if __name__ == "__main__":
    main()
