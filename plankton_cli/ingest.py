"""`plankton ingest` as a library function: sources → reader plugins → the store's `objects` dataset.

Guarantees, each tested:
- Counts add up: read = stored + skipped (the same object already stored) + rejected, per source and in total.
- Never silent about identity: the same object id with other pixels from another source is a conflict,
  rejected (naming both sources) unless `on_conflict="replace"`.
- Idempotent: the manifest skips unchanged sources; a re-run stores nothing twice.
- No reserved label: a class named `unclassified` (predict's label for objects below their class threshold) is
  rejected per object with the reason, whichever reader it came from: stored, it would be indistinguishable from
  predict's own and counted as one class in summaries and evaluations.
- Superseding: a source whose content changed is read again; in the same commit, every data file holding its old
  rows is rewritten without them (under a new name; the old file is deleted) and the new rows are added.
- Crash-safe: work is committed atomically (see `store/transaction.py`) at source boundaries, every ~256 MB and
  at the end; a killed run loses only its uncommitted sources, which the next run reads again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli import plugins
from plankton_cli.records import UNKNOWN_INSTRUMENT, ReadOptions, Record, Rejection, Source
from plankton_cli.store import Store
from plankton_cli.store.images import ImageError, check
from plankton_cli.store.manifest import Manifest
from plankton_cli.store.schema import load_schema
from plankton_cli.store.layout import MAX_FILE_BYTES
from plankton_cli.store.session import WriteSession
from plankton_cli.store.transaction import new_run_id
from plankton_cli.writers import UNCLASSIFIED

log = logging.getLogger("plankton.ingest")

DATASET = "objects"


@dataclass
class IngestSummary:
    run: str
    store: str
    sources: Counter = field(default_factory=Counter)  # new / changed / unchanged / retried
    read: int = 0
    stored: int = 0
    skipped_duplicate: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason kind -> count

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "store": self.store,
            "sources": dict(self.sources),
            "read": self.read,
            "stored": self.stored,
            "skipped_duplicate": self.skipped_duplicate,
            "rejected": self.n_rejected,
            "rejected_by_reason": dict(self.rejected),
        }


def reason_kind(reason: str) -> str:
    """Group rejection reasons for the summary: the text before the first ':' (readers put details after it)."""
    return reason.split(":", 1)[0].strip()


def discover(paths: Iterable[Path], fmt: str, options: ReadOptions) -> Iterable[tuple[object, Source, Path]]:
    """(reader, source, path) for every source under `paths`, each path read by `fmt` or the reader that sniffs
    it."""
    for path in paths:
        name = fmt if fmt != "auto" else plugins.sniff_reader(path)
        if name is None:
            raise plugins.PluginError(f"no reader recognises {path}; pass --format (see `plankton plugins`)")
        reader = plugins.load("reader", name)
        for source in reader.discover(path, options):
            yield reader, source, path


@dataclass(frozen=True)
class _Stored:
    """What identifies a stored object's content and where it came from (for duplicates and conflicts)."""

    source_key: str
    source_file: str
    content_hash: str
    file: str | None  # store-relative data file; None while only staged by this run


def _existing_ids(store: Store) -> dict[str, _Stored]:
    ids: dict[str, _Stored] = {}
    for f in store.files(DATASET):
        table = pq.read_table(f, columns=["object_id", "source_key", "source_file", "content_hash"])
        rel = str(f.relative_to(store.root))
        for oid, key, file, h in zip(*(table[c].to_pylist() for c in table.column_names)):
            ids[oid] = _Stored(key, file, h, rel)
    return ids


class _Run:
    """One ingest run's state between commits."""

    def __init__(self, store: Store, run_id: str, on_conflict: str):
        self.store = store
        self.run_id = run_id
        self.on_conflict = on_conflict
        self.manifest = Manifest(store.root)
        self.existing = _existing_ids(store)
        self.objects_schema = load_schema(DATASET)
        self.session = WriteSession(store.root, run_id, "ingest")
        self.superseded: dict[str, list[str]] = {}  # source key -> its data files before this run
        self.pending_supersede: dict[str, list[str]] = {}  # the same, for sources read since the last commit
        self.stored_ids: dict[str, _Stored] = {}  # object ids stored by this run
        self.replaced: dict[str, set[str]] = {}  # data file -> ids whose row a conflicting object replaces

    def supersede(self, source: Source) -> None:
        old = self.manifest.entries.get(source.key, {}).get("data_files", [])
        self.pending_supersede[source.key] = list(old)
        self.superseded[source.key] = list(old)

    def commit(self) -> None:
        self._drop_superseded_rows()
        if self.manifest.dirty or not self.session.empty:
            self.manifest.stage(self.session)
        self.session.commit()

    def _drop_superseded_rows(self) -> None:
        """Remove the old rows of changed sources, and the rows that conflicting objects replace."""
        keys = pa.array(list(self.pending_supersede), pa.string())
        files = sorted({f for fs in self.pending_supersede.values() for f in fs} | set(self.replaced))
        replaced, self.pending_supersede, self.replaced = self.replaced, {}, {}
        for rel in files:
            path = self.store.root / rel
            if not path.exists():
                continue
            table = pq.read_table(path, schema=self.objects_schema.file_schema)
            drop = pc.or_(pc.is_in(table["source_key"], keys),
                          pc.is_in(table["object_id"], pa.array(sorted(replaced.get(rel, ())), pa.string())))
            new = self.session.remove_rows(rel, table, drop, self.objects_schema)
            self.manifest.replace_data_file(rel, new)
            for oid, old in self.existing.items():  # later conflicts must find the rows where they are now
                if old.file == rel:
                    self.existing[oid] = _Stored(old.source_key, old.source_file, old.content_hash, new)


def ingest(
    store: Store,
    paths: list[Path],
    *,
    fmt: str = "auto",
    options: ReadOptions | None = None,
    lock_timeout: float = 60.0,
    retry_rejected: bool = False,
    on_conflict: str = "reject",
    commit_every: int = 0,
    on_start: Callable[[int], None] | None = None,
    on_source: Callable[[Source, str], None] | None = None,
    on_object: Callable[[], None] | None = None,
) -> IngestSummary:
    """Ingest `paths` into `store`.

    An object id already stored with other pixels from another source is a conflict: `on_conflict="reject"`
    records it in `rejections` (naming both sources); `"replace"` stores the new object instead of the old.
    The same id with the same pixels is a duplicate and is skipped.

    `commit_every=N` commits after every N sources read (besides every ~256 MB and at the end), so a long
    backlog keeps its progress if interrupted. `on_start(n_sources)`, `on_source(source, status)` and
    `on_object()` feed progress displays.
    """
    options = options or ReadOptions()
    run_id = new_run_id()
    summary = IngestSummary(run=run_id, store=str(store.root))
    sources = list(discover(paths, fmt, options))
    if on_start:
        on_start(len(sources))
    with store.locked(timeout=lock_timeout):
        run = _Run(store, run_id, on_conflict)
        since_commit = 0
        try:
            for reader, source, found_in in sources:
                status, facts = run.manifest.status(source)
                if status == "unchanged" and retry_rejected and run.manifest.entries[source.key]["n_rejected"]:
                    status = "retried"
                summary.sources[status] += 1
                if on_source:
                    on_source(source, status)
                if status == "unchanged":
                    continue
                if status in ("changed", "retried"):
                    run.supersede(source)
                counts, data_files = _ingest_source(run, reader, source, options, summary, on_object)
                run.manifest.record(source, facts, counts, data_files, run_id, found_in, options)
                since_commit += 1
                if run.session.staged_bytes >= MAX_FILE_BYTES or (commit_every and since_commit >= commit_every):
                    run.commit()
                    since_commit = 0
            run.commit()
        except BaseException:
            run.session.abort()
            raise
    return summary


def _ingest_source(run: _Run, reader, source: Source, options: ReadOptions, summary: IngestSummary,
                   on_object) -> tuple[dict, list[str]]:
    counts = Counter(read=0, stored=0, skipped=0, rejected=0)
    data_files: list[str] = []
    now = datetime.now(UTC)
    items = None
    while True:
        try:
            items = items or iter(reader.read(source, options))
            item = next(items)
        except StopIteration:
            break
        except Exception as exc:  # a reader bug must not lose the rest of the run; the source is reported rejected
            counts["read"] += 1
            _reject(run, Rejection(str(source.files[0]), None, f"reader error: {type(exc).__name__}: {exc}"),
                    source, now, counts, summary)
            break
        # Storing is outside the `try`: a store write error (disk full) fails the run, it is not a bad source.
        counts["read"] += 1
        if on_object:
            on_object()
        if isinstance(item, Record):
            item = _store_record(run, item, source, now, counts, data_files)
        if isinstance(item, Rejection):
            _reject(run, item, source, now, counts, summary)
    summary.read += counts["read"]
    summary.stored += counts["stored"]
    summary.skipped_duplicate += counts["skipped"]
    return dict(counts), data_files


def _store_record(run: _Run, rec: Record, source: Source, now: datetime, counts: Counter,
                  data_files: list[str]) -> Rejection | None:
    if rec.label is not None and rec.label.strip().casefold() == UNCLASSIFIED:
        return Rejection(rec.source_file, rec.source_row, f"reserved label: {rec.label!r} is predict's own label "
                         "for objects below their class threshold; rename the class (folder or category)",
                         rec.object_id)
    try:
        img = check(rec.image)
    except ImageError as exc:
        return Rejection(rec.source_file, rec.source_row, str(exc), rec.object_id)
    earlier = run.stored_ids.get(rec.object_id)
    stored = run.existing.get(rec.object_id)
    if stored is not None and stored.source_key not in run.superseded and earlier is None:
        earlier = stored
    if earlier is not None:
        if earlier.content_hash == img.content_hash:
            counts["skipped"] += 1  # the same object again
            return None
        if run.on_conflict != "replace" or earlier.file is None or earlier.source_key == source.key:
            return Rejection(rec.source_file, rec.source_row,
                             f"conflict: object id {rec.object_id!r} is already stored with other pixels from "
                             f"{earlier.source_file} (source {earlier.source_key}); see --on-conflict",
                             rec.object_id)
        run.replaced.setdefault(earlier.file, set()).add(rec.object_id)
        if earlier.source_key in run.manifest.entries:  # the replaced source keeps one row fewer
            run.manifest.entries[earlier.source_key]["n_stored"] -= 1
            run.manifest.dirty = True
    row = {
        "object_id": rec.object_id,
        "image": {"bytes": img.data, "path": rec.metadata.get("image_path") or rec.object_id.rsplit("/", 1)[-1]},
        "height": img.height,
        "width": img.width,
        "channels": img.channels,
        "label": rec.label,
        "label_status": rec.label_status if rec.label is not None else "none",
        "lineage": rec.lineage,
        "instrument": rec.instrument or UNKNOWN_INSTRUMENT,
        "instrument_serial": rec.instrument_serial,
        "sample_id": rec.sample_id,
        "acquired_at": rec.acquired_at,
        "lat": rec.lat,
        "lon": rec.lon,
        "depth": rec.depth,
        "pixel_size_um": rec.pixel_size_um,
        "source_file": rec.source_file,
        "source_row": rec.source_row,
        "source_key": source.key,
        "content_hash": img.content_hash,
        "ingest_run": run.run_id,
        "ingested_at": now,
        "metadata": _pairs(rec.metadata),
    }
    data_files.append(run.session.add(DATASET, row))
    run.stored_ids[rec.object_id] = _Stored(source.key, rec.source_file, img.content_hash, None)
    counts["stored"] += 1
    return None


def _pairs(metadata: dict) -> list[tuple[str, str]]:
    """(key, value) text pairs for the metadata column; readers should give text, anything else is converted."""
    if set(map(type, metadata.values())) <= {str}:
        return list(metadata.items())
    return [(str(k), str(v)) for k, v in metadata.items()]


def _reject(run: _Run, rej: Rejection, source: Source, now: datetime, counts: Counter,
            summary: IngestSummary) -> None:
    counts["rejected"] += 1
    summary.rejected[reason_kind(rej.reason)] += 1
    log.warning("rejected %s", rej)
    run.session.reject({
        "source_key": source.key,
        "source_file": rej.source_file,
        "source_row": None if rej.source_row is None else str(rej.source_row),
        "object_id": rej.object_id,
        "reason": rej.reason,
        "rejected_at": now,
    })
