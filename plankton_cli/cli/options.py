"""Options every command shares."""

from __future__ import annotations

import os
from pathlib import Path

import click


def default_workers(minimum: int = 0) -> int:
    """Worker processes by default: one CPU left for the main process, at most 8 (more rarely helps)."""
    return max(minimum, min(8, (os.cpu_count() or 1) - 1))


WORKERS_DEFAULT_TEXT = "min(8, CPUs - 1)"


def _remember_store(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    # ctx.meta is shared by the whole command chain: the CLI edge looks here to name a corrupt store file.
    ctx.meta["plankton.store"] = value
    return value


store_option = click.option(
    "--store",
    callback=_remember_store,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PLANKTON_STORE",
    default="plankton-store",
    show_default="$PLANKTON_STORE, else ./plankton-store",
    help="The store directory.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
lock_timeout_option = click.option(
    "--lock-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for another writer to release the store; then exit 75.",
)
