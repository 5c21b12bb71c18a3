"""Pad on read vs stored padded pixels (issue 10, item 7), through the real store, `plankton pad` and loader.

    .venv/bin/python bench/pad_on_read.py [--images DIR] [--workers 0 1] [--resize 256 --crop 224]

The images are ingested into a store and padded twice: `pad_dataset(store_pixels=True)` (the padded PNGs stored)
and `pad_dataset()` (the default: pad parameters only, the loader pads the originals on read). Printed, each
against a reference measured in the same run:

* disk: each padded dataset's bytes against the `objects` dataset's;
* `plankton pad`: objects/s of each mode, as a ratio to the stored-pixels run;
* one training epoch (``StoreDataset`` + ``TrainTransform``) of each mode, as a ratio to torchvision
  ``ImageFolder`` over the same padded squares as PNG files (the reference, as in bench/loader.py).

The issue's rule: keep only the pad parameters if pad-on-read stays >= 1.5x ImageFolder.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from loader import DEFAULT_IMAGES, time_epoch
from plankton_cli.prepare.data import StoreDataLoader, StoreDataset, TrainTransform
from plankton_cli.prepare.data.transforms import torchvision_train_transform
from plankton_cli.ingest import ingest
from plankton_cli.prepare.pad_store import pad_dataset
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store


def dataset_bytes(store: Store, name: str) -> int:
    return sum(f.stat().st_size for f in store.files(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of class folders of PNGs")
    parser.add_argument("--instrument", default="UVP6", help="instrument of the images (picks the crop)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(1)  # one core per process, as in DataLoader workers
    tmp = Path(tempfile.mkdtemp(prefix="plankton-bench-"))
    try:
        base = Store(tmp / "base")
        ingest(base, [args.images], options=ReadOptions(instrument=args.instrument))
        stores = {mode: Store(shutil.copytree(base.root, tmp / mode)) for mode in ("stored", "on-read")}
        pad_rate = {}
        for mode, store in stores.items():
            started = time.perf_counter()
            summary = pad_dataset(store, store_pixels=mode == "stored")
            pad_rate[mode] = summary.padded / (time.perf_counter() - started)
        # The reference: the padded squares as PNG files in class folders.
        folder = tmp / "imagefolder"
        for sample in StoreDataset(stores["on-read"].root / "padded", lambda image: image, shuffle=False):
            name = Path(sample["object_id"])  # <collection>/<class>/<file>
            (folder / name.parent.name).mkdir(parents=True, exist_ok=True)
            sample["image"].save((folder / name.parent.name / name.name).with_suffix(".png"))

        objects = dataset_bytes(base, "objects")
        print(f"{summary.read} images from {args.images}; objects {objects / 1e6:.1f} MB")
        print(f"{'mode':>8} {'padded MB':>9} {'× objects':>9} {'pad obj/s':>9} {'× stored':>8}")
        for mode, store in stores.items():
            size = dataset_bytes(store, "padded")
            print(f"{mode:>8} {size / 1e6:>9.1f} {size / objects:>9.2f} {pad_rate[mode]:>9.0f} "
                  f"{pad_rate[mode] / pad_rate['stored']:>8.2f}")

        train = TrainTransform(args.resize, args.crop, 0.5, 0.25)
        print(f"\none training epoch, resize {args.resize}, crop {args.crop}, batch {args.batch_size}")
        print(f"{'workers':>7} {'pipeline':>12} {'img/s':>8} {'× imagefolder':>13}")
        for workers in args.workers:
            common: dict = {"batch_size": args.batch_size, "num_workers": workers}
            if workers:
                common["multiprocessing_context"] = "fork"
            pipelines = {
                "imagefolder": DataLoader(ImageFolder(folder, transform=torchvision_train_transform(
                    args.resize, args.crop, 0.5, 0.25)), shuffle=True, **common),
                "stored": StoreDataLoader(StoreDataset(stores["stored"].root / "padded", train), **common),
                "pad-on-read": StoreDataLoader(StoreDataset(stores["on-read"].root / "padded", train), **common),
            }
            baseline = None
            for name, loader in pipelines.items():
                rate = time_epoch(loader, args.repeats)
                baseline = baseline or rate
                print(f"{workers:>7} {name:>12} {rate:>8.0f} {rate / baseline:>13.2f}")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
