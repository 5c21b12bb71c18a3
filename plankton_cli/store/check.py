"""`plankton check [--repair]`: is every committed file there and intact, does the manifest match the data, is
every object stored once?

An interrupted commit is finished first, as any writer would. Problems are named one per line and carry an exit
code: 74 for damage to files (missing, unreadable, wrong checksum, a commit that cannot be finished), 65 for data
that disagrees with itself (manifest against data, duplicate ids, files outside the committed list).

`repair()` makes the store whole again from what is left plus the sources: every readable journal is finished,
an unreadable one (and one whose files are gone) is moved aside to `.quarantine/` and reported, an unreadable
`committed.json` is rebuilt from the data files on disk, damaged files leave the committed list, the sources
that had rows in them are read again from where ingest found them (the manifest's `discovered_from`), files
outside the list are deleted, over-long file names are renamed, and the manifest is rebuilt from the data.

A repair is resumable: the commit that drops a source's rows keeps its manifest entry, marked to be read again
(no fingerprint or checksum, its old row count), so a repair killed before reading it again leaves a manifest
that disagrees with the data; the next `check` says so and the next repair (or ingest) reads the source again.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli.core.errors import DataError, StoreIOError, UsageError
from plankton_cli.store import Store
from plankton_cli.store.layout import (COMMITTED, MANIFEST, MANIFEST_FILES, MAX_NAME_BYTES, UnreadableFileList,
                                       checksum, file_stats, hidden, read_committed, read_totals, totals_of,
                                       write_committed)
from plankton_cli.store.lock import StoreLock
from plankton_cli.store.manifest import Manifest, fingerprint
from plankton_cli.store.manifest import checksum as source_checksum
from plankton_cli.store.schema import load_schema
from plankton_cli.store.session import WriteSession
from plankton_cli.store.transaction import (JOURNALS, UnfinishableCommit, UnreadableJournal, new_run_id,
                                            quarantine, recover)

IO = StoreIOError.exit_code
DATA = DataError.exit_code
UNIQUE_KEYS = {"objects": ["object_id"], "padded": ["object_id"], "predictions": ["object_id", "model_hash"]}


@dataclass(frozen=True)
class Problem:
    kind: str  # "missing", "damaged", "unreadable", "journal", "manifest", "duplicate", "uncommitted", "long-name",
    # "totals"
    path: str  # store-relative file, or "" for the store as a whole
    detail: str
    exit_code: int

    def __str__(self) -> str:
        return f"{self.kind}: {self.path + ': ' if self.path else ''}{self.detail}"


@dataclass
class CheckReport:
    store: str
    files: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    # objects stored once per collection that are one object (`collection_twins`): not damage, but counted twice
    twins: list[list[str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        codes = {p.exit_code for p in self.problems}
        return IO if IO in codes else DATA if codes else 0

    def to_dict(self) -> dict:
        return {"store": self.store, "files": self.files, "ok": not self.problems, "exit_code": self.exit_code,
                "problems": [{"kind": p.kind, "path": p.path, "detail": p.detail} for p in self.problems],
                "repaired": self.repaired, "duplicates_across_collections": self.twins}


def check(store: Store, *, lock_timeout: float = 60.0, since: datetime | str | None = None) -> CheckReport:
    """Verify `store` under its writer lock, after finishing an interrupted commit as every writer would.

    `since` (a time, or a commit/run id such as `20240101T230000Z-1a2b3c`) verifies only the files committed
    since then and the manifest (present, size, checksum, readable): a night's files, in the night's time. The
    checks across the whole store (manifest against data, ids stored once, files outside the list) need it all
    and are left to a full `check`."""
    cutoff = None if since is None else _cutoff(since)
    with StoreLock(store.root, timeout=lock_timeout):
        try:
            recover(store.root)
        except StoreIOError as exc:
            report = _check(store, cutoff)
            report.problems.insert(0, Problem("journal", "", str(exc), IO))
            return report
        return _check(store, cutoff)


_COMMIT_ID = re.compile(r"\d{8}T\d{6}Z(?:-[0-9a-f]+)*")
_FILE_COMMIT = re.compile(r"part-(\d{8}T\d{6}Z-[0-9a-f]+(?:-\d+)?)-\d+\.parquet")


def _cutoff(since: datetime | str) -> str:
    """`since` as the text commit ids sort by (`transaction.new_run_id`: UTC time, then a random part)."""
    if isinstance(since, datetime):
        return since.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    if not _COMMIT_ID.fullmatch(since):
        raise UsageError(f"--since {since!r}: give a date or time (2024-01-31, 2024-01-31T23:00) or a commit id "
                         "(20240131T230000Z-1a2b3c, as data file names carry it)")
    return since


def _committed_since(rel: str, cutoff: str) -> bool:
    """Whether store file `rel` was committed at or after `cutoff` (a file whose name has no commit id: yes)."""
    found = _FILE_COMMIT.fullmatch(Path(rel).name)
    return found is None or found.group(1) >= cutoff


def _check(store: Store, cutoff: str | None = None) -> CheckReport:
    root = store.root
    report = CheckReport(str(root))
    add = report.problems.append
    try:
        files = read_committed(root)
    except UnreadableFileList as exc:  # which files make up the store is unknown: nothing else can be checked
        add(Problem("unreadable", COMMITTED, str(exc).removeprefix(f"{root / COMMITTED}: "), IO))
        return report
    if files is None:
        files = {rel: {"size": None, "checksum": None} for rel in store_files_on_disk(root)}
    if cutoff is not None:
        files = {rel: entry for rel, entry in files.items() if _committed_since(rel, cutoff)}
    report.files = len(files)
    for rel, entry in sorted(files.items()):
        damage = _check_file(root / rel, entry)
        if damage:
            add(Problem(damage[0], rel, damage[1], IO))
    for rel in sorted(files):
        if len(Path(rel).name.encode()) > MAX_NAME_BYTES:
            add(Problem("long-name", rel, f"file name of {len(Path(rel).name.encode())} bytes, over "
                        f"{MAX_NAME_BYTES}: rewrites near the file system's 255-byte limit fail; "
                        "`check --repair` renames it", DATA))
    if cutoff is not None:  # the rest reads the whole store
        return report
    if (totals := read_totals(root)) is not None and totals != totals_of(files):
        add(Problem("totals", COMMITTED, "the running totals on its first line disagree with its file list "
                    "(`plankton info` reports them); `check --repair` adds them up again", DATA))
    for rel in sorted(set(store_files_on_disk(root)) - set(files)):
        add(Problem("uncommitted", rel, "a data file outside the committed list (plain Parquet readers see it)",
                    DATA))
    damaged = {p.path for p in report.problems if p.exit_code == IO}
    intact = {rel for rel in files if rel not in damaged}
    for problem in _check_duplicates(store, intact):
        add(problem)
    for problem in _check_manifest(store, files, intact):
        add(problem)
    report.twins = collection_twins(store, [p for p in store.files("objects")
                                            if str(p.relative_to(root)) in intact])
    return report


def collection_twins(store: Store, files: list[Path] | None = None, run: str | None = None) -> list[list[str]]:
    """Groups of objects stored under different collections that are one object: the same id within their
    collection (`<collection>/<id>`, e.g. the EcoTaxa object id) and the same image (`content_hash`). Ingesting
    one EcoTaxa export in two layouts (by acquisition, backup, DOI) did this (each layout is its own collection)
    before ingest skipped such EcoTaxa objects; image folders under two collection names still do. With `run`,
    only groups that ingest run added to."""
    def keys(batch: pa.RecordBatch) -> Iterator[tuple[str, tuple[str, str]]]:
        for object_id, content_hash in zip(batch["object_id"].to_pylist(), batch["content_hash"].to_pylist()):
            _, sep, local = object_id.partition("/")
            if sep:  # an id without a collection has no twin in another one
                yield object_id, (local, content_hash)

    dataset = store.dataset("objects", files)
    wanted = None  # with `run`: only the keys of its objects, so a nightly ingest holds its own ids, not the store's
    if run is not None:
        mine = dataset.to_batches(columns=["object_id", "content_hash"], filter=pc.field("ingest_run") == run)
        wanted = {key for batch in mine for _, key in keys(batch)}
        if not wanted:
            return []
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for batch in dataset.to_batches(columns=["object_id", "content_hash"]):
        for object_id, key in keys(batch):
            if wanted is None or key in wanted:
                groups[key].append(object_id)
    return sorted(sorted(ids) for ids in groups.values() if len(ids) > 1)


def twins_line(twins: list[list[str]]) -> str:
    """One line about `collection_twins`, with what to do."""
    return (f"{len(twins)} objects are stored more than once (up to {max(map(len, twins))} times) under different "
            f"collections "
            f"(the same object id and image, e.g. {' = '.join(twins[0])}): training and counts see them more than "
            f"once; ingest one export layout (or image folder), or give each the same --collection so the copies "
            f"are skipped")


def store_files_on_disk(root: Path) -> list[str]:
    """Store-relative Parquet files in the datasets' folders (what a plain Parquet reader would see)."""
    found = []
    for top in sorted(root.iterdir()) if root.is_dir() else []:
        if top.is_dir() and not hidden(top.name):
            found += [str(p.relative_to(root)) for p in top.rglob("*.parquet")
                      if not any(hidden(part) for part in p.relative_to(top).parts)]
    return found + [name for name in MANIFEST_FILES if (root / name).is_file()]


def _check_file(path: Path, entry: dict) -> tuple[str, str] | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing", "committed but not on disk"
    if entry.get("size") is not None and size != entry["size"]:
        return "damaged", f"{size} bytes, committed with {entry['size']}"
    try:
        if entry.get("checksum") is not None and checksum(path) != entry["checksum"]:
            return "damaged", "checksum differs from the committed one"
        pq.ParquetFile(path).metadata  # noqa: B018 - reading the footer is the check
    except (OSError, pa.ArrowException) as exc:
        return "unreadable", str(exc).splitlines()[0]
    return None


def _check_duplicates(store: Store, intact: set[str]) -> list[Problem]:
    problems = []
    for dataset, key in UNIQUE_KEYS.items():
        seen: dict[tuple, str] = {}
        for path in store.files(dataset):
            rel = str(path.relative_to(store.root))
            if rel not in intact:
                continue
            table = pq.read_table(path, columns=key)
            for values in zip(*(table[c].to_pylist() for c in key)):
                if values in seen:
                    what = ", ".join(map(str, values))
                    problems.append(Problem("duplicate", rel, f"{dataset} row {what} is also in {seen[values]}",
                                            DATA))
                else:
                    seen[values] = rel
    return problems


def _rows_by_source(store: Store, intact: set[str]) -> tuple[Counter, dict[str, set[str]]]:
    """Rows per source_key in `objects`, and the data files holding each source's rows."""
    rows: Counter = Counter()
    where: dict[str, set[str]] = defaultdict(set)
    for path in store.files("objects"):
        rel = str(path.relative_to(store.root))
        if rel not in intact:
            continue
        counts = pc.value_counts(pq.read_table(path, columns=["source_key"])["source_key"]).to_pylist()
        for item in counts:
            rows[item["values"]] += item["counts"]
            where[item["values"]].add(rel)
    return rows, where


def _check_manifest(store: Store, files: dict, intact: set[str]) -> list[Problem]:
    rows, _ = _rows_by_source(store, intact)
    parts = [name for name in MANIFEST_FILES if name in files]
    if not parts or any(name not in intact for name in parts):  # a damaged part is reported as such
        if rows and MANIFEST not in files:
            return [Problem("manifest", MANIFEST, f"missing while {len(rows)} sources have rows: the next ingest "
                            "would read them all again", DATA)]
        return []
    problems = []
    entries = Manifest(store.root).entries
    for key, entry in sorted(entries.items()):
        if rows.get(key, 0) != entry["n_stored"]:
            problems.append(Problem("manifest", MANIFEST, f"source {key}: {entry['n_stored']} rows stored, "
                                    f"{rows.get(key, 0)} in the data; `check --repair` reads it again", DATA))
    for key in sorted(set(rows) - set(entries)):
        problems.append(Problem("manifest", MANIFEST, f"source {key}: {rows[key]} rows in the data but not in the "
                                "manifest", DATA))
    return problems


def repair(store: Store, ingest: Callable[..., Any], *, lock_timeout: float = 60.0) -> CheckReport:
    """Repair what `check` finds, then check again (the returned report is that second check's).

    `ingest` is `plankton_cli.ingest.ingest`, passed in because the store sits below ingest: it reads the sources
    of lost files again."""
    done: list[str] = []
    with StoreLock(store.root, timeout=lock_timeout):
        _rebuild_file_list(store.root, done)
        _finish_or_set_aside(store.root, done)
        _add_up_totals(store.root, done)
        report = _check(store)
        lost = {p.path for p in report.problems if p.kind in ("missing", "damaged", "unreadable")}
        stray = {p.path for p in report.problems if p.kind == "uncommitted"}
        long_names = {p.path for p in report.problems if p.kind == "long-name"} - lost
        reread = _rebuild(store, lost, stray, long_names, done)
    for path, reader, options in sorted(reread):  # ingest takes the lock itself
        summary = ingest(store, [Path(path)], fmt=reader, options=Manifest.read_options({"read_options": options}),
                         lock_timeout=lock_timeout)
        done.append(f"read {path} again: {summary.stored} objects stored")
    with StoreLock(store.root, timeout=lock_timeout):
        final = _check(store)
    final.repaired = done
    return final


def _finish_or_set_aside(root: Path, done: list[str]) -> None:
    """Finish every journal that can be finished; move the others (unreadable, or their files gone) aside.

    The readable journals roll forward first, whatever their order: one unreadable journal must never cost the
    store a commit that is whole (`recover` applies every finishable journal before it raises)."""
    pending = set((root / JOURNALS).glob("*.json"))
    set_aside = set()
    while True:
        try:
            recover(root)
            break
        except (UnreadableJournal, UnfinishableCommit) as exc:
            journal = Path(exc.path or "")
            aside = quarantine(root, journal)
            set_aside.add(journal)
            what = "an unreadable journal" if isinstance(exc, UnreadableJournal) else "a commit that cannot be finished"
            done.append(f"set aside {what}: {journal.name} moved to {aside.relative_to(root)} ({exc})")
    if finished := len(pending - set_aside):  # every journal not set aside was applied
        done.append(f"finished {finished} interrupted commit{'s' if finished > 1 else ''}")


def _rebuild_file_list(root: Path, done: list[str]) -> None:
    """Write `committed.json` again from the data files on disk when it cannot be read.

    This comes before the journals are finished: a journal holds the change it makes to the list, applied to the
    rebuilt one. On disk are the files of the last finished commit, plus those a pending journal already moved into
    place, and still those it replaces (it deletes them once its list is written): applied next, the journal lists
    and removes them as it would have. A file that cannot be read is left out (and, being outside the list, deleted
    with the strays)."""
    try:
        read_committed(root)
        return
    except UnreadableFileList:
        pass
    files = {}
    for rel in store_files_on_disk(root):
        try:
            pq.read_metadata(root / rel)
        except (OSError, pa.ArrowException):
            continue
        files[rel] = {"size": (root / rel).stat().st_size, "checksum": checksum(root / rel),
                      "stats": file_stats(root / rel)}
    write_committed(root, files, totals_of(files))
    done.append(f"rebuilt {COMMITTED} from the {len(files)} readable files on disk")


def _add_up_totals(root: Path, done: list[str]) -> None:
    """Add the running totals up again from the file list when they disagree with it."""
    listed = read_committed(root)
    if listed is not None and read_totals(root) not in (None, totals_of(listed)):
        write_committed(root, listed, totals_of(listed))
        done.append(f"added up the totals of {COMMITTED} again")


def _rebuild(store: Store, lost: set[str], stray: set[str], long_names: set[str], done: list[str]
             ) -> set[tuple[str, str, str | None]]:
    """One commit: drop `lost` files from the list and `stray` files from disk, rename `long_names`, remove what
    is left of the sources that lost rows (marking them in the manifest to be read again), rebuild the manifest
    from the data. Returns what to read again: (path, reader, the read options ingest had, as JSON)."""

    root = store.root
    old = Manifest(root) if not lost & set(MANIFEST_FILES) and (root / MANIFEST).exists() else None
    old_entries = old.entries if old else {}
    intact = {str(p.relative_to(root)) for p in store.files("objects")} - lost
    rows, where = _rows_by_source(store, intact)
    hit = set()  # sources that lost rows (now, or in an earlier repair that did not finish) and can be read again
    for key, e in old_entries.items():
        if lost & set(e["data_files"]) or rows.get(key, 0) != e["n_stored"]:
            if all(Path(f).exists() for f in e["files"]):
                hit.add(key)
            else:
                done.append(f"source {key} lost rows and its files are gone: it cannot be read again")
    session = WriteSession(root, new_run_id(), "check")
    for rel in sorted(lost | stray):
        session.delete(rel)
        done.append(f"removed {rel} ({'damaged or missing' if rel in lost else 'not committed'})")
    for rel in stray:
        (root / rel).unlink(missing_ok=True)  # never committed: no reader of the list sees it
    renamed: dict[str, str | None] = {}  # data file -> the file that replaces it in this commit (None: no rows left)
    schema = load_schema("objects")
    if hit:  # what is left of a source that lost rows goes too: it is read again whole
        keys = pa.array(sorted(hit), pa.string())
        for rel in sorted(intact):
            table = pq.read_table(root / rel, schema=schema.file_schema)
            drop = pc.is_in(table["source_key"], keys)
            if pc.any(drop).as_py():
                renamed[rel] = session.remove_rows(rel, table, drop, schema)
    for rel in sorted(long_names - set(renamed)):  # the same bytes under a fresh short name
        new = session.txn.new_name(Path(rel).parent)
        shutil.copyfile(root / rel, session.stage(new))
        session.delete(rel)
        renamed[rel] = new
        done.append(f"renamed {rel} to {new} (its name was over {MAX_NAME_BYTES} bytes)")
    manifest = Manifest(root, entries={})
    for key in sorted(set(rows) | set(old_entries)):  # sources with rows, and those all of whose objects were rejected
        if key in hit:  # to be read again: ingest takes it for changed; until then `check` sees its rows missing
            manifest.entries[key] = {**old_entries[key], "fingerprint": "", "checksum": "", "data_files": []}
            continue
        entry = old_entries.get(key) or _entry_from_data(key, store)
        if entry is None:
            continue
        files = {renamed.get(f, f) for f in where.get(key, ())}
        manifest.entries[key] = {**entry, "n_stored": rows.get(key, 0), "data_files": sorted(f for f in files if f)}
    manifest.stage(session)
    if not (old and old.entries == manifest.entries):
        done.append(f"rebuilt the manifest from the data ({len(manifest.entries)} sources)")
    session.commit()
    return {(e["discovered_from"] or str(Path(e["files"][0]).parent), e["reader"], e.get("read_options"))
            for key, e in old_entries.items() if key in hit}


def _entry_from_data(key: str, store: Store) -> dict | None:
    """A manifest entry for a source known only from its rows: its files found again through its reader."""
    from datetime import UTC, datetime

    from plankton_cli.core import plugins
    from plankton_cli.core.records import ReadOptions

    table = store.dataset("objects").to_table(columns=["source_key", "source_file", "ingest_run"],
                                              filter=pc.field("source_key") == key)
    source_file = Path(table["source_file"][0].as_py())
    folder = source_file.parent
    if not folder.exists():
        return None
    name = plugins.sniff_reader(source_file) or plugins.sniff_reader(folder)
    if name is None:
        return None
    for source in plugins.load("reader", name).discover(folder, ReadOptions()):
        if source.key == key:
            fp, size = fingerprint(source.files)
            return {"source_key": key, "reader": name, "files": [str(f) for f in source.files],
                    "discovered_from": None, "size": size, "fingerprint": fp,
                    "checksum": source_checksum(source.files), "n_read": table.num_rows,
                    "n_stored": table.num_rows, "n_skipped": 0, "n_rejected": 0,
                    "run": table["ingest_run"][0].as_py(), "ingested_at": datetime.now(UTC)}
    return None
