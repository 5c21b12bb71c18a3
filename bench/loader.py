"""Throughput of the store data pipeline against torchvision ImageFolder on the same images.

    .venv/bin/python bench/loader.py [--images DIR] [--workers 0 1 2] [--resize 256 --crop 224]

Writes the images (default: the UVP6 vignettes in ../shared/data) once as a Parquet store dataset
and once as PNG files in class folders, both in a temporary directory, then times one epoch of
training batches through

* ``imagefolder``: ``ImageFolder`` + torchvision v2 Resize, Grayscale, RandomResizedCrop, flips,
  ToDtype, Normalize (the usual way, and the issue's baseline);
* ``store``: ``StoreDataset`` + ``TrainTransform`` (same transform, fused resize-crop on uint8);
* ``store-gpu``: ``StoreDataset`` + ``ResizeTransform``, what workers do when the crop, flips and
  normalisation run on the accelerator (``GpuAugment``, not timed here).

Images per second per core counts the main process as the one core with 0 workers, else the workers.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from plankton_cli.prepare.data import ResizeTransform, StoreDataLoader, StoreDataset, TrainTransform
from plankton_cli.prepare.data.transforms import torchvision_train_transform

DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "images" / "uvp6-vignettes"
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def write_store(files: list[Path], dataset_dir: Path, rows_per_group: int) -> None:
    """The columns StoreDataset reads, as hive-partitioned Parquet (image column uncompressed, as the store does)."""
    folder = dataset_dir / "instrument=bench"
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "object_id": [f.relative_to(f.parents[1]).as_posix() for f in files],
            "image": pa.array([{"bytes": f.read_bytes(), "path": f.name} for f in files], IMAGE_TYPE),
            "label": [f.parent.name for f in files],
        }
    )
    pq.write_table(
        table,
        folder / "part-00000.parquet",
        row_group_size=rows_per_group,
        compression={"object_id": "zstd", "image": "none", "label": "zstd"},
        use_dictionary=["label"],
    )


def time_epoch(loader: DataLoader, repeats: int) -> float:
    """Best images/s over ``repeats`` full epochs (worker start-up included)."""
    best = 0.0
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        for batch in loader:
            images = batch["image"] if isinstance(batch, dict) else batch[0]
            count += len(images)
        best = max(best, count / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of class folders of PNGs")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows-per-group", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    files = sorted(args.images.glob("*/*.png"))
    if not files:
        raise SystemExit(f"no PNG files in class folders under {args.images}")
    torch.set_num_threads(1)  # one core per process, as in DataLoader workers
    tmp = Path(tempfile.mkdtemp(prefix="plankton-bench-"))
    try:
        folder = tmp / "imagefolder"
        for f in files:
            (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, folder / f.parent.name / f.name)
        write_store(files, tmp / "store", args.rows_per_group)
        mean, std = 0.5, 0.25  # throughput does not depend on the values
        print(f"{len(files)} images from {args.images}, resize {args.resize}, crop {args.crop}, "
              f"batch {args.batch_size}, {args.rows_per_group} rows per row group")
        print(f"{'workers':>7} {'pipeline':>12} {'img/s':>8} {'img/s/core':>10} {'× imagefolder':>13}")
        for workers in args.workers:
            common = {"batch_size": args.batch_size, "num_workers": workers}
            if workers:
                common["multiprocessing_context"] = "fork"
            pipelines = {
                "imagefolder": DataLoader(
                    ImageFolder(folder, transform=torchvision_train_transform(args.resize, args.crop, mean, std)),
                    shuffle=True, **common,
                ),
                "store": StoreDataLoader(
                    StoreDataset(tmp / "store", TrainTransform(args.resize, args.crop, mean, std)), **common
                ),
                "store-gpu": StoreDataLoader(StoreDataset(tmp / "store", ResizeTransform(args.resize)), **common),
            }
            baseline = None
            for name, loader in pipelines.items():
                rate = time_epoch(loader, args.repeats)
                baseline = baseline or rate
                print(f"{workers:>7} {name:>12} {rate:>8.0f} {rate / max(workers, 1):>10.0f} {rate / baseline:>13.2f}")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
