"""Reads planktonclas-style image lists: `dataset_files/classes.txt` + `{train,val,test}.txt`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from plankton_cli.records import ReadOptions, Record, Rejection, Source

SPLITS = ("train", "val", "test")


class ImageListReader:
    name = "image-list"
    description = "planktonclas image lists (dataset_files/classes.txt + train/val/test.txt)"
    sniff_priority = 20  # more specific than a plain folder of class folders

    def sniff(self, path: Path) -> bool:
        return (Path(path) / "dataset_files" / "classes.txt").is_file()

    def discover(self, path: Path, options: ReadOptions) -> Iterator[Source]:
        lists = Path(path).absolute() / "dataset_files"
        for split in SPLITS:
            if (lists / f"{split}.txt").is_file():
                yield Source(key=str(lists / f"{split}.txt"), files=(lists / f"{split}.txt", lists / "classes.txt"),
                             reader=self.name)

    def read(self, source: Source, options: ReadOptions) -> Iterator[Record | Rejection]:
        listing, classes_file = source.files
        classes = classes_file.read_text().split()
        root = listing.parent.parent
        images = next((d for d in root.iterdir() if d.is_dir() and d.name != "dataset_files"), root)
        for row, line in enumerate(listing.read_text().splitlines(), start=1):
            parts = line.rsplit(maxsplit=1)
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= len(classes):
                yield Rejection(str(listing), row, f"bad line {line!r}: expected '<path> <class index>'")
                continue
            image = images / parts[0]
            if not image.is_file():
                yield Rejection(str(listing), row, f"missing image: {image}")
                continue
            yield Record(
                object_id=parts[0],
                image=image.read_bytes(),
                source_file=str(listing),
                source_row=row,
                label=classes[int(parts[1])],
                label_status="validated",
                instrument=options.instrument,
                metadata={"split": listing.stem, "image_path": parts[0]},
            )
