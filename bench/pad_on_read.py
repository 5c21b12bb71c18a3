"""Pad on read vs stored padded pixels (issue 10, item 7): is a `padded` dataset worth its disk space?

    .venv/bin/python bench/pad_on_read.py [--images DIR] [--workers 0 1] [--resize 256 --crop 224]

The padded dataset is ~2x the originals, but padding is deterministic and cheap. This times one training epoch
of the same images three ways, in the same run:

* ``imagefolder``: torchvision ``ImageFolder`` over the padded squares as PNG files (the reference, as in
  bench/loader.py);
* ``stored``: ``StoreDataset`` over the padded squares as `plankton pad` stores them (uncompressed PNG) +
  ``TrainTransform`` (today's training path);
* ``pad-on-read``: ``StoreDataset`` over the original images; each worker decodes, pads with
  ``pad_to_square`` (the same function `plankton pad` and predict use), then ``TrainTransform``.

The issue's rule: keep only the pad parameters (drop the stored pixels) if pad-on-read stays >= 1.5x ImageFolder.
The padded dataset's and the originals' bytes are printed too. Seeds: `plankton pad` seeds the pad noise with the
object id; here the transform sees only the bytes, so it looks the id up by a hash of them (a few
microseconds; identical files share one; the padding costs the same).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from loader import DEFAULT_IMAGES, IMAGE_TYPE, time_epoch
from plankton_cli.data import StoreDataLoader, StoreDataset, TrainTransform
from plankton_cli.data.transforms import torchvision_train_transform
from plankton_cli.square_pad import pad_to_square
from plankton_cli.store.images import decode, encode_png


def write_dataset(images: list[tuple[str, str, bytes]], dataset_dir: Path, rows_per_group: int) -> int:
    """(object_id, label, encoded bytes) as a store-like Parquet dataset; returns the file's size in bytes."""
    folder = dataset_dir / "instrument=bench"
    folder.mkdir(parents=True)
    table = pa.table({
        "object_id": [object_id for object_id, _, _ in images],
        "image": pa.array([{"bytes": data, "path": object_id} for object_id, _, data in images], IMAGE_TYPE),
        "label": [label for _, label, _ in images],
    })
    path = folder / "part-00000.parquet"
    pq.write_table(table, path, row_group_size=rows_per_group,
                   compression={"object_id": "zstd", "image": "none", "label": "zstd"}, use_dictionary=["label"])
    return path.stat().st_size


def _key(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


class PadOnRead:
    """Decode, pad to a square as `plankton pad` does, then the training transform."""

    def __init__(self, train: TrainTransform, seeds: dict[bytes, str]) -> None:
        self.train, self.seeds = train, seeds

    def __call__(self, data: bytes) -> torch.Tensor:
        padded = pad_to_square(decode(data), self.seeds[_key(data)]).image
        return self.train(Image.fromarray(padded))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of class folders of PNGs")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows-per-group", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    files = sorted(args.images.glob("*/*.png")) + sorted(args.images.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no PNG or JPEG files in class folders under {args.images}")
    torch.set_num_threads(1)  # one core per process, as in DataLoader workers
    tmp = Path(tempfile.mkdtemp(prefix="plankton-bench-"))
    try:
        originals, padded, seeds = [], [], {}
        for f in files:
            object_id, data = f"{f.parent.name}/{f.name}", f.read_bytes()
            originals.append((object_id, f.parent.name, data))
            square = pad_to_square(decode(data), object_id).image
            padded.append((object_id, f.parent.name, encode_png(square)))
            seeds[_key(data)] = object_id
            (tmp / "imagefolder" / f.parent.name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(square).save(tmp / "imagefolder" / f.parent.name / f"{f.stem}.png")
        size_original = write_dataset(originals, tmp / "objects", args.rows_per_group)
        size_padded = write_dataset(padded, tmp / "padded", args.rows_per_group)
        mean, std = 0.5, 0.25
        train = TrainTransform(args.resize, args.crop, mean, std)
        print(f"{len(files)} images from {args.images}, resize {args.resize}, crop {args.crop}, batch "
              f"{args.batch_size}; stored originals {size_original / 1e6:.1f} MB, stored padded "
              f"{size_padded / 1e6:.1f} MB ({size_padded / size_original:.2f}x)")
        print(f"{'workers':>7} {'pipeline':>12} {'img/s':>8} {'× imagefolder':>13}")
        for workers in args.workers:
            common: dict = {"batch_size": args.batch_size, "num_workers": workers}
            if workers:
                common["multiprocessing_context"] = "fork"
            pipelines = {
                "imagefolder": DataLoader(ImageFolder(tmp / "imagefolder", transform=torchvision_train_transform(
                    args.resize, args.crop, mean, std)), shuffle=True, **common),
                "stored": StoreDataLoader(StoreDataset(tmp / "padded", train), **common),
                "pad-on-read": StoreDataLoader(StoreDataset(tmp / "objects", PadOnRead(train, seeds)), **common),
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
