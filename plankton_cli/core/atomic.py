"""Writing files so that readers see the old file or the new one, never half of one (temporary name + rename)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, durable: bool = False, scratch: Path | None = None) -> Iterator[Path]:
    """A hidden temporary path beside `path` to write to; renamed onto `path` when the block succeeds, removed
    when it fails. `durable` also flushes the file and the rename to disk (for the store's own bookkeeping).
    `scratch`: a folder on the same file system to hold the temporary file instead (a writer's spool, which the
    next run removes when this one is killed; beside `path`, a killed run's temporary file would stay for good)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = (scratch or path.parent) / f".{path.name}.{uuid.uuid4().hex}.tmp"  # Parquet readers skip dot-names
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = False) -> Path:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | Path, document: Any, **dumps: Any) -> Path:
    """`document` as JSON (indented by 2 unless `dumps` says otherwise), written atomically."""
    return atomic_write_bytes(path, (json.dumps(document, **{"indent": 2, **dumps}) + "\n").encode())
