"""Kept at this path for third-party reader plugins, which import it; the module lives in plankton_cli/core/."""

from plankton_cli.core.records import (LABEL_STATUSES, UNKNOWN_INSTRUMENT, ReadOptions, Record, Rejection,
                                       Source)

__all__ = ["LABEL_STATUSES", "UNKNOWN_INSTRUMENT", "ReadOptions", "Record", "Rejection", "Source"]
