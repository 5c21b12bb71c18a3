"""One writer at a time: an exclusive `fcntl.flock` on `STORE/.lock`.

The kernel drops the lock when the process dies (even on kill -9), so a crashed writer never leaves the store
locked. Readers take no lock: they only ever see whole files (see `transaction.py`).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from plankton_cli.core.errors import StoreLocked


class LockTimeout(StoreLocked):
    """Another writer held the store for longer than the caller was willing to wait."""


class StoreLock:
    def __init__(self, root: Path, timeout: float = 60.0, poll: float = 0.1):
        self.path = root / ".lock"
        self.timeout = timeout
        self.poll = poll
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder(fd)
                    os.close(fd)
                    raise LockTimeout(
                        f"store {self.path.parent} is locked by another writer{holder}; gave up after {self.timeout:g} s"
                    ) from None
                time.sleep(self.poll)
        # Record who holds it, for the next waiter's error message.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return f" (pid {pid})" if pid else ""

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
