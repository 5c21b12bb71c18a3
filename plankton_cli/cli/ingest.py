"""`plankton ingest`."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from plankton_cli.cli.fanout import FANOUT_HELP, fanout_options
from plankton_cli.cli.options import Command, json_option, lock_timeout_option, store_option
from plankton_cli.cli.output import emit_json, is_interactive

log = logging.getLogger("plankton.ingest")


def _reader_names() -> list[str]:
    from plankton_cli.core import plugins

    return ["auto", *plugins.names("reader")]


@click.command(cls=Command, epilog="""\b
Examples:
  plankton ingest ifcb/                      # every IFCB bin under ifcb/ (skip/ and beads/ skipped)
  plankton ingest export.zip --format ecotaxa
  plankton ingest uvp6/ --instrument UVP6    # one folder per class
  plankton ingest daplankton/ --label-from none
  plankton ingest 2024/images --collection cruise-2024   # ids cruise-2024/<class>/<file>, not images/...
  # a corrected export whose objects should replace the stored ones with the same ids
  plankton ingest fixed-export/ --on-conflict replace
  # nightly, from cron: only new or changed bins are read; exit 75 if another writer holds the store
  plankton -q --log-file ingest.log ingest /data/ifcb --store /data/store --json
  # an archive: 2 processes here, or 64 tasks of a SLURM job array (the store on a shared file system)
  plankton ingest /data/ifcb --workers 2
  plankton ingest /archive/ifcb --store /shared/store --backend slurm --shards 64 --time 2:00:00

Exit codes: 0 done (rejections are reported, not fatal), 65 something was rejected (an id
conflict included) or warned about (labels that look like one class spelled twice, objects
stored again under another collection) and --strict was given, 2 usage error, 74 I/O error (disk full, read-only
or corrupt store), 75 the store is locked by another writer, or a shard failed (nothing committed).

""" + FANOUT_HELP)
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", default="auto", show_default=True,
              help="Reader plugin to use (see `plankton plugins`); auto sniffs each source.")
@click.option("--instrument", help="Instrument name (EcoTaxa acq_instrument vocabulary), when the source does not say.")
@click.option("--label-from", type=click.Choice(["folder", "none"]), default="folder", show_default=True,
              help="Image folders: take the label from the class folder, or store no label.")
@click.option("--collection", metavar="NAME",
              help="Qualifies the object ids of image folders and EcoTaxa bundles (<NAME>/<path or object_id>) so "
                   "two sources never share one [default: the folder's or zip's own name].")
@click.option("-o", "--reader-option", "reader_options", multiple=True, metavar="KEY=VALUE",
              help="Extra option passed to the reader plugin (repeatable).")
@click.option("--retry-rejected", is_flag=True, help="Read again the sources that had rejected objects (implies --rescan).")
@click.option("--rescan", is_flag=True,
              help="Check every file's size and mtime, also in source folders unchanged since they were last "
                   "listed (skipped otherwise: a file rewritten in place there is found only so). "
                   "Example: plankton ingest /data/ifcb --rescan")
@click.option("--commit-every", type=click.IntRange(min=0), default=0, metavar="N",
              help="Also commit after every N sources, so a long backlog keeps its progress if interrupted (one process: a fanned-out run commits once).")
@click.option("--on-conflict", type=click.Choice(["reject", "replace"]), default="reject", show_default=True,
              help="An object id already stored with other pixels from another source: reject it (recorded "
                   "with both sources) or replace the stored object.")
@click.option("--strict", is_flag=True, help="Exit 65 when any object was rejected (conflicts included) or a guardrail warned.")
@fanout_options()
@store_option
@lock_timeout_option
@json_option
def ingest(sources: tuple[Path, ...], fmt: str, instrument: str | None, label_from: str, collection: str | None,
           reader_options: tuple[str, ...], retry_rejected: bool, rescan: bool, on_conflict: str, commit_every: int, strict: bool,
           store: Path, lock_timeout: float, as_json: bool, fanout) -> None:
    """Read IFCB bins, EcoTaxa exports or image folders into the store.

    Each object becomes one row of the store's `objects` dataset, with its image (lossless),
    label, instrument metadata and where it came from. Re-running is safe: unchanged sources
    are skipped, changed ones replace their old rows, and every rejected object is reported
    with file, row and reason.
    """
    from plankton_cli.core import plugins
    from plankton_cli.cli.output import progress
    from plankton_cli.ingest import ingest as run_ingest
    from plankton_cli.core.records import ReadOptions
    from plankton_cli.store import Store

    extra = {}
    for item in reader_options:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="-o")
        extra[key] = value
    if fmt != "auto" and fmt not in plugins.names("reader"):
        raise click.BadParameter(f"unknown reader {fmt!r}; installed: {', '.join(plugins.names('reader'))}",
                                 param_hint="--format")
    if collection is not None and (not collection.strip() or "/" in collection):
        raise click.BadParameter(f"{collection!r}: a collection name is one non-empty path segment (no '/')",
                                 param_hint="--collection")
    options = ReadOptions(instrument=instrument, label_from=label_from, extra=extra, collection=collection)

    last_log = [time.monotonic()]

    with progress("ingest", unit="sources") as advance:
        def on_source(source, status):
            advance()
            log.debug("%s %s", status, source.key)
            if status != "unchanged" and not is_interactive() and time.monotonic() - last_log[0] > 30:
                last_log[0] = time.monotonic()
                log.info("reading %s", source.key)  # a sign of life under cron, twice a minute at most

        try:
            summary = run_ingest(Store(store), list(sources), fmt=fmt, options=options, lock_timeout=lock_timeout,
                                 retry_rejected=retry_rejected, rescan=rescan, on_conflict=on_conflict, commit_every=commit_every,
                                 on_source=on_source, fanout=fanout)
        except plugins.PluginError as exc:
            raise click.UsageError(str(exc)) from exc

    from plankton_cli.core.mismatch import label_twins

    # only pairs with a label this run stored (old pairs were warned about when they came in); a run that stored
    # no labelled object, such as a nightly IFCB ingest, reads no labels at all
    twins = label_twins(_labels(Store(store)), summary.labels) if summary.labels else []
    data = summary.to_dict()
    data["label_warnings"] = twins
    for line in twins:
        log.warning("%s", line)
    from plankton_cli.store.check import collection_twins, twins_line

    # EcoTaxa objects already stored under another collection are skipped by ingest, IFCB ids have no collection:
    # only the other readers' objects (image folders under two names) can still be stored twice, so only they pay
    # for the store-wide look
    copies = (collection_twins(Store(store), run=summary.run)
              if set(summary.stored_by_reader) - {"ecotaxa", "ifcb", "ifcb-png"} else [])
    data["duplicates_across_collections"] = copies
    if copies:
        log.warning("%s", twins_line(copies))
    if summary.reread:
        log.warning("%d EcoTaxa sources skipped objects already stored by a source whose content changed; ingest "
                    "them again so none is missing (they will be read again): %s", len(summary.reread),
                    ", ".join(summary.reread[:3]) + (", ..." if len(summary.reread) > 3 else ""))
    relabelled = ""
    if summary.relabelled:
        oid, label, stored, stored_label = summary.relabelled_examples[0]
        relabelled = (f"{summary.relabelled} EcoTaxa objects are stored again: another collection holds the same "
                      f"object and image under another label (e.g. {oid} {label!r}, {stored} {stored_label!r}); "
                      f"training sees both labels: ingest only the newer export (into a new store)")
        log.warning("%s", relabelled)
    if as_json:
        emit_json(data)
    else:
        s = data["sources"]
        click.echo(
            f"sources: {s.get('new', 0)} new, {s.get('changed', 0)} changed, {s.get('retried', 0)} retried, "
            f"{s.get('unchanged', 0)} unchanged"
            + (f", {s['read again']} read again (they skipped objects of a changed export)"
               if s.get("read again") else "") + "\n"
            f"objects: {data['read']} read = {data['stored']} stored + {data['skipped_duplicate']} skipped "
            f"(already stored) + {data['rejected']} rejected"
        )
        if summary.skipped_twin:
            click.echo(f"  skipped {summary.skipped_twin}: the same EcoTaxa object and image already stored under "
                       f"another collection (e.g. {' = '.join(summary.twin_examples[0])})")
        for reason, n in sorted(data["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
            click.echo(f"  rejected {n}: {reason}")
    if strict and summary.n_rejected:
        sys.exit(65)
    if strict and (twins or copies or relabelled):
        from plankton_cli.core.errors import DataError

        if relabelled and not (twins or copies):
            raise DataError(f"--strict: {relabelled}")
        if not twins:
            raise DataError(f"--strict: {twins_line(copies)}")
        raise DataError(f"--strict: {twins[0]}" + (f" (and {len(twins) - 1} more pairs)" if len(twins) > 1 else ""))


def _labels(store) -> set[str]:
    """The distinct labels of the store's objects (one column read)."""
    if not store.files("objects"):
        return set()
    batches = store.dataset("objects").to_batches(columns=["label"])  # batch by batch: a big store's column is big
    return {label for batch in batches for label in batch["label"].unique().to_pylist() if label}
