"""Scratch folders for prediction writers that collect rows until `close()` (EcoTaxa zips, IFCB class files).

A spool lives beside the writer's output, as a hidden folder `OUT/.spool-<writer>-<pid>-<random>/`, not in /tmp:
/tmp may be a small tmpfs, and a killed predict would leave its spool there forever. Here a killed run's spool is
found and removed by the next run of the same writer on the same OUT.

Predict does not lock OUT (two runs may write into it at once), so "stale" is decided as `predictions.py` decides
it for the store's spools: the running writer holds an flock on `.lock` inside its spool; a spool whose lock can
be taken belongs to a dead process. A spool without a lock file (its writer is between creating the folder and
the lock, or died there) is stale when the process named in it is gone.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
import weakref
from pathlib import Path

LOCK = ".lock"


def _prefix(writer: str) -> str:
    return f".spool-{writer}-"


def remove_stale(out_dir: Path, writer: str) -> list[Path]:
    """Remove the spools of `writer` under `out_dir` that no live process holds; returns those removed."""
    removed = []
    for folder in sorted(Path(out_dir).glob(_prefix(writer) + "*")):
        owner = re.fullmatch(r"(\d+)-[0-9a-f]+", folder.name.removeprefix(_prefix(writer)))
        if owner is None:  # another writer's whose name starts like this one's (`ifcb` and `ifcb-h5`)
            continue
        try:
            with open(folder / LOCK, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its writer is running
            continue
        except (FileNotFoundError, NotADirectoryError):
            if _alive(int(owner[1])):
                continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Spool:
    """A private scratch folder for one writer session under `out_dir`; `remove()` deletes it (also at garbage
    collection or interpreter exit, so an exception that never reaches `close()` leaves nothing behind)."""

    def __init__(self, out_dir: Path, writer: str):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(out_dir, writer)
        name = f"{_prefix(writer)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = out_dir / name
        self.path.mkdir()
        lock = open(self.path / LOCK, "wb")  # noqa: SIM115 - held until remove(); see remove_stale
        fcntl.flock(lock, fcntl.LOCK_EX)
        self._finalizer = weakref.finalize(self, _remove, self.path, lock)

    def remove(self) -> None:
        self._finalizer()


def _remove(path: Path, lock) -> None:
    # The lock file last: a run killed half-way through leaves a spool whose free lock says it is stale (the
    # process id is only the fallback, and a pid may be reused).
    try:
        for child in path.iterdir():
            if child.name != LOCK:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)
    lock.close()
