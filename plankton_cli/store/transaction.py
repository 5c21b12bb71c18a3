"""Atomic multi-file commits for the store.

A writer stages every new file under `STORE/.staging/<txn>/` (invisible to Parquet readers, which skip names
starting with `.` or `_`). To commit it flushes the staged files, then writes a journal `STORE/.journal/<txn>.json`
holding the renames, the deletions, and the entries the commit adds to the store's file list (each file's size,
checksum and stats, `layout.file_stats`: what nightly steps find their files by, so they never open the rest) with
the store's new running totals: what the commit changes, never the whole list, so its cost follows the commit and
not the store's age. The journal reaching the disk is the commit point:

- Before it, the commit can be abandoned: `abort()` deletes the staging folder and the store is as it was.
- After it, the commit only rolls forward. `abort()` leaves everything in place (an I/O error while applying must
  not destroy the staged files the journal points to); `recover()` on the next open finishes the journal. Applying
  is idempotent: staged files are renamed into place, `committed.json` (the file list readers use, see
  `layout.py`) is replaced atomically by the list with the journal's entries set and its deletions taken out (the
  same list again when it already was), and only then are the old files deleted and the journal removed.
- `recover()` first checks that every file the journal adds is there (staged or already moved); if one is
  missing it refuses and deletes nothing. A journal that cannot be read at all (garbage, truncated by a broken
  disk) is skipped, never guessed at: the readable journals are finished first, then the unreadable one is
  reported (`UnreadableJournal`). Only `plankton check --repair` moves such journals aside (`quarantine()`), with
  their staged files, into `STORE/.quarantine/`: nothing a journal points to is ever deleted by a repair.

So readers of `committed.json` always see the store before or after a commit, and no error or crash loses a row.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from plankton_cli.core.atomic import atomic_write_bytes, fsync_dir
from plankton_cli.core.errors import StoreIOError
from plankton_cli.store.layout import (committed_entry, fold_totals, listed_files, read_committed,
                                      read_totals, stats_of, totals_of, write_committed)

JOURNALS = ".journal"
STAGING = ".staging"
QUARANTINE = ".quarantine"


class UnreadableJournal(StoreIOError):
    """A journal whose plan cannot be read: whether it committed cannot be known, so it is kept, not applied."""


class UnfinishableCommit(StoreIOError):
    """A readable journal some of whose added files are gone: applying it would list files that do not exist."""


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


class Transaction:
    def __init__(self, root: Path, run_id: str | None = None):
        self.root = root
        self.id = run_id or new_run_id()
        self.staging = root / STAGING / self.id
        self.journaled = False  # past the commit point: from here on only roll forward
        self._adds: list[tuple[str, str]] = []  # (staged, final), relative to root
        self._deletes: list[str] = []
        self._adopted: dict[str, dict] = {}  # staged -> its committed-file entry, for files staged elsewhere
        self._names = 0

    def new_name(self, folder: str | Path) -> str:
        """A fresh, short data-file name in `folder` (store-relative) for this transaction.

        Names carry the transaction id and a counter, never the name of a file they replace: a source rewritten a
        thousand times still gets names of the same length (a file's history is in the journals and manifest)."""
        self._names += 1
        return str(Path(folder) / f"part-{self.id}-{self._names:04d}.parquet")

    def stage(self, final: str | Path) -> Path:
        """A path to write a new file to; it appears at `final` (relative to the store) on commit."""
        final = Path(final)
        staged = self.staging / final
        staged.parent.mkdir(parents=True, exist_ok=True)
        self._adds.append((str(staged.relative_to(self.root)), str(final)))
        return staged

    def adopt(self, staged: str, final: str, entry: dict) -> None:
        """Move a file another process staged inside the store (a shard's, `shards.py`: flushed, its `entry`, size
        and checksum, measured there) to `final` on commit."""
        if not (self.root / staged).is_file():
            raise FileNotFoundError(self.root / staged)
        self._adds.append((staged, final))
        self._adopted[staged] = entry

    def delete(self, final: str | Path) -> None:
        """Remove `final` (relative to the store) on commit."""
        self._deletes.append(str(final))

    @property
    def empty(self) -> bool:
        return not self._adds and not self._deletes

    def commit(self) -> None:
        if self.empty:
            self.abort()
            return
        files = read_committed(self.root)
        listed = files is not None
        if files is None:
            files = _as_found(self.root)
        if not self._adds and not any(rel in files for rel in self._deletes):
            # Nothing of the list changes (e.g. predict consuming an empty spool): the files go, the list stays as it
            # is rather than being rewritten whole. Deleting them needs no journal: none is a committed file.
            for rel in self._deletes:
                (self.root / rel).unlink(missing_ok=True)
            self.abort()
            return
        totals = read_totals(self.root)
        added = {final for _, final in self._adds}
        self._deletes = [rel for rel in self._deletes if rel not in added]  # replaced by the add: keep the new one
        for rel in [*self._deletes, *added]:  # what the commit deletes or replaces leaves the totals
            if rel in files and totals is not None:
                fold_totals(totals, rel, files[rel], -1)
        for rel in self._deletes:
            files.pop(rel, None)
        changed: dict[str, dict] = {}  # the list's new and changed entries
        for staged, final in self._adds:
            if staged in self._adopted:  # flushed and measured by the process that staged it
                changed[final] = self._adopted[staged]
            else:
                with open(self.root / staged, "rb") as f:
                    os.fsync(f.fileno())
                changed[final] = committed_entry(self.root, staged, final)
            if totals is not None:
                fold_totals(totals, final, changed[final], +1)
        for rel, entry in files.items():  # a store from before stats: its files get them once, at this commit
            if rel not in added and "stats" not in entry and rel.endswith(".parquet"):
                if (stats := stats_of(self.root, rel, None)) is not None:
                    changed[rel] = {**entry, "stats": stats}
                    totals = None
        files.update(changed)
        if totals is None:  # a list from before the totals (or stats): they are added up once, here
            totals = totals_of(files)
        for folder in sorted({(self.root / staged).parent for staged, _ in self._adds if staged not in self._adopted}):
            fsync_dir(folder)  # the staged names too must survive a power cut once the journal points to them
        # The journal holds the change to the list (its size follows the commit, not the store), or the whole list
        # for a store that had none.
        plan = {"adds": self._adds, "deletes": self._deletes, "totals": totals,
                **({"set": changed} if listed else {"files": files})}
        journal = self.root / JOURNALS / f"{self.id}.json"
        try:
            atomic_write_bytes(journal, json.dumps(plan).encode(), durable=True)
        finally:
            # A journal that got into place is a commit even if flushing its folder failed afterwards.
            self.journaled = journal.exists()
        _apply(self.root, journal)

    def abort(self) -> None:
        """Forget an uncommitted transaction. After the commit point this does nothing: `recover()` finishes it."""
        if not self.journaled:
            _remove_staging(self.root, self.id)


def _as_found(root: Path) -> dict[str, dict]:
    """The file list of a store without one (written before it existed): its files as found, checksums unknown."""
    return {rel: {"size": (root / rel).stat().st_size, "checksum": None} for rel in listed_files(root)}


def _remove_staging(root: Path, txn_id: str) -> None:
    shutil.rmtree(root / STAGING / txn_id, ignore_errors=True)
    try:
        (root / STAGING).rmdir()  # only when no other transaction is staging
    except OSError:
        pass


def _read_plan(journal: Path) -> dict:
    try:
        plan = json.loads(journal.read_bytes())
        adds, deletes = plan["adds"], plan["deletes"]
        if not all(isinstance(a, list) and len(a) == 2 and all(isinstance(p, str) for p in a) for a in adds) \
                or not all(isinstance(d, str) for d in deletes) \
                or not all(isinstance(plan.get(k, {}), dict) for k in ("files", "set")):
            raise ValueError("adds, deletes, files or set of the wrong shape")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UnreadableJournal(f"{journal}: unreadable commit journal ({type(exc).__name__}: {exc}); nothing was "
                                f"changed; run `plankton check --repair` on {journal.parent.parent} to set it aside",
                                path=journal) from exc
    return plan


def _apply(root: Path, journal: Path) -> None:
    plan = _read_plan(journal)
    missing = [final for staged, final in plan["adds"] if not (root / staged).exists() and not (root / final).exists()]
    if missing:
        raise UnfinishableCommit(f"{journal}: cannot finish this commit, {len(missing)} of its files are missing "
                                 f"(first: {missing[0]}); nothing was deleted; run `plankton check`", path=journal)
    moved_into: set[Path] = set()
    for staged, final in plan["adds"]:
        src, dst = root / staged, root / final
        if src.exists():  # else already moved by an earlier, interrupted apply
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            moved_into.add(dst.parent)
    for folder in sorted(moved_into):
        fsync_dir(folder)
    if "set" in plan:  # the change to the list: applied again to a list it was applied to, it changes nothing
        files = read_committed(root)
        if files is None:  # the list was deleted since
            files = _as_found(root)
        for final in plan["deletes"]:
            files.pop(final, None)
        write_committed(root, files | plan["set"], plan.get("totals"))
    elif "files" in plan:  # the whole list (a store that had none, or a journal of an earlier version)
        write_committed(root, plan["files"], plan.get("totals"))
    # else a journal of a version before the file list, in a store listed by its folders
    for final in plan["deletes"]:
        (root / final).unlink(missing_ok=True)
    journal.unlink()
    fsync_dir(journal.parent)  # a journal that came back after a power cut would replay an old file list
    _remove_staging(root, journal.stem)


def recover(root: Path) -> int:
    """Finish commits whose journal was written, drop staging of ones that never committed. Call under the lock.

    Every journal that can be finished is, even when another cannot; then the first failure is raised
    (`UnreadableJournal` or `UnfinishableCommit`) and the staging folders are kept: a journal left behind may
    point to them."""
    finished = 0
    failures: list[StoreIOError] = []
    journals = root / JOURNALS
    if journals.is_dir():
        for journal in sorted(journals.glob("*.json")):
            try:
                _apply(root, journal)
            except (UnreadableJournal, UnfinishableCommit) as exc:
                failures.append(exc)
                continue
            finished += 1
        for tmp in journals.glob(".*.tmp"):  # a journal whose own write was interrupted: never committed
            tmp.unlink(missing_ok=True)
    if failures:
        raise failures[0]
    shutil.rmtree(root / STAGING, ignore_errors=True)  # every journal is applied: what is left never committed
    return finished


def quarantine(root: Path, journal: Path) -> Path:
    """Move `journal` and its staging folder aside to `STORE/.quarantine/<id>/` (for `check --repair`): the store
    can be written again, and nothing the journal may have pointed to is destroyed. Returns the folder."""
    aside = root / QUARANTINE / journal.stem
    aside.mkdir(parents=True, exist_ok=True)
    staged = root / STAGING / journal.stem
    if staged.exists():
        os.replace(staged, aside / STAGING)
    os.replace(journal, aside / journal.name)
    fsync_dir(aside)
    fsync_dir(journal.parent)
    return aside
