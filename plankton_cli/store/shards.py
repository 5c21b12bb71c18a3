"""Files written by several processes, committed by one: the store side of a fanned-out run (`plankton_cli.jobs.fanout`).

A run split into shards (worker processes here, SLURM array tasks elsewhere) gets one folder,
`STORE/.spool/shards/<run>/` (hidden from Parquet readers; on a cluster the store must be on a file system every
node sees). Shard k writes its files through a `ShardSession`, a `WriteSession` whose transaction stages into
`<run>/<k>/` and, instead of committing, *seals*: it flushes its files and writes `<run>/<k>.sealed.json` atomically,
listing every file (where it is staged, where it goes) and the shard's result (its counts). A shard that fails or is
killed leaves no seal; one that is retried starts its folder again.

The run itself (`ShardSpace`) reads the seals once every shard has ended: a missing seal is `ShardsMissing`, naming
the shards, and nothing is committed. Otherwise one `Transaction` adopts the sealed files (`Transaction.adopt`) with
whatever else the run changes, and commits them in one journal: the store shows every shard's output or none. The
run holds an flock on `<run>/.lock` while it lives; a folder whose lock is free belongs to a run that ended, and the
next run removes it (`remove_ended`) under the store lock, after `recover()` finished every journal that might have
pointed into it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from plankton_cli.core.atomic import atomic_write_bytes, fsync_dir
from plankton_cli.core.errors import PlanktonError
from plankton_cli.store.layout import committed_entry
from plankton_cli.store.session import WriteSession
from plankton_cli.store.transaction import JOURNALS, Transaction

SHARDS = ".spool/shards"


class ShardsMissing(PlanktonError):
    """Some shards of a fanned-out run did not seal their output: nothing was committed; run the command again
    (exit 75, as for a job that ended without finishing)."""

    exit_code = 75


def _space(root: Path, run_id: str) -> Path:
    return Path(root) / SHARDS / run_id


class ShardTransaction(Transaction):
    """A transaction of one shard: stages into the run's shard folder and seals instead of committing."""

    def __init__(self, root: Path, run_id: str, index: int):
        super().__init__(root, f"{run_id}-s{index:04d}")  # file names carry the shard: shards never clash
        self.staging = _space(root, run_id) / str(index)
        self.seal_path = _space(root, run_id) / f"{index}.sealed.json"
        self.seal_path.unlink(missing_ok=True)  # a retried shard starts again
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)

    def commit(self) -> None:
        raise TypeError("a shard's transaction is sealed (ShardSession.seal), the run commits it")

    def seal(self, result: Any) -> None:
        files = []
        for staged, final in self._adds:
            with open(self.root / staged, "rb") as f:
                os.fsync(f.fileno())
            files.append([staged, final, committed_entry(self.root, staged, final)])
        for folder in sorted({(self.root / staged).parent for staged, _ in self._adds}):
            fsync_dir(folder)
        atomic_write_bytes(self.seal_path, json.dumps({"files": files, "result": result}).encode(), durable=True)


class ShardSession(WriteSession):
    """Shard `index` of run `run_id`: adds rows and rejections like any `WriteSession`, then `seal(result)`."""

    def __init__(self, root: Path, run_id: str, command: str, index: int):
        self.index = index
        super().__init__(root, run_id, command)

    def _begin(self) -> None:
        self.commits += 1
        self.txn = ShardTransaction(self.root, self.run_id, self.index)
        self._writers = {}

    def stage(self, final: str) -> Path:
        return self.txn.stage(final)

    def seal(self, result: Any) -> None:
        """Close the files and make them, and `result` (JSON), the shard's sealed output."""
        for w in self._writers.values():
            w.close()
        assert isinstance(self.txn, ShardTransaction)
        self.txn.seal(result)

    def commit(self) -> None:
        raise TypeError("a shard seals (ShardSession.seal); the run commits every shard at once")


@dataclass
class Sealed:
    """One shard's sealed output: files (store-relative staged path, final path, size and checksum) and its result."""

    index: int
    files: list[tuple[str, str, dict]]
    result: Any

    def adopt_into(self, txn: Transaction) -> None:
        """Commit every file of this shard with `txn`."""
        for staged, final, entry in self.files:
            txn.adopt(staged, final, entry)


class ShardSpace:
    """The run's side: its shard folder, held (flock) while the run lives; the shards' seals; adoption."""

    def __init__(self, root: Path, run_id: str):
        self.root = Path(root)
        self.run_id = run_id
        self.folder = _space(root, run_id)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock: IO[bytes] | None = open(self.folder / ".lock", "wb")  # noqa: SIM115 - held until close()
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def sealed(self, shards: int, where: str = "") -> list[Sealed]:
        """Every shard's seal, in shard order; `ShardsMissing` naming those without one (`where`: their logs)."""
        found, missing = [], []
        for k in range(shards):
            path = self.folder / f"{k}.sealed.json"
            if not path.exists():
                missing.append(k)
                continue
            seal = json.loads(path.read_bytes())
            found.append(Sealed(k, [(s, f, e) for s, f, e in seal["files"]], seal["result"]))
        if missing:
            names = ", ".join(map(str, missing))
            raise ShardsMissing(f"{len(missing)} of {shards} shards did not finish (shard {names}){where}; nothing "
                                f"was committed: the store is unchanged; run the command again", path=self.folder)
        return found

    def close(self) -> None:
        """Remove the folder (after the commit, or when the run gives up) and release it. A journal that points
        into it (a commit that passed its commit point, then failed) keeps it: `recover()` finishes that commit
        first, then `remove_ended` removes what is left."""
        mine = f"{SHARDS}/{self.run_id}/"
        journals = self.root / JOURNALS
        if not any(mine in journal.read_text(errors="replace") for journal in
                   (journals.glob("*.json") if journals.is_dir() else ())):
            shutil.rmtree(self.folder, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        try:
            self.folder.parent.rmdir()
        except OSError:
            pass

    def __enter__(self) -> ShardSpace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_ended(root: Path) -> list[Path]:
    """Remove the shard folders of runs that ended without removing them (their lock is free); call under the
    store lock, after `recover()`. Returns those removed."""
    removed = []
    base = Path(root) / SHARDS
    for folder in sorted(base.glob("*")) if base.is_dir() else []:
        try:
            with open(folder / ".lock", "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its run is alive
            continue
        except (FileNotFoundError, NotADirectoryError):
            pass
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
