"""`plankton features`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from plankton_cli.cli.options import require_store, json_option, lock_timeout_option, store_option
from plankton_cli.cli.output import emit_json

log = logging.getLogger("plankton.features")


@click.command(epilog="""\b
Examples:
  plankton features                          # objects -> features, only what is new or changed
  plankton features --json | jq .computed
  plankton finetune --init runs/mae --features auto --out runs/ft   # then use them beside the image

\b
Columns (pixels; the _um ones in micrometres when the object has a pixel size): area, perimeter,
esd, major_axis, minor_axis, feret_max, eccentricity, solidity, extent, circularity, biovolume
(prolate spheroid pi/6 major minor^2), grey_mean/std/min/max/median, contrast; area_um2, esd_um,
major_axis_um, minor_axis_um, biovolume_um3. finetune and predict name them features.<column>.

\b
Segmentation: background = mode of the edge pixels; object = largest connected component above
Li's threshold on the difference to it, holes filled; legends (ZooProcess scale bar, CytoSense
banner) are cut first, as `plankton pad` cuts them.

Exit codes: 0 done (rejections are reported, not fatal), 65 something was rejected and
--strict was given, 75 the store is locked by another writer.""")
@click.option("--strict", is_flag=True, help="Exit 65 when any object was rejected (e.g. no object found).")
@store_option
@lock_timeout_option
@json_option
def features(strict: bool, store: Path, lock_timeout: float, as_json: bool) -> None:
    """Measure every object's morphometrics (scikit-image) into the store's features dataset.

    Segments the object in each image of `objects` and stores its size, shape and grey-level
    features, one row per object, in `features`. Only objects that are new or changed since the
    last run are measured; rows of objects that left the store are removed.
    """
    from plankton_cli.cli.output import progress
    from plankton_cli.prepare.features.dataset import compute_features
    from plankton_cli.store import LockTimeout, Store

    require_store(store)
    the_store = Store(store)
    if not the_store.files("objects"):
        raise click.UsageError(f"dataset 'objects' of {the_store.root} is empty; run `plankton ingest` first")
    with progress("features", unit="objects") as advance:
        try:
            data = compute_features(the_store, lock_timeout=lock_timeout, on_progress=advance).to_dict()
        except LockTimeout as exc:
            log.error("%s", exc)
            sys.exit(75)
    if as_json:
        emit_json(data)
    else:
        click.echo(
            f"objects: {data['read']} read = {data['computed']} measured + {data['skipped']} skipped (already "
            f"measured" + (f", or {data['skipped_rejected_before']} rejected before" if data["skipped_rejected_before"]
                           else "")
            + f") + {data['rejected']} rejected" + (f"; {data['removed']} old rows removed" if data["removed"] else "")
        )
        for reason, n in sorted(data["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
            click.echo(f"  rejected {n}: {reason}")
    if strict and data["rejected"]:
        sys.exit(65)
