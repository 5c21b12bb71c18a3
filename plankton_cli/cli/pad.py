"""`plankton pad`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from plankton_cli.cli.fanout import FANOUT_HELP, fanout_options
from plankton_cli.cli.options import (usage_errors, require_store, WORKERS_DEFAULT_TEXT, default_workers, json_option, lock_timeout_option,
                                      store_option)
from plankton_cli.cli.output import emit_json

log = logging.getLogger("plankton.pad")

_PRESETS = ("auto", "none", "scale-bar", "cytosense")  # = pad_store.PRESETS, spelled out so --help imports nothing


@click.command(epilog="""\b
Examples:
  plankton pad                               # objects -> padded, crops chosen from the instrument
  plankton pad --workers 4 --preview 24 pad.png
  plankton pad --dry-run --preview 24 pad.png --preset cytosense   # look first, write nothing
  plankton pad --preset none --crop-bottom 31                      # crop exactly what you say
  plankton pad --store-pixels        # also store the padded PNGs (for pyarrow/duckdb/HF readers)
  plankton pad --store /shared/store --backend slurm --shards 32   # an archive, on a cluster

\b
Presets (--preset auto picks one from the instrument column):
  scale-bar  Zooscan, UVP5*, UVP6: cut the 31-px ZooProcess legend when one is detected
  cytosense  CytoSense: cut the 25-px banner at the top
  none       crop nothing (other known instruments)
With the instrument unknown (image folders ingested without --instrument), auto looks for
both the legend and a CytoSense banner in every image and cuts what it finds; the summary
says which crop each instrument group got.
--crop-top / --crop-bottom add to what the preset crops.

Exit codes: 0 done (rejections are reported, not fatal), 65 something was rejected and
--strict was given, 2 usage error, 75 the store is locked by another writer (or a shard
failed: nothing committed).

--workers pad row groups in forked processes, this one writing them in objects order.
""" + FANOUT_HELP)
@click.option("--source", default="objects", show_default=True, help="Dataset of the store to read.")
@click.option("--target", default="padded", show_default=True, help="Dataset of the store to write.")
@click.option("--preset", type=click.Choice(_PRESETS), default="auto", show_default=True,
              help="Instrument crop to apply before padding.")
@click.option("--crop-top", type=click.IntRange(min=0), default=0, show_default=True, metavar="PX",
              help="Also cut this many rows from the top of every image.")
@click.option("--crop-bottom", type=click.IntRange(min=0), default=0, show_default=True, metavar="PX",
              help="Also cut this many rows from the bottom of every image.")
@click.option("--size", type=click.IntRange(min=1), metavar="N",
              help="Resize the padded square to N x N (bicubic) [default: keep; training resizes].")
@click.option("--store-pixels", is_flag=True,
              help="Store the padded squares as PNGs too. By default only the crop and pad parameters are stored "
                   "and training pads the originals on read (same pixels, a fraction of the disk).")
@click.option("--preview", nargs=2, type=(click.IntRange(min=1), click.Path(dir_okay=False, path_type=Path)),
              metavar="N FILE", help="Write a PNG contact sheet of N random objects before and after padding.")
@click.option("--dry-run", is_flag=True, help="Write only the --preview sheet, not the dataset.")
@click.option("--strict", is_flag=True, help="Exit 65 when any object was rejected.")
@fanout_options(workers_default=default_workers(1), workers_default_text=WORKERS_DEFAULT_TEXT)
@store_option
@lock_timeout_option
@json_option
def pad(source: str, target: str, preset: str, crop_top: int, crop_bottom: int, size: int | None, store_pixels: bool,
        preview: tuple[int, Path] | None, dry_run: bool, strict: bool, store: Path, lock_timeout: float,
        as_json: bool, fanout) -> None:
    """Crop instrument legends and pad every image to a square with its own background.

    Reads a dataset of the store (default `objects`) and writes, per object, the crop and pad it
    got with every other column to another dataset (default `padded`), which pretrain and
    finetune use when it exists. The padding is the mode of the edge pixels plus noise seeded
    from the object id, so the loaders pad the originals on read to exactly these pixels, as
    predict does (--store-pixels stores them as well); only objects that are new or changed
    since the last run are padded.
    """
    from plankton_cli.cli.output import progress
    from plankton_cli.core.errors import UsageError as PlanktonUsageError
    from plankton_cli.prepare.pad_store import pad_dataset
    from plankton_cli.prepare.pad_store import preview as write_preview
    from plankton_cli.prepare.square_pad import CropSpec
    from plankton_cli.store import Store

    if dry_run and not preview:
        raise click.UsageError("--dry-run writes nothing but the --preview sheet; give --preview N FILE too")
    from plankton_cli.store.layout import dataset_name

    try:  # before anything is read or written: a path or a reserved name would land outside the store's datasets
        dataset_name(source)
        dataset_name(target, written_by="pad")
    except PlanktonUsageError as exc:
        raise click.UsageError(str(exc)) from exc
    require_store(store)
    the_store = Store(store)
    crop = CropSpec(top=crop_top, bottom=crop_bottom) if crop_top or crop_bottom else None
    if not the_store.files(source):
        raise click.UsageError(f"dataset {source!r} of {the_store.root} is empty; run `plankton ingest` first")

    data = None
    if not dry_run:
        with progress("pad", unit="objects") as advance:
            with usage_errors():
                summary = pad_dataset(the_store, source=source, target=target, preset=preset, crop=crop, size=size,
                                      store_pixels=store_pixels, workers=fanout.workers, lock_timeout=lock_timeout,
                                      on_progress=advance, fanout=fanout if fanout.backend != "local" else None)
        data = summary.to_dict()
    if preview:
        n, path = preview
        write_preview(the_store, n, path, source=source, preset=preset, crop=crop, size=size)
        if data is not None:
            data["preview"] = str(path)
        elif not as_json:
            click.echo(f"preview: {path}")

    if data is None:
        if as_json:
            emit_json({"preview": str(preview[1])})
        return
    if as_json:
        emit_json(data)
    else:
        click.echo(
            f"objects: {data['read']} read = {data['padded']} padded + {data['skipped']} skipped (already padded"
            + (f", or {data['skipped_rejected_before']} rejected before" if data["skipped_rejected_before"] else "")
            + f") + {data['rejected']} rejected"
            + (f"; {data['removed']} old padded rows removed" if data["removed"] else "")
        )
        if data["crops"]:
            crops = ", ".join(f"{name} {n}" for name, n in sorted(data["crops"].items(), key=lambda kv: -kv[1]))
            checked = [f"a scale bar in {data['scale_bar_checked']}"] if data["scale_bar_checked"] else []
            checked += [f"a CytoSense banner in {data['banner_checked']}"] if data["banner_checked"] else []
            click.echo(f"crops: {crops}" + (f" (looked for {' and '.join(checked)})" if checked else ""))
            if len(data["crops_by_instrument"]) > 1:
                for instrument, counts in data["crops_by_instrument"].items():
                    click.echo(f"  {instrument}: " + ", ".join(f"{name} {n}" for name, n in
                                                               sorted(counts.items(), key=lambda kv: -kv[1])))
        for reason, n in sorted(data["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
            click.echo(f"  rejected {n}: {reason}")
        if preview:
            click.echo(f"preview: {preview[1]}")
    if strict and data["rejected"]:
        sys.exit(65)
