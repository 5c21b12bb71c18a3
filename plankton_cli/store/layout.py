"""Where the store's files are: the committed file list, data files per dataset, hive partition folders.

Every reader and writer of the store goes through here, so they can never disagree about a file or a partition
name. The truth about which files make up the store is `STORE/committed.json`, replaced atomically at each
commit (`transaction.py`): readers that use it see the store before or after a commit, never half of one, even
while a commit is being applied or after a crash in the middle of one. Plain Parquet readers (pyarrow, duckdb,
HF datasets) list the folders instead; they see the same files except during those few milliseconds.

A store written before `committed.json` existed is read by listing its folders; its first commit writes the list.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import quote, unquote

COMMITTED = "committed.json"
MANIFEST = "manifest.parquet"

ROW_GROUP_ROWS = 256
"""Rows per row group: one random image costs 0.3–1 ms to read at 64–256 rows per group, 39 ms at 4,000
(reference/data-and-backends.md §2)."""
MAX_FILE_BYTES = 256 * 1024**2
"""A data file is rolled over (and a long run commits) at about this size."""


def hidden(name: str) -> bool:
    """Names Parquet readers skip: the store's bookkeeping (`.staging`, `.journal`, temporary files)."""
    return name.startswith((".", "_"))


def partition_dir(keys: list[str] | tuple[str, ...], row: dict) -> str:
    """Hive folder for a row, e.g. `instrument=FlowCam%20macro` (URI-encoded, as pyarrow's hive partitioning
    expects and decodes)."""
    return "/".join(f"{key}={quote(str(row[key]), safe='')}" for key in keys)


def partition_values(path: Path, dataset_dir: str | Path) -> dict[str, str]:
    """Decoded hive partition values: `instrument=FlowCam%20macro` → {"instrument": "FlowCam macro"}."""
    values = {}
    for part in Path(path).relative_to(dataset_dir).parent.parts:
        key, sep, value = part.partition("=")
        if sep:
            values[key] = unquote(value)
    return values


def checksum(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_committed(root: Path) -> dict[str, dict] | None:
    """store-relative path → {"size", "checksum"} of every committed file, or None for a store without a list."""
    try:
        return json.loads((Path(root) / COMMITTED).read_bytes())["files"]
    except FileNotFoundError:
        return None


def listed_files(root: Path) -> list[str]:
    """Store-relative paths of the data files and manifest found by listing folders (stores without a list)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [MANIFEST] if (root / MANIFEST).is_file() else []
    for top in sorted(root.iterdir()):
        if top.is_dir() and not hidden(top.name):
            found += [str(p.relative_to(root)) for p in top.rglob("*.parquet")
                      if not any(hidden(part) for part in p.relative_to(top).parts)]
    return sorted(found)


def committed_paths(root: Path) -> list[str]:
    """Store-relative paths of every file of the store's current state."""
    files = read_committed(root)
    return sorted(files) if files is not None else listed_files(root)


def data_files(root: Path, dataset: str) -> list[Path]:
    """The data files of one dataset of the store, sorted."""
    prefix = f"{dataset}/"
    return [Path(root) / rel for rel in committed_paths(root) if rel.startswith(prefix)]


def dataset_files(dataset_dir: str | Path) -> list[Path]:
    """The data files of a dataset folder (as paths under `dataset_dir`, sorted): through its store's committed
    list when it is inside a store, else by listing it (a folder of Parquet files from elsewhere)."""
    given = Path(dataset_dir)
    absolute = given.absolute()
    if (absolute.parent / COMMITTED).is_file():
        return [given / p.relative_to(absolute) for p in data_files(absolute.parent, absolute.name)]
    if not given.is_dir():
        return []
    return sorted((p for p in given.rglob("*.parquet") if not any(hidden(part) for part in p.relative_to(given).parts)),
                  key=lambda p: p.relative_to(given).as_posix())
