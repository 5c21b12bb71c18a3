"""`plankton summarize`."""

from __future__ import annotations

from pathlib import Path

import click

from plankton_cli.cli.options import usage_errors, require_store, Command, json_option, store_option
from plankton_cli.cli.output import emit_json


@click.command(cls=Command, epilog="""\b
Examples:
  # cells per mL of every IFCB bin the deployed model classified (nightly: adds new bins only)
  plankton summarize --model /data/models/current/model.safetensors --by bin --out /data/summary
  # one row per day, for a station report
  plankton summarize --store /data/plankton-store --model fold-0/ --by day --out summary-daily

\b
Writes OUT/counts.csv (long form: sample_id, class, count, ml_analyzed, per_ml, count_auto,
per_ml_auto, biovolume_um3_per_ml, acquired_at, instrument, samples) and the same table as
Parquet, one file a month (OUT/counts/month=YYYY-MM/; pandas.read_parquet("OUT/counts")),
OUT/counts_wide.csv and OUT/per_ml_wide.csv (one row per sample, one column per class),
OUT/plots/ (a time series per class and overview.png, of the 30 days up to the latest sample),
OUT/by-month/YYYY-MM/ (that month's three CSV tables and plots/overview.png; a night rewrites
only the months it touched, and the top-level CSV tables are the months joined) and, last,
OUT/summary.json (what the summary holds: the next run adds only what is new). `count` is after the model's per-class
thresholds (`unclassified` counted as a class), `count_auto` the argmax; per_ml divides by the
ml_analyzed the store holds for each IFCB bin. Biovolume needs STORE/features with `biovolume` (µm³).""")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="The model whose predictions to summarise: model.safetensors or its folder.")
@click.option("--by", type=click.Choice(["bin", "sample", "day"]), default="bin", show_default=True,
              help="One row per IFCB bin, per sample id (any source), or per UTC day.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the tables and plots.")
@click.option("--rebuild", is_flag=True, help="Summarise everything again instead of adding new samples only.")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write the PNG plots.")
@store_option
@json_option
def summarize(model_path: Path, by: str, out_dir: Path, rebuild: bool, plots: bool, store: Path,
              as_json: bool) -> None:
    """Counts and concentrations (per mL) per class and bin, sample or day, from a model's predictions."""
    from plankton_cli.store import Store
    from plankton_cli.publish.summarize import summarize as run_summarize

    require_store(store)
    the_store = Store(store)
    with usage_errors():
        result = run_summarize(the_store, model_path, by, out_dir, plots=plots, rebuild=rebuild)
    if as_json:
        emit_json(result.to_dict())
        return
    if not result.new_samples:
        click.echo(f"summary {out_dir}: no new samples for model {result.model_id}; nothing written")
        return
    click.echo(f"summary {out_dir} (model {result.model_id}, by {by}): {result.new_samples} new samples, "
               f"{result.groups_written} groups written, {result.groups_kept} kept, {result.objects} objects"
               + ("" if result.biovolume else "; no biovolume (no STORE/features with a biovolume column)"))
    for reason, n in result.skipped.items():
        click.echo(f"  left out: {n} predictions ({reason})")
