"""Atomic multi-file commits for the store.

A writer stages every new file under `STORE/.staging/<txn>/` (invisible to Parquet readers, which skip names
starting with `.` or `_`). To commit, it writes a journal `STORE/.journal/<txn>.json` listing the renames and
deletions, then applies them and removes the journal. A crash before the journal exists leaves the store as it
was (the staging folder is swept on the next open); a crash after it is finished by `recover()` on the next
open, because applying a journal twice is harmless. So the store is always either before or after a commit.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from plankton_cli.atomic import atomic_write_bytes, fsync_dir
from plankton_cli.errors import StoreIOError


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


class Transaction:
    def __init__(self, root: Path, run_id: str | None = None):
        self.root = root
        self.id = run_id or new_run_id()
        self.staging = root / ".staging" / self.id
        self._adds: list[tuple[str, str]] = []  # (staged, final), relative to root
        self._deletes: list[str] = []

    def stage(self, final: str | Path) -> Path:
        """A path to write a new file to; it appears at `final` (relative to the store) on commit."""
        final = Path(final)
        staged = self.staging / final
        staged.parent.mkdir(parents=True, exist_ok=True)
        self._adds.append((str(staged.relative_to(self.root)), str(final)))
        return staged

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
        for staged, _ in self._adds:
            with open(self.root / staged, "rb") as f:
                os.fsync(f.fileno())
        journal = self.root / ".journal" / f"{self.id}.json"
        atomic_write_bytes(journal, json.dumps({"adds": self._adds, "deletes": self._deletes}).encode(), durable=True)
        _apply(self.root, journal)

    def abort(self) -> None:
        _remove_staging(self.root, self.id)


def _remove_staging(root: Path, txn_id: str) -> None:
    shutil.rmtree(root / ".staging" / txn_id, ignore_errors=True)
    try:
        (root / ".staging").rmdir()  # only when no other transaction is staging
    except OSError:
        pass


def _apply(root: Path, journal: Path) -> None:
    try:
        plan = json.loads(journal.read_text())
        plan["adds"], plan["deletes"]  # noqa: B018 - both keys or the journal is not one
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreIOError(f"{journal}: invalid commit journal ({exc!r}); the store cannot be opened for writing "
                           f"until it is repaired", path=journal) from exc
    for staged, final in plan["adds"]:
        src, dst = root / staged, root / final
        if src.exists():  # already moved by an earlier, interrupted apply
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            fsync_dir(dst.parent)
    for final in plan["deletes"]:
        (root / final).unlink(missing_ok=True)
    journal.unlink()
    _remove_staging(root, journal.stem)


def recover(root: Path) -> int:
    """Finish commits whose journal was written, drop staging of ones that never committed. Call under the lock."""
    finished = 0
    journals = root / ".journal"
    if journals.is_dir():
        for journal in sorted(journals.glob("*.json")):
            _apply(root, journal)
            finished += 1
        for tmp in journals.glob(".*.tmp"):  # a journal whose own write was interrupted: never committed
            tmp.unlink(missing_ok=True)
    shutil.rmtree(root / ".staging", ignore_errors=True)
    return finished
