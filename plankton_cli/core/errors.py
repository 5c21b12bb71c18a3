"""One error model: what went wrong, and the exit status a script can act on.

Library code raises these (or lets `OSError` and pyarrow's errors through); only the CLI edge
(`plankton_cli.cli.LazyGroup.invoke`) turns an exception into one line on stderr and an exit status, so the
same failure exits the same way from every command. The statuses are the BSD `sysexits.h` ones cron jobs
and shell scripts already know:

| exit | class          | meaning                                                               |
|------|----------------|-----------------------------------------------------------------------|
| 2    | `UsageError`   | bad command line (Click uses 2 for its own usage errors too)          |
| 65   | `DataError`    | the input is bad (and `--strict` was given, or nothing usable is left)|
| 73   | `CantCreate`   | an output file or folder cannot be created                            |
| 74   | `StoreIOError` | an I/O error: disk full, read-only, unreadable or corrupt store file  |
| 75   | `StoreLocked`  | another writer holds the store: try again later                       |
| 78   | `ConfigError`  | the config file is unreadable or malformed                            |

A SIGINT or SIGTERM ends any command with one line and 128 + the signal number (130, 143): see
`plankton_cli.cli.LazyGroup.invoke`.
"""

from __future__ import annotations

import errno
from pathlib import Path


class PlanktonError(Exception):
    """A failure the user can act on; `exit_code` is the process exit status it maps to."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | Path | None = None):
        super().__init__(message)
        self.path = path  # the file or folder at fault, when there is one


class UsageError(PlanktonError):
    exit_code = 2


class DataError(PlanktonError):
    exit_code = 65


class CantCreate(PlanktonError):
    exit_code = 73


class StoreIOError(PlanktonError):
    exit_code = 74


class StoreLocked(PlanktonError):
    exit_code = 75


class ConfigError(PlanktonError):
    exit_code = 78


# OSErrors that say the disk or the file system failed, not that the user named the wrong file.
IO_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def as_plankton_error(exc: BaseException) -> PlanktonError | None:
    """The `PlanktonError` an exception stands for, with a one-line message naming the file; None for an
    exception that is not a known failure (a bug, which deserves its traceback)."""
    if isinstance(exc, PlanktonError):
        return exc
    if isinstance(exc, OSError):
        where = exc.filename or ""
        if exc.filename2:
            where = f"{where} -> {exc.filename2}"
        reason = exc.strerror or str(exc)
        message = f"{where}: {reason}" if where else reason
        if exc.errno in IO_ERRNOS or exc.errno is None:  # errno None: pyarrow's I/O errors (ArrowIOError)
            return StoreIOError(message, path=exc.filename)
        return UsageError(message, path=exc.filename)  # ENOENT, EISDIR...: the path given is wrong
    if type(exc).__module__.startswith("pyarrow"):
        # ArrowInvalid on a store file: a truncated or overwritten Parquet file. pyarrow names the file.
        return StoreIOError(f"unreadable Parquet data: {exc}")
    return None
