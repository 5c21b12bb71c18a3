"""Domain errors, each carrying the exit code the CLI's edge turns it into (sysexits.h where one fits)."""

from __future__ import annotations


class PlanktonError(Exception):
    exit_code = 1


class UsageError(PlanktonError):
    exit_code = 2


class DataError(PlanktonError):
    """Bad input data (with --strict) or a store whose data disagrees with itself."""

    exit_code = 65


class CantCreate(PlanktonError):
    exit_code = 73


class StoreIOError(PlanktonError):
    """The store could not be read or written: disk full, read-only, a missing or unreadable store file."""

    exit_code = 74


class StoreLocked(PlanktonError):
    """Another writer holds the store: try again later."""

    exit_code = 75


class ConfigError(PlanktonError):
    exit_code = 78
