"""`plankton pad` as a library function: the store's `objects` dataset → cropped, square-padded `padded` dataset.

Guarantees, each tested:
- Counts add up: read = padded + skipped (already padded, or rejected before with the same settings) + rejected.
- Idempotent: a row is padded again only when its object's `content_hash` or the padding settings changed; its old
  padded row is then dropped in the same commit. Rows of objects that left `objects` are dropped too.
- Deterministic: the noise is seeded from the object id and rows are written in `objects` order, so any number
  of `workers` and any re-run write identical rows.
- Atomic and crash-safe like ingest: committed under the store lock every ~256 MB and at the end.

By default the padded pixels are not stored: a row keeps the crop and padding it got (`crop_*`, `pad_*`, and
`on-read=<source>` in `pad_settings`) and readers pad the source's pixels again on read (`data/pad_on_read.py`),
which gives the same pixels because padding is deterministic. `bench/pad_on_read.py` measured the training loader
padding on read at 1.7-2.0x an ImageFolder of padded PNGs (stored pixels: 2.7-3.2x), where stored pixels cost 6.7x
the originals' disk (issue 10's rule: keep only the parameters when the loader stays >= 1.5x ImageFolder). `store_pixels=True` keeps
the PNGs too, for reading the padded squares outside plankton (pyarrow, duckdb, Hugging Face `datasets`).

Workers pad whole row groups in forked processes (each opens the Parquet file itself); the parent is the only
writer. Torch is never imported here, so `plankton pad --help` stays fast.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, partial
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli.prepare.square_pad import (
    CYTOSENSE_BANNER_HEIGHT,
    SCALE_BAR_HEIGHT,
    CropSpec,
    contact_sheet,
    pad_to_square,
    preset_for,
)
from plankton_cli.store import Store
from plankton_cli.store.images import ImageError, decode, encode_png
from plankton_cli.store.layout import MAX_FILE_BYTES, dataset_files, dataset_name, partition_values
from plankton_cli.store.schema import load_schema
from plankton_cli.store.session import WriteSession
from plankton_cli.store.transaction import new_run_id

log = logging.getLogger("plankton.pad")

ALGORITHM_VERSION = 1
"""Bump when `square_pad.py` changes the pixels it writes: every row then counts as padded with other settings."""

PRESETS = ("auto", "none", "scale-bar", "cytosense")
"""auto: from the `instrument` column (`square_pad.preset_for`); scale-bar: look for the ZooProcess legend in every
image; cytosense: cut the 25-px banner from every image; none: crop nothing (beyond `--crop-*`)."""


@dataclass
class PadSummary:
    run: str
    store: str
    source: str
    target: str
    settings: str  # what was asked for, e.g. "preset=auto crop=0,0,0,0 size=keep"
    read: int = 0
    padded: int = 0
    skipped: int = 0  # already padded with the same content and settings
    skipped_rejected: int = 0  # rejected by an earlier run with the same content and settings
    rejected: Counter = field(default_factory=Counter)  # reason kind -> count
    removed: int = 0  # old padded rows dropped: superseded by a new padding, or their object left `objects`
    crops: Counter = field(default_factory=Counter)  # what was cropped ("scale-bar 31px", "top 25px", "none")
    crops_by_instrument: dict[str, Counter] = field(default_factory=dict)  # the same, per instrument
    scale_bar_checked: int = 0  # images in which a scale bar was looked for
    banner_checked: int = 0  # images in which a CytoSense banner was looked for (instrument unknown)

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "store": self.store,
            "source": self.source,
            "target": self.target,
            "settings": self.settings,
            "read": self.read,
            "padded": self.padded,
            "skipped": self.skipped + self.skipped_rejected,
            "skipped_already_padded": self.skipped,
            "skipped_rejected_before": self.skipped_rejected,
            "rejected": self.n_rejected,
            "rejected_by_reason": dict(self.rejected),
            "removed": self.removed,
            "crops": dict(self.crops),
            "crops_by_instrument": {name: dict(c) for name, c in sorted(self.crops_by_instrument.items())},
            "scale_bar_checked": self.scale_bar_checked,
            "banner_checked": self.banner_checked,
        }


# --- Settings ----------------------------------------------------------------------------------------------------


def crop_for(instrument: str | None, preset: str = "auto", crop: CropSpec | None = None) -> CropSpec:
    """The crop for one image: the preset's, plus the explicit `crop` (which adds to it, side by side)."""
    if preset == "auto":
        base = preset_for(instrument)
    elif preset == "none":
        base = CropSpec()
    elif preset == "scale-bar":
        base = CropSpec(scale_bar=True)
    elif preset == "cytosense":
        base = CropSpec(top=CYTOSENSE_BANNER_HEIGHT)
    else:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if crop is None:
        return base
    return CropSpec(base.top + crop.top, base.bottom + crop.bottom, base.left + crop.left, base.right + crop.right,
                    base.scale_bar or crop.scale_bar, base.banner or crop.banner)


def settings_key(crop: CropSpec, size: int | None, on_read: str | None = None) -> str:
    """What decides a row's padded pixels besides its content; stored per row as `pad_settings`.

    `on_read` names the dataset whose pixels readers pad on read (the row stores no pixels of its own)."""
    bar = ("+scale-bar" if crop.scale_bar else "") + ("+banner" if crop.banner else "")
    return (f"pad-v{ALGORITHM_VERSION} crop={crop.top},{crop.bottom},{crop.left},{crop.right}{bar} "
            f"size={size or 'keep'}" + (f" on-read={on_read}" if on_read else ""))


def parse_settings(settings: str) -> tuple[CropSpec, int | None, str | None]:
    """`settings_key`'s text → (crop asked for, size, the dataset padded on read or None)."""
    fields = dict(part.split("=", 1) for part in settings.split()[1:])
    sides, *detected = fields["crop"].split("+")
    top, bottom, left, right = (int(v) for v in sides.split(","))
    size = None if fields["size"] == "keep" else int(fields["size"])
    crop = CropSpec(top, bottom, left, right, "scale-bar" in detected, "banner" in detected)
    return crop, size, fields.get("on-read")


def padding_rules(dataset_dir: Path) -> list[str]:
    """What `plankton pad` did to each instrument of a padded dataset, as `"<instrument>: <settings_key>"` lines.

    Exported models carry these lines (`pad_settings` in model.json / encoder.json) so that `plankton predict`
    pads new images exactly as the training images were padded (`parse_padding_rule`). Empty for a dataset
    that was not padded.
    """
    import pyarrow.dataset as ds

    files = dataset_files(dataset_dir)
    if not files or "pad_settings" not in pq.read_schema(files[0]).names:
        return []
    table = ds.dataset([str(f) for f in files], format="parquet", partitioning="hive",
                       partition_base_dir=str(dataset_dir)).to_table(columns=["instrument", "pad_settings"])
    # Where the pixels live (stored, or padded on read) does not change them: models record the padding alone.
    pairs = {(str(i), s.partition(" on-read=")[0])
             for i, s in zip(table["instrument"].to_pylist(), table["pad_settings"].to_pylist()) if s}
    return sorted(f"{instrument}: {settings}" for instrument, settings in pairs)


def parse_padding_rule(rule: str) -> tuple[str, CropSpec, int | None]:
    """`"<instrument>: pad-v1 crop=t,b,l,r[+scale-bar][+banner] size=N|keep[ on-read=D]"` → (instrument, crop,
    size)."""
    instrument, _, settings = rule.rpartition(": ")
    crop, size, _ = parse_settings(settings)
    return instrument, crop, size


def crop_label(crop: CropSpec, crop_bottom: int, crop_top: int | None = None) -> str:
    """What was cropped from one image, in words; `crop_bottom`/`crop_top` are what was cut in the end (detected
    legend or banner included)."""
    parts = [f"{side} {n}px" for side, n in (("top", crop.top), ("bottom", crop.bottom), ("left", crop.left),
                                             ("right", crop.right)) if n]
    if crop_top is not None and crop_top > crop.top:
        parts.append(f"banner {crop_top - crop.top}px")
    if crop_bottom > crop.bottom:
        parts.append(f"scale-bar {crop_bottom - crop.bottom}px")
    return ", ".join(parts) or "none"


# --- Planning ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    """Rows of one row group of the source to pad; the unit of work of a worker."""

    path: str
    row_group: int
    rows: tuple[int, ...]  # offsets inside the row group, ascending
    partition: tuple[tuple[str, str], ...]  # hive values from the directory, e.g. (("instrument", "UVP6"),)


@dataclass
class _Padded:
    content_hash: str
    settings: str
    file: str  # store-relative


def _padded_index(store: Store, target: str) -> dict[str, _Padded]:
    index: dict[str, _Padded] = {}
    for path in store.files(target):
        table = pq.read_table(path, columns=["object_id", "content_hash", "pad_settings"])
        rel = str(path.relative_to(store.root))
        for oid, h, s in zip(*(table[c].to_pylist() for c in table.column_names)):
            index[oid] = _Padded(h, s, rel)
    return index


def _rejected_before(store: Store) -> dict[str, list[tuple[str, datetime]]]:
    """object_id → (reason, rejected_at) of every earlier `pad` rejection."""
    out: dict[str, list[tuple[str, datetime]]] = {}
    for path in store.files("rejections"):
        table = pq.read_table(path, columns=["command", "object_id", "reason", "rejected_at"])
        table = table.filter(pc.equal(table["command"], "pad"))
        for oid, reason, at in zip(table["object_id"].to_pylist(), table["reason"].to_pylist(),
                                   table["rejected_at"].to_pylist()):
            out.setdefault(oid, []).append((reason, at))
    return out


def _settings_tag(settings: str) -> str:
    # Appended to rejection reasons: an object is tried again once the settings (or its content) change.
    return f" [{settings}]"


def _plan(store: Store, source: str, target: str, preset: str, crop: CropSpec | None, size: int | None,
          on_read: str | None, summary: PadSummary) -> tuple[list[_Task], dict[str, str], set[str], set[str]]:
    """(tasks, object_id -> target file, ids whose old padded row gets replaced, ids whose object is gone)."""
    padded = _padded_index(store, target)
    rejected = _rejected_before(store)
    base = store.root / source
    tasks: list[_Task] = []
    replaced: set[str] = set()
    seen: set[str] = set()
    settings_of = cache(lambda instrument: settings_key(crop_for(instrument, preset, crop), size, on_read))
    for path in store.files(source):
        partition = partition_values(path, base)
        with pq.ParquetFile(path) as f:
            sizes = [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)]
            columns = ["object_id", "content_hash", "ingested_at"]
            if "instrument" not in partition:
                columns.append("instrument")
            table = f.read(columns=columns)
        ids, hashes, ingested = (table[c].to_pylist() for c in ("object_id", "content_hash", "ingested_at"))
        instruments = table["instrument"].to_pylist() if "instrument" in table.column_names else None
        start = 0
        for group, n in enumerate(sizes):
            rows = []
            for offset in range(n):
                i = start + offset
                oid = ids[i]
                seen.add(oid)
                summary.read += 1
                instrument = instruments[i] if instruments else partition.get("instrument")
                settings = settings_of(instrument)
                old = padded.get(oid)
                if old is not None and old.content_hash == hashes[i] and old.settings == settings:
                    summary.skipped += 1
                elif any(reason.endswith(_settings_tag(settings)) and at >= ingested[i]
                         for reason, at in rejected.get(oid, ())):
                    summary.skipped_rejected += 1
                else:
                    rows.append(offset)
                    if old is not None:
                        replaced.add(oid)
            start += n
            if rows:
                tasks.append(_Task(str(path), group, tuple(rows), tuple(sorted(partition.items()))))
    gone = set(padded) - seen
    return tasks, {oid: p.file for oid, p in padded.items()}, replaced, gone


# --- Padding (runs in the workers) -----------------------------------------------------------------------------


def _pad_task(task: _Task, preset: str, crop: CropSpec | None, size: int | None, on_read: str | None
              ) -> tuple[list[dict], list[dict]]:
    """Pad one row group's selected rows: (padded rows, rejections without run/time); with `on_read` the rows keep
    no pixels (padding still runs: it finds the legend to crop, and an image it cannot pad is rejected now)."""
    with pq.ParquetFile(task.path) as f:
        table = f.read_row_group(task.row_group)
    rows, rejections = [], []
    for row in table.take(list(task.rows)).to_pylist():
        row.update(task.partition)
        spec = crop_for(row.get("instrument"), preset, crop)
        settings = settings_key(spec, size, on_read)
        try:
            if not row["image"] or not row["image"]["bytes"]:
                raise ImageError("no image bytes")
            result = pad_to_square(decode(row["image"]["bytes"]), row["object_id"], crop=spec, size=size)
        except (ImageError, ValueError) as exc:
            # ImageError messages start with their kind ("undecodable image: ..."); ValueError is a crop too big.
            reason = str(exc) if isinstance(exc, ImageError) else f"cannot pad: {exc}"
            rejections.append({
                "source_key": row["source_key"], "source_file": row["source_file"],
                "source_row": None if row["source_row"] is None else str(row["source_row"]),
                "object_id": row["object_id"], "reason": reason + _settings_tag(settings),
            })
            continue
        image = result.image
        row["image"] = None if on_read else {"bytes": encode_png(image), "path": row["image"]["path"]}
        row["height"], row["width"] = image.shape[:2]
        row.update(
            orig_height=result.orig_height, orig_width=result.orig_width,
            crop_top=result.crop_top, crop_bottom=result.crop_bottom,
            crop_left=result.crop_left, crop_right=result.crop_right,
            pad_top=result.pad_top, pad_bottom=result.pad_bottom,
            pad_left=result.pad_left, pad_right=result.pad_right,
            pad_fill=[float(v) for v in result.fill], pad_noise_std=list(result.noise_std),
            pad_preset=crop_label(spec, result.crop_bottom, result.crop_top), pad_settings=settings,
        )
        rows.append(row)
    return rows, rejections


@contextmanager
def _worker_pool(workers: int) -> Iterator[Pool | None]:
    """A pool of `workers` forked processes, or None for one. Enter it before taking the store lock, so that the
    children do not inherit the lock's file descriptor (an orphaned child would otherwise keep the store locked)."""
    if workers <= 1:
        yield None
        return
    # fork: the children inherit the imported modules (no re-import cost) and open the Parquet files themselves.
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield pool


def _results(tasks: list[_Task], work: Callable, pool: Pool | None) -> Iterator[tuple[list[dict], list[dict]]]:
    """`work(task)` for each task, in task order, in the pool's processes when there is one."""
    if pool is None or len(tasks) <= 1:
        return map(work, tasks)
    return pool.imap(work, tasks)  # imap keeps task order, so the output is the same for any worker count


# --- Writing -----------------------------------------------------------------------------------------------------


class _Run:
    """One pad run's session and the old rows its commits drop."""

    def __init__(self, store: Store, run_id: str, target: str, files_by_id: dict[str, str], gone: set[str]):
        self.store = store
        self.target = target
        self.schema = load_schema("padded")
        self.session = WriteSession(store.root, run_id, "pad")
        self.session.writer(target, self.schema)
        self.files_by_id = files_by_id  # object_id -> store-relative target file holding its row
        self.to_drop = set(gone)  # ids whose old row goes in the next commit

    def commit(self) -> int:
        """Commit what is staged, dropping the old rows it replaces; returns how many old rows were dropped."""
        dropped = self._drop_old_rows()
        self.session.commit()
        return dropped

    def _drop_old_rows(self) -> int:
        """Rewrite every target file holding a row in `to_drop` without it (new name; the old file is deleted)."""
        drop, self.to_drop = self.to_drop, set()
        files = {self.files_by_id[oid] for oid in drop if oid in self.files_by_id}
        dropped, replaced = self.session.remove_ids(files, drop, self.schema)
        for oid, rel in list(self.files_by_id.items()):
            if rel not in replaced:
                continue
            new_rel = replaced[rel]
            if new_rel is None or oid in drop:
                del self.files_by_id[oid]
            else:
                self.files_by_id[oid] = new_rel
        return dropped


def pad_dataset(
    store: Store,
    *,
    source: str = "objects",
    target: str = "padded",
    preset: str = "auto",
    crop: CropSpec | None = None,
    size: int | None = None,
    store_pixels: bool = False,
    workers: int = 1,
    lock_timeout: float = 60.0,
    on_progress: Callable[[int], None] | None = None,
) -> PadSummary:
    """Crop and pad every image of `source` not yet padded into `target`, in `workers` processes.

    `preset` picks the crop per image (see `PRESETS`); `crop` adds fixed crops on top of it; `size` resizes the
    padded square. `store_pixels` stores the padded PNGs too (else readers pad on read). `on_progress(n)` is called
    after each row group with the number of rows it padded or rejected. Switching `store_pixels` pads every row again.
    """
    dataset_name(source)
    dataset_name(target, written_by="pad")  # before anything is written: never a path, a reserved name or another's
    if source == target:
        raise ValueError("the source and target datasets must differ")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    run_id = new_run_id()
    crop_text = "0,0,0,0" if crop is None else f"{crop.top},{crop.bottom},{crop.left},{crop.right}"
    summary = PadSummary(run=run_id, store=str(store.root), source=source, target=target,
                         settings=f"preset={preset} crop={crop_text} size={size or 'keep'} "
                                  f"pixels={'stored' if store_pixels else 'on-read'}")
    on_read = None if store_pixels else source
    with _worker_pool(workers) as pool, store.locked(timeout=lock_timeout):
        tasks, files_by_id, replaced, gone = _plan(store, source, target, preset, crop, size, on_read,
                                                        summary)
        if not store.files(source):
            log.warning("dataset %r of %s is empty: nothing to pad (run `plankton ingest` first)", source, store.root)
        run = _Run(store, run_id, target, files_by_id, gone)
        work = partial(_pad_task, preset=preset, crop=crop, size=size, on_read=on_read)
        try:
            for rows, rejections in _results(tasks, work, pool):
                now = datetime.now(UTC)
                for row in rows:
                    spec = crop_for(row["instrument"], preset, crop)
                    if spec.scale_bar:
                        summary.scale_bar_checked += 1
                        summary.crops.setdefault(f"scale-bar {SCALE_BAR_HEIGHT}px", 0)
                    if spec.banner:
                        summary.banner_checked += 1
                        summary.crops.setdefault(f"banner {CYTOSENSE_BANNER_HEIGHT}px", 0)
                    summary.crops[row["pad_preset"]] += 1
                    group = summary.crops_by_instrument.setdefault(row["instrument"] or "unknown", Counter())
                    group[row["pad_preset"]] += 1
                    summary.padded += 1
                    run.session.add(target, row)
                    if row["object_id"] in replaced:
                        run.to_drop.add(row["object_id"])
                for rej in rejections:
                    summary.rejected[rej["reason"].split(":", 1)[0]] += 1
                    log.warning("rejected %s: %s", rej["object_id"], rej["reason"])
                    run.session.reject(rej | {"rejected_at": now})
                    if rej["object_id"] in replaced:  # its old padded row was made with other settings or content
                        run.to_drop.add(rej["object_id"])
                if on_progress:
                    on_progress(len(rows) + len(rejections))
                if run.session.staged_bytes >= MAX_FILE_BYTES:
                    summary.removed += run.commit()
            summary.removed += run.commit()
        except BaseException:
            run.session.abort()
            raise
    return summary


# --- Preview -----------------------------------------------------------------------------------------------------


def preview_pairs(
    store: Store,
    n: int,
    *,
    source: str = "objects",
    preset: str = "auto",
    crop: CropSpec | None = None,
    size: int | None = None,
    seed: int = 0,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(object_id, before, after) for `n` random (seeded) objects of `source`, padded in memory.

    Padding is deterministic, so `after` is the image `pad_dataset` stores with these settings: a person can look
    before anything is written. Images that cannot be padded are left out (and logged).
    """
    groups = []  # (path, row group, rows in it)
    base = store.root / source
    for file in store.files(source):
        with pq.ParquetFile(file) as f:
            groups += [(file, i, f.metadata.row_group(i).num_rows) for i in range(f.num_row_groups)]
    total = sum(g[2] for g in groups)
    if total == 0:
        raise ValueError(f"dataset {source!r} of {store.root} holds no images to preview")
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    pairs = []
    start = 0
    for file, group, rows in groups:
        offsets = chosen[(chosen >= start) & (chosen < start + rows)] - start
        start += rows
        if not len(offsets):
            continue
        partition = partition_values(file, base)
        with pq.ParquetFile(file) as f:
            columns = ["object_id", "image"] + ([] if "instrument" in partition else ["instrument"])
            table = f.read_row_group(group, columns=columns).take(offsets)
        for row in table.to_pylist():
            try:
                before = decode(row["image"]["bytes"])
                spec = crop_for(row.get("instrument", partition.get("instrument")), preset, crop)
                after = pad_to_square(before, row["object_id"], crop=spec, size=size).image
            except (ImageError, ValueError, TypeError) as exc:
                log.warning("preview: left out %s: %s", row["object_id"], exc)
                continue
            pairs.append((row["object_id"], before, after))
    return pairs


def preview(store: Store, n: int, path: str | Path, *, tile: int = 128, **settings) -> Path:
    """Write a PNG contact sheet of `preview_pairs(store, n, **settings)`, before and after side by side, under
    a legend naming each column."""
    pairs = preview_pairs(store, n, **settings)
    return contact_sheet([(before, after) for _, before, after in pairs], path, tile=tile,
                         labels=("original", "padded"))
