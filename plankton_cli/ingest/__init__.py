"""`plankton ingest` as a library function: sources → reader plugins → the store's `objects` dataset.

Guarantees, each tested:
- Counts add up: read = stored + skipped (the same object already stored) + rejected, per source and in total.
- Never silent about identity: the same object id with other pixels from another source is a conflict,
  rejected (naming both sources) unless `on_conflict="replace"`.
- Idempotent: the manifest skips unchanged sources; a re-run stores nothing twice.
- One EcoTaxa object is one object: an EcoTaxa record whose EcoTaxa id (`<collection>/<object_id>[#rank]` less its
  collection) and image (`content_hash`) are already stored under another collection (the same export in another
  layout: by acquisition, backup, DOI) with the same label is skipped as already stored, counted in `skipped`
  (`skipped_twin` of it), the stored object's id in the debug log. The lookup of stored EcoTaxa objects is read on
  the first EcoTaxa record (four columns of the EcoTaxa sources' files only): other readers never pay for it. The
  rule that keeps a skipped twin from being lost: a twin is skipped only for a copy that stays, i.e. one stored by
  this run or by a source not superseded in it. When an EcoTaxa source that stored objects is superseded (its
  content changed, so its old rows go), every other EcoTaxa source that skipped objects (`n_skipped` > 0: it may
  have skipped them as twins of those rows) is marked to be read again (fingerprint and checksum cleared): those
  this run has already passed are read again at its end, after a commit, so an object the changed source no longer
  has is stored under the next layout that has it; those not among this run's paths are named in a warning
  (`to_read_again`) and read again by the next ingest that finds them (until then, such an object may be missing).
  The summary's counts include both readings of a source read again.
- No reserved label: a class named `unclassified` (predict's label for objects below their class threshold) is
  rejected per object with the reason, whichever reader it came from: stored, it would be indistinguishable from
  predict's own and counted as one class in summaries and evaluations.
- Superseding: a source whose content changed is read again; in the same commit, every data file holding its old
  rows is rewritten without them (under a new name; the old file is deleted) and the new rows are added.
- Crash-safe: work is committed atomically (see `store/transaction.py`) at source boundaries, every ~256 MB and
  at the end; a killed run loses only its uncommitted sources, which the next run reads again.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import accumulate
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli.core import plugins
from plankton_cli.core.records import UNKNOWN_INSTRUMENT, ReadOptions, Record, Rejection, Source
from plankton_cli.jobs.fanout import FanOut
from plankton_cli.store import Store
from plankton_cli.store.images import ImageError, check
from plankton_cli.store.manifest import Folders, Manifest
from plankton_cli.store.schema import load_schema
from plankton_cli.store.layout import MAX_FILE_BYTES
from plankton_cli.store.session import WriteSession
from plankton_cli.store.transaction import new_run_id
from plankton_cli.core.writers import UNCLASSIFIED

log = logging.getLogger("plankton.ingest")

DATASET = "objects"


@dataclass
class IngestSummary:
    run: str
    store: str
    sources: Counter = field(default_factory=Counter)  # new / changed / unchanged / retried
    folders_unchanged: int = 0  # source folders not listed (unchanged since last listed); their sources: unchanged
    read: int = 0
    stored: int = 0
    skipped_duplicate: int = 0
    skipped_twin: int = 0  # of skipped_duplicate: EcoTaxa objects stored under another collection (examples below)
    twin_examples: list = field(default_factory=list)  # up to 3 [skipped id, stored id]
    labels: set = field(default_factory=set)  # the labels of the objects this run stored
    relabelled: int = 0  # EcoTaxa objects stored although another collection holds them, under another label
    relabelled_examples: list = field(default_factory=list)  # up to 3 [id, label, stored id, stored label]
    stored_by_reader: Counter = field(default_factory=Counter)
    reread: list = field(default_factory=list)  # sources marked to be read again, not among this run's paths
    rejected: Counter = field(default_factory=Counter)  # reason kind -> count

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def add_source(self, counts: Counter, reader: str) -> None:
        """Count one source's objects (its `read`, `stored`, `skipped` and `twins`) into the run's."""
        self.read += counts["read"]
        self.stored += counts["stored"]
        self.skipped_duplicate += counts["skipped"]
        self.skipped_twin += counts["twins"]
        if counts["stored"]:
            self.stored_by_reader[reader] += counts["stored"]

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "store": self.store,
            "sources": dict(self.sources),
            "folders_unchanged": self.folders_unchanged,
            "read": self.read,
            "stored": self.stored,
            "skipped_duplicate": self.skipped_duplicate,
            "skipped_twin": self.skipped_twin,
            "twin_examples": self.twin_examples,
            "stored_relabelled": self.relabelled,
            "relabelled_examples": self.relabelled_examples,
            "to_read_again": self.reread,
            "rejected": self.n_rejected,
            "rejected_by_reason": dict(self.rejected),
        }


def reason_kind(reason: str) -> str:
    """Group rejection reasons for the summary: the text before the first ':' (readers put details after it)."""
    return reason.split(":", 1)[0].strip()


def discover(paths: Iterable[Path], fmt: str, options: ReadOptions, folders: Folders | None = None
             ) -> Iterable[tuple[object, Source, Path]]:
    """(reader, source, path) for every source under `paths`, each path read by `fmt` or the reader that sniffs
    it. A reader that walks folders (`skips_unchanged_folders`) is given `folders` and lists none it says are
    unchanged."""
    for path in paths:
        name = fmt if fmt != "auto" else plugins.sniff_reader(path)
        if name is None:
            raise plugins.PluginError(f"no reader recognises {path}; pass --format (see `plankton plugins`)")
        reader = plugins.load("reader", name)
        found = (reader.discover(path, options, folders=folders)
                 if folders is not None and getattr(reader, "skips_unchanged_folders", False)
                 else reader.discover(path, options))
        for source in found:
            yield reader, source, path


@dataclass(frozen=True)
class _Stored:
    """What identifies a stored object's content and where it came from (for duplicates and conflicts)."""

    source_key: str
    source_file: str
    content_hash: str
    file: str | None  # store-relative data file; None while only staged by this run


ECOTAXA = "ecotaxa"  # the EcoTaxa reader's name (plugins/ecotaxa): its objects are matched across collections
ECOTAXA_ID = "ecotaxa_object_id"  # its metadata key of EcoTaxa's own object id (plugins/ecotaxa/reader.py NATIVE_ID)


def _local_id(object_id: str) -> str | None:
    """The id within its collection (`<collection>/<id>`), None for an id without a collection."""
    _, sep, local = object_id.partition("/")
    return local if sep else None


def _ecotaxa_index(store: Store, manifest: Manifest) -> dict[tuple[str, str, str | None], list[tuple[str, str]]]:
    """(id within its collection, content hash, label) -> [(object id, source key)] of the stored EcoTaxa objects:
    the data files of the manifest's EcoTaxa sources, four columns, their rows only."""
    keys = set(manifest.entries.keys_where("reader", ECOTAXA))
    files = sorted({f for k in keys for f in manifest.entries[k]["data_files"]})
    index: dict[tuple[str, str, str | None], list[tuple[str, str]]] = {}
    if not files:
        return index
    wanted = pa.array(sorted(keys), pa.string())
    for rel in files:
        path = store.root / rel
        if not path.exists():
            continue
        columns = ["object_id", "content_hash", "label", "source_key"]
        table = pq.read_table(path, columns=columns)
        table = table.filter(pc.is_in(table["source_key"], wanted))
        for oid, h, label, key in zip(*(table[c].to_pylist() for c in columns)):
            local = _local_id(oid)
            if local is not None:
                index.setdefault((local, h, label), []).append((oid, key))
    return index


class _StoredIds:
    """The stored objects' ids, read lazily: the stored rows an id may be among are those of the data files whose
    id range (the committed list's stats) holds it. A night's new ids fall outside every old file's range, so an
    ingest reads only the files its ids may clash with (none, for a station's bins named by time), never the
    store; a file without stats is read on the first lookup."""

    COLUMNS = ["object_id", "source_key", "source_file", "content_hash"]

    def __init__(self, store: Store):
        self.store = store
        self.ids: dict[str, _Stored] = {}
        self.unread = [(str(path.relative_to(store.root)), stats)
                       for path, stats in store.stats(DATASET).items()]
        self._index()

    def _index(self) -> None:
        """Sorted (low, high) id ranges of the unread files, and the running max of `high`, for bisecting."""
        ranged = sorted((stats["min"]["object_id"], stats["max"]["object_id"], rel) for rel, stats in self.unread
                        if stats is not None and "object_id" in stats.get("min", {}))
        self.unranged = [rel for rel, stats in self.unread if stats is None or "object_id" not in stats.get("min", {})
                         and stats.get("rows", 1)]
        self.lows = [low for low, _, _ in ranged]
        self.ranged = ranged
        self.reach = list(accumulate((high for _, high, _ in ranged), max))

    def get(self, oid: str) -> _Stored | None:
        i = bisect.bisect_right(self.lows, oid)
        if self.unranged or (i and self.reach[i - 1] >= oid):
            self._read({rel for low, high, rel in self.ranged[:i] if high >= oid} | set(self.unranged))
        return self.ids.get(oid)

    def _read(self, files: set[str]) -> None:
        for rel in sorted(files):
            path = self.store.root / rel
            if path.exists():
                table = pq.read_table(path, columns=self.COLUMNS)
                for oid, key, file, h in zip(*(table[c].to_pylist() for c in self.COLUMNS)):
                    self.ids[oid] = _Stored(key, file, h, rel)
        self.unread = [(rel, stats) for rel, stats in self.unread if rel not in files]
        self._index()

    def moved(self, old: str, new: str | None) -> None:
        """Data file `old` was rewritten as `new` (None: no row left): later lookups find its rows there."""
        self.unread = [(new, stats) if rel == old else (rel, stats) for rel, stats in self.unread if rel != old
                       or new is not None]
        self._index()
        for oid, stored in self.ids.items():
            if stored.file == old:
                self.ids[oid] = _Stored(stored.source_key, stored.source_file, stored.content_hash, new)


class _Run:
    """One ingest run's state between commits."""

    def __init__(self, store: Store, run_id: str, on_conflict: str):
        self.store = store
        self.run_id = run_id
        self.on_conflict = on_conflict
        self.manifest = Manifest(store.root)
        self.existing = _StoredIds(store)
        self.objects_schema = load_schema(DATASET)
        self.session = WriteSession(store.root, run_id, "ingest")
        self.superseded: dict[str, list[str]] = {}  # source key -> its data files before this run
        self.pending_supersede: dict[str, list[str]] = {}  # the same, for sources read since the last commit
        self.stored_ids: dict[str, _Stored] = {}  # object ids stored by this run
        self.replaced: dict[str, set[str]] = {}  # data file -> ids whose row a conflicting object replaces
        # EcoTaxa twins: the stored ones, read on the first EcoTaxa record; those this run stored
        self.twins: dict[tuple[str, str, str | None], list[tuple[str, str]]] | None = None
        self.run_twins: dict[tuple[str, str, str | None], tuple[str, str]] = {}
        self.by_image: dict[tuple[str, str], tuple[str, str | None]] = {}  # (local id, hash) -> (id, label)
        self.seen: set[str] = set()  # source keys this run has passed (read or unchanged)
        self.again: set[str] = set()  # of them, those to read again at the end (see the module's docstring)
        self.marking = True

    def supersede(self, source: Source) -> None:
        old = self.manifest.entries.get(source.key, {}).get("data_files", [])
        self.pending_supersede[source.key] = list(old)
        self.superseded[source.key] = list(old)
        if source.reader == ECOTAXA and self.marking and self.manifest.entries.get(source.key, {}).get("n_stored"):
            self._mark_twin_sources(source.key)

    def _mark_twin_sources(self, changed: str) -> None:
        """The old rows of EcoTaxa source `changed` (it had some) go: every other EcoTaxa source that skipped
        objects is read again (those passed by this run at its end, the others by the next ingest that finds
        them)."""
        for key in self.manifest.entries.keys_where("reader", ECOTAXA):
            entry = self.manifest.entries[key]
            if key != changed and entry["n_skipped"] and entry["fingerprint"]:
                entry["fingerprint"] = entry["checksum"] = ""  # matches no source: read as changed
                self.manifest.dirty = True
                if key in self.seen:
                    self.again.add(key)

    def forget(self, key: str) -> None:
        """Source `key`, stored by this run and committed, is read again: its objects are no longer this run's."""
        for oid in [oid for oid, s in self.stored_ids.items() if s.source_key == key]:
            del self.stored_ids[oid]
        for twin in [t for t, (_, k) in self.run_twins.items() if k == key]:
            del self.run_twins[twin]

    def twin(self, object_id: str, label: str | None, content_hash: str) -> str | None:
        """The id of the same EcoTaxa object stored under another collection, if a copy that stays. The label
        must match too: a later export whose experts changed the label is news, not a copy (it is stored, and
        `check` reports the pair)."""
        local = _local_id(object_id)
        if local is None:
            return None
        mine = self.run_twins.get((local, content_hash, label))
        if mine is not None and mine[0] != object_id:
            return mine[0]
        if self.twins is None:
            self.twins = _ecotaxa_index(self.store, self.manifest)
            for (local_id, image, stored_label), found in self.twins.items():
                self.by_image.setdefault((local_id, image), (found[0][0], stored_label))
        for oid, key in self.twins.get((local, content_hash, label), ()):
            if oid != object_id and key not in self.superseded and oid not in self.stored_ids:
                return oid
        return None

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
            self.existing.moved(rel, new)  # later conflicts must find the rows where they are now


def ingest(
    store: Store,
    paths: list[Path],
    *,
    fmt: str = "auto",
    options: ReadOptions | None = None,
    lock_timeout: float = 60.0,
    retry_rejected: bool = False,
    rescan: bool = False,
    on_conflict: str = "reject",
    commit_every: int = 0,
    on_start: Callable[[int], None] | None = None,
    on_source: Callable[[Source, str], None] | None = None,
    on_object: Callable[[], None] | None = None,
    fanout: FanOut | None = None,
) -> IngestSummary:
    """Ingest `paths` into `store`.

    An object id already stored with other pixels from another source is a conflict: `on_conflict="reject"`
    records it in `rejections` (naming both sources); `"replace"` stores the new object instead of the old.
    The same id with the same pixels is a duplicate and is skipped.

    `commit_every=N` commits after every N sources read (besides every ~256 MB and at the end), so a long
    backlog keeps its progress if interrupted. `on_start(n_sources)`, `on_source(source, status)` and
    `on_object()` feed progress displays. Source folders unchanged since a run listed them are not listed
    (`store.manifest.Folders`); `rescan=True` (implied by `retry_rejected`) lists and checks every one. `fanout`: read the sources in worker processes or cluster tasks and
    commit once (`ingest.fanout`; `commit_every` and `on_object` do not apply).
    """
    options = options or ReadOptions()
    run_id = new_run_id()
    summary = IngestSummary(run=run_id, store=str(store.root))
    folders = Folders(store.root, rescan=rescan or retry_rejected)
    sources = list(discover(paths, fmt, options, folders))
    summary.folders_unchanged = len(folders.skipped)
    if folders.skipped:  # their sources are unchanged ones, as when their files were checked
        summary.sources["unchanged"] += sum(folders.skipped.values())
    if on_start:
        on_start(len(sources))
    fan = fanout if fanout is not None and fanout.fanned else None
    with fan.started() if fan else nullcontext(), store.locked(timeout=lock_timeout):
        run = _Run(store, run_id, on_conflict)
        if fan and _fanned(run, sources, fan, options, retry_rejected, summary, on_source, folders):
            return summary
        since_commit = 0
        try:
            for reader, source, found_in in sources:
                status, facts = run.manifest.status(source)
                if status == "unchanged" and retry_rejected and run.manifest.entries[source.key]["n_rejected"]:
                    status = "retried"
                run.seen.add(source.key)
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
            run.manifest.keep_folders(folders.merged())
            run.commit()
            _read_again(run, sources, options, summary, on_object)
            summary.reread = sorted(k for k in run.manifest.entries.keys_where("fingerprint", "")
                                    if run.manifest.entries[k].get("reader") == ECOTAXA)
        except BaseException:
            run.session.abort()
            raise
    return summary


def _fanned(run: _Run, sources: list, fan: FanOut, options: ReadOptions, retry_rejected: bool,
            summary: IngestSummary, on_source: Callable[[Source, str], None] | None, folders: Folders) -> bool:
    """Ingest `sources` in `fan`'s shards (`ingest.fanout`); False, having done nothing, when the run must be one
    process."""
    from plankton_cli.ingest.fanout import ingest_fanned, needs_one_process

    planned = []
    for reader, source, found_in in sources:
        status, facts = run.manifest.status(source)
        if status == "unchanged" and retry_rejected and run.manifest.entries[source.key]["n_rejected"]:
            status = "retried"
        planned.append((reader, source, found_in, status, facts))
    if all(status == "unchanged" for _, _, _, status, _ in planned):
        return False  # nothing to read: no shard to start (a nightly re-run)
    if needs_one_process(run, planned):
        log.info("a changed EcoTaxa source supersedes stored objects: this run reads its sources in one process")
        return False
    for _, source, _, status, _ in planned:
        summary.sources[status] += 1
        if on_source:
            on_source(source, status)
    run.manifest.keep_folders(folders.merged())  # a fanned-out run commits once, at its end
    try:
        ingest_fanned(run.store, run, planned, fan, options, summary)
        summary.reread = sorted(k for k in run.manifest.entries.keys_where("fingerprint", "")
                                if run.manifest.entries[k].get("reader") == ECOTAXA)
    except BaseException:
        run.session.abort()
        raise
    return True


def _read_again(run: _Run, sources: list, options: ReadOptions, summary: IngestSummary, on_object) -> None:
    """Read again, once, the EcoTaxa sources this run passed before a changed one was superseded (they may have
    skipped objects as twins of its old rows; see the module's docstring). What they skip now has a copy that
    stays, so they mark nothing more. The summary counts both readings (each adds up: read = stored + skipped +
    rejected); its sources count them as "read again"."""
    if not run.again:
        return
    run.marking = False
    for reader, source, found_in in sources:
        if source.key not in run.again:
            continue
        run.again.discard(source.key)
        status, facts = run.manifest.status(source)
        if status == "unchanged":  # a marked entry matches no source; only a source read twice ends here
            continue
        summary.sources["read again"] += 1
        run.forget(source.key)
        run.supersede(source)
        counts, data_files = _ingest_source(run, reader, source, options, summary, on_object)
        run.manifest.record(source, facts, counts, data_files, run.run_id, found_in, options)
    run.commit()


def _ingest_source(run: _Run, reader, source: Source, options: ReadOptions, summary: IngestSummary,
                   on_object) -> tuple[dict, list[str]]:
    counts = Counter(read=0, stored=0, skipped=0, rejected=0, twins=0)
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
            item = _store_record(run, item, source, now, counts, data_files, summary)
        if isinstance(item, Rejection):
            _reject(run, item, source, now, counts, summary)
    summary.add_source(counts, source.reader)
    return dict(counts), data_files


def _store_record(run: _Run, rec: Record, source: Source, now: datetime, counts: Counter,
                  data_files: list[str], summary: IngestSummary) -> Rejection | None:
    row = _prepare(rec, source, run.run_id, now)
    if isinstance(row, Rejection):
        return row
    verdict = _admit(run, _Candidate.of(row), source, counts, summary)
    if verdict is True:
        data_files.append(run.session.add(DATASET, row))
    return verdict if isinstance(verdict, Rejection) else None


def _prepare(rec: Record, source: Source, run_id: str, now: datetime) -> dict | Rejection:
    """The row a record becomes, or why it cannot be stored whatever the store holds (the costly part: the image
    is decoded and hashed; it runs in the shards of a fanned-out run)."""
    if rec.label is not None and rec.label.strip().casefold() == UNCLASSIFIED:
        return Rejection(rec.source_file, rec.source_row, f"reserved label: {rec.label!r} is predict's own label "
                         "for objects below their class threshold; rename the class (folder or category)",
                         rec.object_id)
    try:
        img = check(rec.image)
    except ImageError as exc:
        return Rejection(rec.source_file, rec.source_row, str(exc), rec.object_id)
    return {
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
        "ingest_run": run_id,
        "ingested_at": now,
        "metadata": _pairs(rec.metadata),
    }


@dataclass(frozen=True, slots=True)
class _Candidate:
    """What deciding whether a prepared row is stored needs of it (a fanned-out run reads only these columns)."""

    object_id: str
    content_hash: str
    label: str | None
    source_file: str
    source_row: int | str
    ecotaxa_id: bool  # it carries EcoTaxa's own object id (its twins are looked for)

    @classmethod
    def of(cls, row: dict) -> _Candidate:
        return cls(row["object_id"], row["content_hash"], row["label"], row["source_file"], row["source_row"],
                   any(key == ECOTAXA_ID for key, _ in row["metadata"]))


def _admit(run: _Run, cand: _Candidate, source: Source, counts: Counter, summary: IngestSummary
           ) -> Rejection | bool:
    """Whether the prepared row `cand` is stored (True), skipped (False: already stored) or rejected (a conflict),
    given what the store and this run hold; a stored one is noted as this run's. Cheap, and run in source order:
    a fanned-out run decides here, in one process, exactly as one process does."""
    earlier = run.stored_ids.get(cand.object_id)
    stored = run.existing.get(cand.object_id)
    if stored is not None and stored.source_key not in run.superseded and earlier is None:
        earlier = stored
    if earlier is not None:
        if earlier.content_hash == cand.content_hash:
            counts["skipped"] += 1  # the same object again
            return False
        if run.on_conflict != "replace" or earlier.file is None or earlier.source_key == source.key:
            return Rejection(cand.source_file, cand.source_row,
                             f"conflict: object id {cand.object_id!r} is already stored with other pixels from "
                             f"{earlier.source_file} (source {earlier.source_key}); see --on-conflict",
                             cand.object_id)
        run.replaced.setdefault(earlier.file, set()).add(cand.object_id)
        if earlier.source_key in run.manifest.entries:  # the replaced source keeps one row fewer
            run.manifest.entries[earlier.source_key]["n_stored"] -= 1
            run.manifest.dirty = True
    elif source.reader == ECOTAXA and cand.ecotaxa_id:
        twin = run.twin(cand.object_id, cand.label, cand.content_hash)
        if twin is not None:  # the same EcoTaxa object from another layout of the export: one object
            counts["skipped"] += 1
            counts["twins"] += 1
            if len(summary.twin_examples) < 3:
                summary.twin_examples.append([cand.object_id, twin])
            log.debug("skipped %s: the same EcoTaxa object and image as %s, already stored", cand.object_id, twin)
            return False
        other = run.by_image.get((_local_id(cand.object_id) or "", cand.content_hash))
        if other is not None and other[0] != cand.object_id:  # the same object, but EcoTaxa now says another label
            summary.relabelled += 1
            if len(summary.relabelled_examples) < 3:
                summary.relabelled_examples.append([cand.object_id, cand.label, *other])
    run.stored_ids[cand.object_id] = _Stored(source.key, cand.source_file, cand.content_hash, None)
    if source.reader == ECOTAXA and cand.ecotaxa_id and (local := _local_id(cand.object_id)):
        run.run_twins.setdefault((local, cand.content_hash, cand.label), (cand.object_id, source.key))
        run.by_image.setdefault((local, cand.content_hash), (cand.object_id, cand.label))
    counts["stored"] += 1
    if cand.label:
        summary.labels.add(cand.label)
    return True


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
