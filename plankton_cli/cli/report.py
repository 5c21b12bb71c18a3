"""`plankton report`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from plankton_cli.cli.options import require_store, Command, json_option, store_option
from plankton_cli.cli.output import emit_json


@click.command(cls=Command, epilog="""\b
Examples:
  # tonight's page, beside the nightly job's outputs (examples/nightly/nightly.sh runs this)
  plankton report --model /data/models/current/model.safetensors --summary out/summary --out out/reports
  # an earlier night
  plankton report --model fold-0/ --night 2024-06-01 --out reports

\b
Writes OUT/night-YYYY-MM-DD.html: counts per class, new bins or samples (cells per mL from --summary),
rejected objects by reason, the unclassified share, and the mean confidence against the trailing
7 nights (DRIFT ALARM when it drops by more than --drift-drop). Rewritten only when it changed.""")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="The deployed model: model.safetensors or its folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the night's HTML page.")
@click.option("--summary", "summary_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The `plankton summarize --out` folder, for concentrations and the overview plot.")
@click.option("--night", type=click.DateTime(["%Y-%m-%d"]), help="The UTC night to report [default: today].")
@click.option("--drift-drop", type=float, default=0.05, show_default=True,
              help="Alarm when the mean confidence falls this much below the trailing week's.")
@store_option
@json_option
def report(model_path: Path, out_dir: Path, summary_dir: Path | None, night: datetime | None, drift_drop: float,
           store: Path, as_json: bool) -> None:
    """Write one HTML page about a night's classification: counts, new bins, rejections, drift."""
    from plankton_cli.publish.report import night_report
    from plankton_cli.store import Store

    require_store(store)
    the_store = Store(store)
    result = night_report(the_store, model_path, out_dir, night=night.date() if night else None,
                          summary_dir=summary_dir, drift_drop=drift_drop)
    if as_json:
        emit_json(result.to_dict())
        return
    state = "written" if result.written else "unchanged"
    samples = "bins" if result.ifcb_bins else "samples"
    click.echo(f"{result.path} ({state}): {result.objects} objects in {result.samples} {samples}, "
               f"{result.rejected} rejected"
               + (", DRIFT ALARM" if result.drift_alarm else ""))
