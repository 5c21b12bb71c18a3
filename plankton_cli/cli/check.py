"""`plankton check`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from plankton_cli.cli.options import require_store, json_option, lock_timeout_option, store_option
from plankton_cli.cli.output import emit_json

log = logging.getLogger("plankton.check")


@click.command(epilog="""\b
Examples:
  plankton check --store /data/store
  # after a disk problem: drop damaged files, read their sources again, rebuild the manifest
  plankton check --repair --store /data/store
  plankton check --json | jq '.problems[].detail'
  # a night's files only (a cron job after the nightly run): since a time, or since a commit id
  plankton check --since 2024-01-31 --store /data/store
  plankton check --since 20240131T230000Z-1a2b3c --store /data/store

--repair never deletes a commit: a journal it cannot read or finish is moved to
STORE/.quarantine/ and reported. A repair that was killed is finished by running it again.

Exit codes: 0 the store is whole, 74 a file is missing, damaged or unreadable (committed.json, a journal,
a commit that cannot be finished), 65 the data disagrees with itself (manifest against data, an object
stored twice, a file outside the committed list, a file name over 100 bytes), 75 the store is locked by
another writer.""")
@click.option("--repair", is_flag=True,
              help="Rebuild an unreadable committed.json from the data files, finish interrupted commits (setting "
                   "unreadable journals aside), drop damaged files, read their sources again, delete files outside "
                   "the committed list, rename over-long files and rebuild the manifest from the data; then check again.")
@click.option("--since", metavar="DATE|COMMIT",
              help="Verify only the files committed since this UTC date/time (2024-01-31, 2024-01-31T23:00) or commit "
                   "id (20240131T230000Z-1a2b3c, as data file names carry it), and the manifest: a night's files in "
                   "a night's time. The checks across the whole store (manifest against data, ids stored once) "
                   "are a full check's.")
@store_option
@lock_timeout_option
@json_option
def check(repair: bool, since: str | None, store: Path, lock_timeout: float, as_json: bool) -> None:
    """Verify the store's files, manifest and ids; --repair makes it whole again.

    Checks every committed file (present, size, checksum, readable Parquet), the manifest
    against the data, and that no object is stored twice. Each problem is one line naming the file.
    """
    from plankton_cli.store import Store
    from plankton_cli.store.check import check as run_check
    from plankton_cli.store.check import repair as run_repair

    require_store(store)
    the_store = Store(store)
    if since is not None and repair:
        raise click.UsageError("--since checks a night's files; --repair repairs the whole store: give one")
    if repair:  # locked: 75 at the edge
        from plankton_cli.ingest import ingest

        report = run_repair(the_store, ingest, lock_timeout=lock_timeout)
    else:
        report = run_check(the_store, lock_timeout=lock_timeout, since=_since(since))
    for line in report.repaired:
        log.warning("repaired: %s", line)
    for problem in report.problems:
        log.error("%s", problem)
    if report.twins:
        from plankton_cli.store.check import twins_line

        log.warning("%s", twins_line(report.twins))
    if as_json:
        emit_json(report.to_dict())
    elif not report.problems:
        click.echo(f"{store}: {report.files} committed files, all intact"
                   + (f"; {len(report.twins)} objects stored under several collections" if report.twins else ""))
    sys.exit(report.exit_code)


def _since(text: str | None):
    """--since as a UTC datetime when it is a date or time, else as given (a commit id, checked by `check`)."""
    from datetime import UTC, datetime

    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return text
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when
