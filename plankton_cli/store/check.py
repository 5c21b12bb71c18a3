"""`plankton check [--repair]`: is every committed file there and intact, does the manifest match the data, is
every object stored once?

An interrupted commit is finished first, as any writer would. Problems are named one per line and carry an exit
code: 74 for damage to files (missing, unreadable, wrong checksum, a commit that cannot be finished), 65 for data
that disagrees with itself (manifest against data, duplicate ids, files outside the committed list).

`repair()` makes the store whole again from what is left plus the sources: damaged files leave the committed
list, the sources that had rows in them are read again from where ingest found them (the manifest's
`discovered_from`), files outside the list are deleted, and the manifest is rebuilt from the data.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli.errors import DataError, StoreIOError
from plankton_cli.store import Store
from plankton_cli.store.layout import MANIFEST, checksum, hidden, read_committed
from plankton_cli.store.lock import StoreLock
from plankton_cli.store.manifest import Manifest, fingerprint
from plankton_cli.store.manifest import checksum as source_checksum
from plankton_cli.store.schema import load_schema
from plankton_cli.store.session import WriteSession
from plankton_cli.store.transaction import JOURNALS, new_run_id, recover

IO = StoreIOError.exit_code
DATA = DataError.exit_code
UNIQUE_KEYS = {"objects": ["object_id"], "padded": ["object_id"], "predictions": ["object_id", "model_hash"]}


@dataclass(frozen=True)
class Problem:
    kind: str  # "missing", "damaged", "unreadable", "journal", "manifest", "duplicate", "uncommitted"
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

    @property
    def exit_code(self) -> int:
        codes = {p.exit_code for p in self.problems}
        return IO if IO in codes else DATA if codes else 0

    def to_dict(self) -> dict:
        return {"store": self.store, "files": self.files, "ok": not self.problems, "exit_code": self.exit_code,
                "problems": [{"kind": p.kind, "path": p.path, "detail": p.detail} for p in self.problems],
                "repaired": self.repaired}


def check(store: Store, *, lock_timeout: float = 60.0) -> CheckReport:
    """Verify `store` under its writer lock, after finishing an interrupted commit as every writer would."""
    with StoreLock(store.root, timeout=lock_timeout):
        try:
            recover(store.root)
        except StoreIOError as exc:
            report = _check(store)
            report.problems.insert(0, Problem("journal", "", str(exc), IO))
            return report
        return _check(store)


def _check(store: Store) -> CheckReport:
    root = store.root
    report = CheckReport(str(root))
    add = report.problems.append
    files = read_committed(root)
    if files is None:
        files = {rel: {"size": None, "checksum": None} for rel in store_files_on_disk(root)}
    report.files = len(files)
    for rel, entry in sorted(files.items()):
        damage = _check_file(root / rel, entry)
        if damage:
            add(Problem(damage[0], rel, damage[1], IO))
    for rel in sorted(set(store_files_on_disk(root)) - set(files)):
        add(Problem("uncommitted", rel, "a data file outside the committed list (plain Parquet readers see it)",
                    DATA))
    intact = {rel for rel in files if not any(p.path == rel for p in report.problems)}
    for problem in _check_duplicates(store, intact):
        add(problem)
    for problem in _check_manifest(store, files, intact):
        add(problem)
    return report


def store_files_on_disk(root: Path) -> list[str]:
    """Store-relative Parquet files in the datasets' folders (what a plain Parquet reader would see)."""
    found = []
    for top in sorted(root.iterdir()) if root.is_dir() else []:
        if top.is_dir() and not hidden(top.name):
            found += [str(p.relative_to(root)) for p in top.rglob("*.parquet")
                      if not any(hidden(part) for part in p.relative_to(top).parts)]
    return found + ([MANIFEST] if (root / MANIFEST).is_file() else [])


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
    if MANIFEST not in intact:
        if rows and MANIFEST not in files:
            return [Problem("manifest", MANIFEST, f"missing while {len(rows)} sources have rows: the next ingest "
                            "would read them all again", DATA)]
        return []
    problems = []
    entries = Manifest(store.root).entries
    for key, entry in sorted(entries.items()):
        if rows.get(key, 0) != entry["n_stored"]:
            problems.append(Problem("manifest", MANIFEST, f"source {key}: {entry['n_stored']} rows stored, "
                                    f"{rows.get(key, 0)} in the data", DATA))
    for key in sorted(set(rows) - set(entries)):
        problems.append(Problem("manifest", MANIFEST, f"source {key}: {rows[key]} rows in the data but not in the "
                                "manifest", DATA))
    return problems


def repair(store: Store, *, lock_timeout: float = 60.0) -> CheckReport:
    """Repair what `check` finds, then check again (the returned report is that second check's)."""
    from plankton_cli.ingest import ingest

    done: list[str] = []
    with StoreLock(store.root, timeout=lock_timeout):
        try:
            if recover(store.root):
                done.append("finished an interrupted commit")
        except StoreIOError as exc:  # a journal whose files are gone: its commit can never be finished
            for journal in sorted((store.root / JOURNALS).glob("*.json")):
                journal.unlink()
            done.append(f"dropped an unfinishable commit ({exc})")
        report = _check(store)
        lost = {p.path for p in report.problems if p.kind in ("missing", "damaged", "unreadable")}
        stray = {p.path for p in report.problems if p.kind == "uncommitted"}
        reread = _rebuild(store, lost, stray, done)
    for path, reader in sorted(reread.items()):  # ingest takes the lock itself
        summary = ingest(store, [Path(path)], fmt=reader, lock_timeout=lock_timeout)
        done.append(f"read {path} again: {summary.stored} objects stored")
    with StoreLock(store.root, timeout=lock_timeout):
        final = _check(store)
    final.repaired = done
    return final


def _rebuild(store: Store, lost: set[str], stray: set[str], done: list[str]) -> dict[str, str]:
    """One commit: drop `lost` files from the list and `stray` files from disk, remove what is left of the
    sources that lost rows, rebuild the manifest from the data. Returns {path to read again: reader}."""

    root = store.root
    old = Manifest(root) if MANIFEST not in lost and (root / MANIFEST).exists() else None
    old_entries = old.entries if old else {}
    hit = set()  # sources that lost rows and can be read again
    for key, e in old_entries.items():
        if lost & set(e["data_files"]):
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
    intact = {str(p.relative_to(root)) for p in store.files("objects")} - lost
    schema = load_schema("objects")
    if hit:  # what is left of a source that lost rows goes too: it is read again whole
        keys = pa.array(sorted(hit), pa.string())
        for rel in sorted(intact):
            table = pq.read_table(root / rel, schema=schema.file_schema)
            drop = pc.is_in(table["source_key"], keys)
            if pc.any(drop).as_py():
                session.remove_rows(rel, table, drop, schema)
    rows, where = _rows_by_source(store, intact)
    manifest = Manifest(root, entries={})
    for key in sorted(set(rows) | set(old_entries)):  # sources with rows, and those all of whose objects were rejected
        if key in hit:
            continue
        entry = old_entries.get(key) or _entry_from_data(key, store)
        if entry is None:
            continue
        manifest.entries[key] = {**entry, "n_stored": rows.get(key, 0), "data_files": sorted(where.get(key, ()))}
    manifest.stage(session)
    if not (old and old.entries == manifest.entries):
        done.append(f"rebuilt the manifest from the data ({len(manifest.entries)} sources)")
    session.commit()
    return {e["discovered_from"] or str(Path(e["files"][0]).parent): e["reader"]
            for key, e in old_entries.items() if key in hit}


def _entry_from_data(key: str, store: Store) -> dict | None:
    """A manifest entry for a source known only from its rows: its files found again through its reader."""
    from datetime import UTC, datetime

    from plankton_cli import plugins
    from plankton_cli.records import ReadOptions

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
