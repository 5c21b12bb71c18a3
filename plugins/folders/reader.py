"""Folders of image files: one folder per class, optionally under one folder per instrument.

Layouts read:

- `root/<class>/*.png|jpg|…` (the usual "ImageFolder" layout, e.g. uvpec's `DisplayName__EcotaxaID` folders);
- `root/<instrument>/<class>/…` (DAPlankton: `IFCB/`, `CS/`, `FC/`, …), detected when the first folder below
  the root is an EcoTaxa instrument name or a DAPlankton alias;
- any deeper nesting: the class is always the image's own folder, the folders above it are its `sample_id`.

An image that is a symlink to a file outside the folder given is rejected, like a `..` path in a bundle: the
folder is the source, and nothing outside it is read or stored (symlinked folders are not descended into).

Object ids are `<collection>/<path relative to the folder given>`, the collection being `--collection NAME`
or the folder's own name, so `A/Copepoda/img_0001.png` and `B/Copepoda/img_0001.png` are two objects.

This is the generic fallback reader (`sniff_priority` 0): more specific formats are asked first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath


from plankton_cli.core.records import ReadOptions, Record, Rejection, Source
from plankton_cli.core.instruments import canonical_instrument

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif"})
LABEL_SOURCES = ("folder", "none")
_UVPEC_FOLDER = re.compile(r"^(?P<name>.+)__(?P<id>\d+)$")  # uvpec / EcoTaxa DOI: `DisplayName__EcotaxaID`


def is_image_name(name: str) -> bool:
    """True for a visible file whose extension is an image format (AppleDouble `._x.png` files are not)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def collection_name(options: ReadOptions, folder: Path) -> str:
    """What qualifies the ids of the images under `folder`: `--collection`, else the folder's own name."""
    return options.collection or folder.name or "root"


def _visible_dirs(entries: list[os.DirEntry]) -> list[os.DirEntry]:
    return [e for e in entries if e.is_dir() and not e.name.startswith(".") and e.name != "__MACOSX"]


def _has_images(folder: Path, depth: int) -> bool:
    """True when `folder` or a folder at most `depth` levels below it holds an image file."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    if any(e.is_file() and is_image_name(e.name) for e in entries):
        return True
    return depth > 0 and any(_has_images(Path(e.path), depth - 1) for e in _visible_dirs(entries))


class ImageFolderReader:
    """Reads `root/[<instrument>/]<class>/<image>`; one `Source` (and one `Record`) per image file."""

    name = "folders"
    description = "Folders of images, one folder per class (optionally root/<instrument>/<class>/)"
    sniff_priority = 0

    def sniff(self, path: Path) -> bool:
        path = Path(path)
        if path.is_file():
            return is_image_name(path.name)
        return path.is_dir() and _has_images(path, depth=2)

    def discover(self, path: Path, options: ReadOptions) -> Iterator[Source]:
        if options.label_from not in LABEL_SOURCES:
            raise ValueError(f"label_from must be one of {', '.join(LABEL_SOURCES)}, not {options.label_from!r}")
        root = Path(path).absolute()
        if root.is_file():
            if is_image_name(root.name):
                collection = collection_name(options, root.parent)
                # a file named on the command line is read wherever a symlink points: the user chose it
                yield Source(key=str(root), files=(root,), reader=self.name, extra=(collection, root.name, None))
            return
        collection = collection_name(options, root)
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
            for name in sorted(files):
                if is_image_name(name):
                    file = Path(folder, name)
                    relative = file.relative_to(root).as_posix()
                    yield Source(key=str(file), files=(file,), reader=self.name, extra=(collection, relative, root))

    def read(self, source: Source, options: ReadOptions) -> Iterator[Record | Rejection]:
        file = source.files[0]
        # (collection, the path relative to the folder given to discover, that folder or None for a file given)
        collection, relative, root = source.extra or (collection_name(options, file.parent), file.name, None)
        object_id = f"{collection}/{relative}"
        if root is not None and file.is_symlink():
            target = file.resolve()
            if not target.is_relative_to(root.resolve()):
                yield Rejection(str(file), None, f"symlink escapes the folder: points to {target}, outside {root}",
                                object_id)
                return
        try:
            data = file.read_bytes()
        except OSError as exc:
            yield Rejection(str(file), None, f"cannot read image file: {exc}", object_id)
            return
        if not data:
            yield Rejection(str(file), None, "empty image file (0 bytes)", object_id)
            return

        folders = PurePosixPath(relative).parts[:-1]
        record = Record(
            object_id=object_id,
            image=data,
            source_file=str(file),
            sample_id="/".join(folders[:-1]) or None,
            instrument=self._instrument(folders, options),
        )
        if options.label_from == "folder" and folders:
            record.label = folders[-1]
            record.label_status = "validated"  # someone sorted the image into this folder by hand
            match = _UVPEC_FOLDER.match(folders[-1])
            if match:
                record.metadata["ecotaxa_display_name"] = match["name"]
                record.metadata["ecotaxa_id"] = match["id"]
        yield record

    @staticmethod
    def _instrument(folders: tuple[str, ...], options: ReadOptions) -> str | None:
        if options.instrument:
            return canonical_instrument(options.instrument) or options.instrument
        # DAPlankton: `<instrument>/<class>/<image>`; a lone class folder is never taken for an instrument
        if len(folders) >= 2:
            return canonical_instrument(folders[0])
        return None
