"""PyTorch datasets over a store dataset: a directory of hive-partitioned Parquet files.

Sharding (one epoch, ``shuffle=True``)::

    row groups (file, row_group, rows) listed from the footers, in path order
      → permuted with (seed, epoch), the same permutation on every rank
      → dealt to ranks, each to the rank with the fewest samples so far
      → per rank: windows of ``shuffle_window`` row groups, rows shuffled inside each window
      → the rank's *stream*, padded (repeat from its start) or cut to the same length on every rank
      → DataLoader worker ``w`` of ``W`` produces the stream's batches ``w, w + W, w + 2W, ...``

A DataLoader with ``in_order=True`` (its default) collects worker batches round-robin, so what a
rank trains on is exactly its stream, whatever ``num_workers`` is. That makes the state of an epoch
two numbers, (epoch, samples seen), and resuming exact even with a different number of workers.
Each worker reads every row group its batches touch (cheap: image bytes are a few MB per group,
memory-mapped) but decodes only its own rows.

Equal per-rank counts keep DDP collectives in step. ``drop_last=False`` (the default) pads short
ranks by repeating samples from the start of their own stream, so every sample is seen at least once;
``drop_last=True`` cuts every rank to the shortest one, so every sample is seen at most once.
When every rank receives the same number of rows (e.g. equal row groups and ranks dividing their
count), each sample is seen exactly once either way.

``shuffle=False`` is the predict/eval mode: stored order, ranks take contiguous slices, no padding,
every selected row exactly once (ranks may then differ in length: do not use it for DDP training).

Resume with Lightning (pytorch-lightning 2.6): ``FitLoop.on_save_checkpoint`` stores
``state_dict()`` of every *DataLoader* (not dataset) that has ``state_dict``/``load_state_dict``
(``CombinedLoader._state_dicts``), and ``FitLoop.setup_data`` calls ``load_state_dict`` before the
first ``iter()``. Lightning never calls ``set_epoch`` on an IterableDataset (``_set_sampler_epoch``
only looks at samplers). Hence :class:`StoreDataLoader`: it counts the samples it has handed out,
advances the epoch itself on each new ``iter()``, and reports a ``len()`` so that Lightning does not
prefetch a batch ahead of the one being trained on (its ``_PrefetchDataFetcher`` skips prefetching
for sized loaders), which keeps the count equal to the samples actually trained on.
"""

from __future__ import annotations

import heapq
import os
import random
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from plankton_cli.prepare.data.pad_on_read import PadOnRead, pad_on_read_plan
from plankton_cli.store.images import encode_png
from plankton_cli.store.layout import dataset_files, read_listed
from plankton_cli.store.layout import partition_values as layout_partition_values

UNLABELLED = -1


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group, the unit of reading and of sharding."""

    path: str
    index: int
    rows: np.ndarray  # selected row offsets inside the group, ascending
    dataset_dir: str = ""  # the dataset `path` belongs to (the source of a padded dataset padded on read)
    pad_on_read: bool = False  # its images are padded on read (`pad_on_read.py`)

    @property
    def n_rows(self) -> int:
        return len(self.rows)


def list_data_files(dataset_dir: str | Path) -> list[Path]:
    """Parquet files of a store dataset in stable (path) order: the store's committed files (``store/layout.py``)."""
    return dataset_files(dataset_dir)


def partition_values(path: Path, dataset_dir: str | Path) -> dict[str, str]:
    """Decoded hive partition values (``key=value`` folders) between ``dataset_dir`` and ``path``."""
    return layout_partition_values(path, dataset_dir)


def list_classes(dataset_dir: str | Path) -> list[str]:
    """Sorted distinct non-null labels of a store dataset."""
    def read(files: list[Path]) -> list[str]:
        labels: set[str] = set()
        for path in files:
            with pq.ParquetFile(path) as file:
                if "label" in file.schema_arrow.names:
                    column = file.read(columns=["label"]).column("label").cast(pa.string())
                    labels.update(v for v in pc.unique(column).to_pylist() if v is not None)
        return sorted(labels)

    return read_listed(dataset_dir, read)  # again over a fresh list if a commit deletes a file meanwhile


def list_row_groups(
    dataset_dir: str | Path,
    *,
    instruments: Collection[str] | None = None,
    object_ids: Collection[str] | None = None,
    labelled_only: bool = False,
    classes: Collection[str] | None = None,
) -> list[RowGroup]:
    """Row groups of a store dataset with the rows that pass the filters; empty groups are left out.

    Rows without image bytes are always left out. Without row filters only the footers are read.
    ``labelled_only`` keeps rows with a label, and with ``classes`` only rows whose label is one of
    them. ``instruments`` uses the hive partition when there is one, else the ``instrument`` column.
    A padded dataset that pads on read lists its source's row groups for those rows (``pad_on_read``):
    the images, labels and metadata are read from the source.
    """
    return image_row_groups(dataset_dir, instruments=instruments, object_ids=object_ids,
                            labelled_only=labelled_only, classes=classes)[0]


def image_row_groups(
    dataset_dir: str | Path,
    *,
    instruments: Collection[str] | None = None,
    object_ids: Collection[str] | None = None,
    labelled_only: bool = False,
    classes: Collection[str] | None = None,
) -> tuple[list[RowGroup], PadOnRead | None]:
    """``list_row_groups`` and, for a dataset that pads on read, how to pad its ``pad_on_read`` groups' images
    (read once, for readers of the pixels)."""
    groups = _list_row_groups(dataset_dir, instruments, object_ids, labelled_only, classes)
    plan = pad_on_read_plan(dataset_dir)
    if plan is not None:
        ids = plan.params.keys() if object_ids is None else set(object_ids) & plan.params.keys()
        groups += [RowGroup(g.path, g.index, g.rows, g.dataset_dir, pad_on_read=True)
                   for g in _list_row_groups(plan.source_dir, instruments, ids, labelled_only, classes)]
    return groups, plan


def _list_row_groups(
    dataset_dir: str | Path,
    instruments: Collection[str] | None,
    object_ids: Collection[str] | None,
    labelled_only: bool,
    classes: Collection[str] | None,
) -> list[RowGroup]:
    def values(items: Collection[str] | None) -> pa.Array | None:
        return pa.array(sorted(set(items)), pa.string()) if items is not None else None

    wanted_instruments = set(instruments) if instruments is not None else None
    id_values, class_values = values(object_ids), values(classes) if labelled_only else None

    def read(files: list[Path]) -> list[RowGroup]:
        groups: list[RowGroup] = []
        for path in files:
            instrument = partition_values(path, dataset_dir).get("instrument")
            if wanted_instruments is not None and instrument is not None and instrument not in wanted_instruments:
                continue
            with pq.ParquetFile(path) as file:
                sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
                row_instruments = values(instruments) if instrument is None else None  # no partition folder
                mask = _row_mask(path, file, row_instruments, id_values, labelled_only, class_values)
                start = 0
                for index, size in enumerate(sizes):
                    keep = np.ones(size, dtype=bool) if mask is None else mask[start : start + size]
                    start += size
                    if _image_null_count(file, index):
                        keep = keep & _image_present(file, index)
                    if keep.any():
                        groups.append(RowGroup(str(path), index, np.flatnonzero(keep), str(dataset_dir)))
        return groups

    return read_listed(dataset_dir, read)  # again over a fresh list if a commit deletes a file meanwhile


def _image_null_count(file: pq.ParquetFile, index: int) -> int:
    """Rows without image bytes in a row group, from the footer statistics (0 when not recorded)."""
    group = file.metadata.row_group(index)
    for j in range(group.num_columns):
        column = group.column(j)
        if column.path_in_schema in ("image.bytes", "image"):
            stats = column.statistics
            return stats.null_count if stats is not None and stats.has_null_count else 0
    return 0


def _image_present(file: pq.ParquetFile, index: int) -> np.ndarray:
    images = file.read_row_group(index, columns=["image"], use_threads=False).column("image").combine_chunks()
    present = pc.is_valid(images)
    if pa.types.is_struct(images.type):
        present = pc.and_(present, pc.is_valid(images.field("bytes")))
    return pc.fill_null(present, False).to_numpy(zero_copy_only=False)


def _row_mask(
    path: Path,
    file: pq.ParquetFile,
    instruments: pa.Array | None,
    object_ids: pa.Array | None,
    labelled_only: bool,
    classes: pa.Array | None,
) -> np.ndarray | None:
    """Boolean mask over the file's rows, or None when no row filter applies.

    ``instruments``, ``object_ids`` and ``classes`` are string arrays of the accepted values.
    """
    columns = []
    if instruments is not None:
        columns.append("instrument")
    if object_ids is not None:
        columns.append("object_id")
    if labelled_only:
        columns.append("label")
    if not columns:
        return None
    names = file.schema_arrow.names
    if missing := [c for c in columns if c not in names]:
        raise ValueError(f"{path} has no column(s) {missing} needed by the filters")
    table = file.read(columns=columns, use_threads=False)
    mask = np.ones(table.num_rows, dtype=bool)
    if instruments is not None:
        column = table.column("instrument").cast(pa.string())
        mask &= pc.is_in(column, value_set=instruments).to_numpy(zero_copy_only=False)
    if object_ids is not None:
        mask &= pc.is_in(table.column("object_id"), value_set=object_ids).to_numpy(zero_copy_only=False)
    if labelled_only:
        labels = table.column("label").cast(pa.string())
        keep = pc.is_valid(labels) if classes is None else pc.is_in(labels, value_set=classes)
        mask &= pc.fill_null(keep, False).to_numpy(zero_copy_only=False)
    return mask


class StoreDataset(IterableDataset):
    """Shuffled, rank- and worker-sharded, resumable samples from a store dataset.

    Yields dicts ``{"image": transform(bytes), "label": int, "object_id": str}``; ``label`` is the
    index in ``classes`` (-1 when unlabelled or not in ``classes``; always -1 without ``classes``).
    ``transform=None`` yields the encoded image bytes (a PNG when padded on read); a transform gets the bytes, or
    the padded Pillow image when padded on read.

    ``batch_size`` must equal the DataLoader's batch size for batches to come out in stream order
    (:class:`StoreDataLoader` sets it). Rank and world size come from ``torch.distributed`` when it is
    initialised, else from the arguments. Call ``set_epoch`` before each ``iter()`` (or use
    :class:`StoreDataLoader`, which does it). For predict/eval use ``shuffle=False`` with a
    :class:`StoreDataLoader` too, so that batches keep the stored order.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        transform: Callable[[bytes], Any] | None = None,
        *,
        classes: list[str] | None = None,
        labelled_only: bool = False,
        instruments: Collection[str] | None = None,
        object_ids: Collection[str] | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        shuffle_window: int = 4,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.dataset_dir = Path(dataset_dir)
        self.transform = transform
        self.classes = list(classes) if classes is not None else None
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.shuffle_window = max(1, shuffle_window) if shuffle else 1
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.row_groups, self._pad = image_row_groups(
            dataset_dir, instruments=instruments, object_ids=object_ids, labelled_only=labelled_only, classes=classes
        )
        self._require_a_row_group_per_rank()
        self._label_index = {name: i for i, name in enumerate(self.classes or [])}
        self._image_column = self._find_image_column()
        # (epoch, first sample) in shared memory, so persistent workers see set_epoch/load_state_dict.
        self._position = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._seen_here = 0  # samples yielded in this process since the position was set
        self._files: dict[str, pq.ParquetFile] = {}
        self._files_pid = -1

    # --- epoch and resume -------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start the next ``iter()`` at the beginning of ``epoch``."""
        self._set_position(epoch, 0)

    def state_dict(self) -> dict[str, int]:
        """Epoch and global samples seen, counted in this process (exact when iterated without workers)."""
        epoch, start = (int(v) for v in self._position)
        seen = start + self._seen_here
        if seen >= len(self):
            return {"epoch": epoch + 1, "samples_seen": 0}
        return {"epoch": epoch, "samples_seen": seen * self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a ``state_dict``. Exact with the same world size (any number of workers);
        with another world size it resumes at the same fraction of the epoch."""
        self._resolve_distributed()
        self._set_position(state["epoch"], state["samples_seen"] // self.world_size)

    def _set_position(self, epoch: int, start: int) -> None:
        self._position[0], self._position[1] = epoch, start
        self._seen_here = 0

    # --- the plan ---------------------------------------------------------------------------------

    def _require_a_row_group_per_rank(self) -> None:
        """Shuffled training deals whole row groups to ranks. Checked when the dataset is made, where every rank
        (and, before Lightning starts the others, the launching process) fails alike; a rank failing alone at its
        first batch would leave the others to die in a collective with an error that names nothing."""
        if self.shuffle and self.row_groups and len(self.row_groups) < self.world_size:
            raise ValueError(
                f"{self.dataset_dir}: {len(self.row_groups)} row group(s) cannot feed {self.world_size} training "
                "processes (--devices × --num-nodes), each needs one: train on fewer devices, or ingest more images "
                "first (every ingest writes at least one row group)"
            )

    def _resolve_distributed(self) -> None:
        if get_worker_info() is None and dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def _rank_units(self, epoch: int) -> list[list[int]]:
        """Row-group indices of each rank for ``epoch``; identical on every rank."""
        counts = [g.n_rows for g in self.row_groups]
        if not self.shuffle:
            # Contiguous slices of about equal sample counts, so rank outputs concatenate in order.
            bounds = np.cumsum([0] + counts)
            owner = np.minimum((bounds[:-1] * self.world_size) // max(bounds[-1], 1), self.world_size - 1)
            return [np.flatnonzero(owner == r).tolist() for r in range(self.world_size)]
        order = np.random.default_rng([self.seed, epoch]).permutation(len(counts))
        units: list[list[int]] = [[] for _ in range(self.world_size)]
        least_loaded = [(0, r) for r in range(self.world_size)]  # heap of (samples, rank)
        for unit in order.tolist():
            load, rank = heapq.heappop(least_loaded)
            units[rank].append(unit)
            heapq.heappush(least_loaded, (load + counts[unit], rank))
        return units

    def _rank_length(self, units: list[list[int]], rank: int) -> int:
        sizes = [sum(self.row_groups[u].n_rows for u in rank_units) for rank_units in units]
        if not self.shuffle:
            return sizes[rank]
        return min(sizes) if self.drop_last else max(sizes)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (the same on every rank when shuffling)."""
        self._resolve_distributed()
        return self._rank_length(self._rank_units(0), self.rank)  # row counts do not depend on the epoch

    def _windows(self, epoch: int, units: list[int]) -> Iterator[np.ndarray]:
        """The rank's stream, one window at a time, as (row_group, row) pairs of shape (n, 2)."""
        for w, first in enumerate(range(0, len(units), self.shuffle_window)):
            pairs = np.concatenate(
                [
                    np.stack([np.full(self.row_groups[u].n_rows, u), self.row_groups[u].rows], axis=1)
                    for u in units[first : first + self.shuffle_window]
                ]
            )
            if self.shuffle:
                pairs = pairs[np.random.default_rng([self.seed, epoch, self.rank, w]).permutation(len(pairs))]
            yield pairs

    # --- iteration --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._resolve_distributed()
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        epoch, start = (int(v) for v in self._position)
        self._seen_here = 0
        # Planned now, not at the first next(): the position must be the one set before iter().
        units = self._rank_units(epoch)
        self._require_a_row_group_per_rank()
        length = self._rank_length(units, self.rank)
        if self.shuffle:
            # Augmentation draws from `random` in this worker: seed it by position, not by history, so an epoch
            # sees the same crops and flips whether the run was resumed or not, and with persistent workers.
            random.seed(f"{self.seed}:{epoch}:{self.rank}:{worker_id}:{start}")
        return self._generate(epoch, units[self.rank], start, length, worker_id, num_workers)

    def _generate(
        self, epoch: int, units: list[int], start: int, length: int, worker_id: int, num_workers: int
    ) -> Iterator[dict[str, Any]]:
        stream_length = sum(self.row_groups[u].n_rows for u in units)
        offset = 0  # stream position of the current window; passes beyond the first are the padding
        while offset < length:
            for pairs in self._windows(epoch, units):
                positions = offset + np.arange(len(pairs))
                mine = (positions >= start) & (positions < length)
                mine &= ((positions - start) // self.batch_size) % num_workers == worker_id
                if mine.any():
                    for sample in self._load(pairs[mine]):
                        self._seen_here += 1
                        yield sample
                offset += len(pairs)
                if offset >= length:
                    return
            if stream_length == 0:
                return

    def _load(self, pairs: np.ndarray) -> Iterator[dict[str, Any]]:
        """Read the row groups that ``pairs`` touch once, then decode the rows in ``pairs`` order."""
        tables = {int(u): self._read(int(u)) for u in np.unique(pairs[:, 0])}
        for unit, row in pairs.tolist():
            images, object_ids, labels = tables[unit]
            data = images[row].as_py()
            if self.row_groups[unit].pad_on_read:
                assert self._pad is not None
                square = self._pad.image(object_ids[row], data)
                data = square if self.transform is not None else encode_png(np.asarray(square))
            label = labels[row] if labels is not None else None
            yield {
                "image": self.transform(data) if self.transform is not None else data,
                "label": self._label_index.get(label, UNLABELLED) if label is not None else UNLABELLED,
                "object_id": object_ids[row],
            }

    def _read(self, unit: int) -> tuple[pa.Array, list[str], list[str | None] | None]:
        group = self.row_groups[unit]
        file = self._file(group.path)
        columns = [self._image_column, "object_id"]
        if self.classes is not None and "label" in file.schema_arrow.names:
            columns.append("label")
        table = file.read_row_group(group.index, columns=columns, use_threads=False)
        images = table.column("image").combine_chunks()
        if pa.types.is_struct(images.type):
            images = images.field("bytes")
        labels = table.column("label").cast(pa.string()).to_pylist() if "label" in table.column_names else None
        return images, table.column("object_id").to_pylist(), labels

    def _file(self, path: str) -> pq.ParquetFile:
        # Opened lazily per process: handles inherited through fork are never used.
        if self._files_pid != os.getpid():
            self._files, self._files_pid = {}, os.getpid()
        if path not in self._files:
            self._files[path] = pq.ParquetFile(path, memory_map=True)
        return self._files[path]

    def _find_image_column(self) -> str:
        if not self.row_groups:
            return "image"
        image_type = pq.read_schema(self.row_groups[0].path).field("image").type
        return "image.bytes" if pa.types.is_struct(image_type) else "image"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"], state["_files_pid"] = {}, -1
        return state


class StoreDataLoader(DataLoader):
    """DataLoader for a shuffled :class:`StoreDataset` that Lightning can checkpoint and resume.

    Each ``iter()`` starts the next epoch (the first one ``0``), unless ``set_epoch`` or
    ``load_state_dict`` set the position since the last ``iter()``. ``state_dict()`` is
    ``{"epoch", "samples_seen"}`` with ``samples_seen`` counted over all ranks.
    """

    def __init__(self, dataset: StoreDataset, batch_size: int = 1, **kwargs: Any) -> None:
        dataset.batch_size = batch_size  # workers deal out whole batches of the rank's stream
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self._epoch, self._seen, self._fresh = 0, 0, True
        # Lightning tells samplers the epoch it is starting (`_set_sampler_epoch`, also when it resumes from an
        # epoch-end checkpoint without restoring loader states); an IterableDataset's loader has only Torch's
        # placeholder sampler, so it forwards the call here.
        self.sampler.set_epoch = self.set_epoch  # type: ignore[union-attr]

    def set_epoch(self, epoch: int) -> None:
        """Start the next ``iter()`` at ``epoch``: at its beginning, or where ``load_state_dict`` put it."""
        if epoch != self._epoch or not self._fresh:
            self._epoch, self._seen = epoch, 0
        self._fresh = True

    def state_dict(self) -> dict[str, int]:
        dataset: StoreDataset = self.dataset  # type: ignore[assignment]
        if self._seen >= len(dataset):
            return {"epoch": self._epoch + 1, "samples_seen": 0}
        return {"epoch": self._epoch, "samples_seen": self._seen * dataset.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        dataset: StoreDataset = self.dataset  # type: ignore[assignment]
        dataset._resolve_distributed()
        self._epoch, self._seen, self._fresh = state["epoch"], state["samples_seen"] // dataset.world_size, True

    def __iter__(self) -> Iterator[Any]:
        # Lazy: Lightning opens the iterator before it announces the epoch (`set_epoch`), so the position is
        # taken at the first batch; an iterator never started ends no epoch.
        dataset: StoreDataset = self.dataset  # type: ignore[assignment]
        if not self._fresh:
            self._epoch, self._seen = self._epoch + 1, 0
        self._fresh = False
        dataset._set_position(self._epoch, self._seen)  # before the workers start, so they start from it
        yield from self._count(super().__iter__(), len(dataset))

    def _count(self, batches: Iterator[Any], length: int) -> Iterator[Any]:
        for batch in batches:
            # Batches follow the stream in order, so their sizes are known without inspecting them.
            self._seen += min(self.batch_size or 1, length - self._seen)
            yield batch
