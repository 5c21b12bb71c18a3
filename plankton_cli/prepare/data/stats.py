"""Pixel mean and standard deviation of a store dataset, for normalisation.

Computed over (a random sample of) the grayscale images after the train resize, on the 0–1 scale,
and cached in ``<dataset>/_stats.json`` (a ``_`` name, so readers skip it) together with a
fingerprint of the data files and the parameters: a rewritten dataset or other parameters
recompute, anything else reads the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from plankton_cli.core.atomic import atomic_write_json
from plankton_cli.prepare.data.dataset import image_row_groups, list_data_files
from plankton_cli.prepare.data.pad_on_read import pad_on_read_plan
from plankton_cli.prepare.data.transforms import resize_to_array

STATS_FILE = "_stats.json"


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    """BLAKE2b-128 over the data files' relative paths, sizes and modification times (those of the source too,
    for a padded dataset padded on read)."""
    root = Path(dataset_dir)
    digest = hashlib.blake2b(digest_size=16)
    plan = pad_on_read_plan(root)
    for path in list_data_files(root) + (list_data_files(plan.source_dir) if plan else []):
        stat = path.stat()
        digest.update(f"{path.relative_to(root.parent).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def compute_mean_std(
    dataset_dir: str | Path, *, resize: int = 256, max_images: int | None = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Mean and std of pixel values (0–1) over up to ``max_images`` images resized to ``resize``²."""
    groups, plan = image_row_groups(dataset_dir)
    total = sum(g.n_rows for g in groups)
    if total == 0:
        raise ValueError(f"{dataset_dir} holds no images")
    chosen = np.arange(total)
    if max_images is not None and max_images < total:
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_images, replace=False))
    # Every image has resize² pixels, so per-image sums add up to the exact pooled moments.
    pixel_sum = pixel_sq_sum = 0.0
    starts = np.cumsum([0] + [g.n_rows for g in groups])
    for i, group in enumerate(groups):
        rows = chosen[(chosen >= starts[i]) & (chosen < starts[i + 1])] - starts[i]
        if not len(rows):
            continue
        with pq.ParquetFile(group.path, memory_map=True) as file:
            table = file.read_row_group(group.index, columns=["image", "object_id"], use_threads=False)
        images = table.column("image").combine_chunks()
        if pa.types.is_struct(images.type):
            images = images.field("bytes")
        for row in group.rows[rows].tolist():  # positions among the group's selected rows -> rows of the group
            data = images[row].as_py()
            if plan is not None and group.pad_on_read:
                data = plan.image(table.column("object_id")[row].as_py(), data)
            pixels = resize_to_array(data, resize).astype(np.float64) / 255.0
            pixel_sum += pixels.sum()
            pixel_sq_sum += np.square(pixels).sum()
    n_pixels = len(chosen) * resize * resize
    mean = pixel_sum / n_pixels
    std = math.sqrt(max(pixel_sq_sum / n_pixels - mean * mean, 0.0))
    return {"mean": mean, "std": std, "n_images": int(len(chosen))}


def load_or_compute_stats(
    dataset_dir: str | Path, *, resize: int = 256, max_images: int | None = 10_000, seed: int = 0
) -> dict[str, Any]:
    """``compute_mean_std`` through the ``_stats.json`` cache; returns ``{"mean", "std", "n_images", ...}``."""
    root = Path(dataset_dir)
    cache = root / STATS_FILE
    key = {
        "fingerprint": dataset_fingerprint(root),
        "params": {"resize": resize, "max_images": max_images, "seed": seed},
    }
    if cache.exists():
        try:
            cached = json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError):
            cached = {}
        if all(cached.get(k) == v for k, v in key.items()):
            return cached
    stats = {**key, **compute_mean_std(root, resize=resize, max_images=max_images, seed=seed)}
    atomic_write_json(cache, stats)  # a concurrent reader never sees half a file
    return stats
