"""`plankton select`."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import click

from plankton_cli.cli.options import Command, json_option, lock_timeout_option, require_store, store_option
from plankton_cli.cli.output import describe, emit_json

DEFAULT_STRATEGY = "margin"  # the best measured by bench/active.py (see docs/guides/active-learning.md)


@click.command(cls=Command, epilog="""\b
Examples:
  # the 200 objects the model hesitates most about, as EcoTaxa files to validate
  plankton select --model runs/ft/fold-0/model.safetensors --budget 200 --to ecotaxa --out round-1/
  # diverse objects on the model's embeddings (first rounds, very few labels)
  plankton select --model m.safetensors --budget 100 --strategy typiclust --out round-1/
  # uncertain first, then diverse among them; at least 3 of every predicted class; image folders
  plankton select --model m.safetensors --budget 300 --strategy coreset --mix margin \\
      --per-class-min 3 --to folders --out round-2/
  # last month's UVP6 objects only
  plankton select --model m.safetensors --budget 100 --instrument UVP6 --since 2024-06-01 --out r3/

\b
Candidates: the store's objects no one validated (label status none or predicted). The model's
probabilities and embeddings come from the store (`plankton predict --to store --to embeddings`);
what the store lacks is predicted first with the model, into the store.
Writes OUT/selection.parquet and OUT/selection.csv (rank, object_id, predicted_label, score,
reason, ...), and with --to ecotaxa the zips `plankton predict --to ecotaxa` writes for these
objects (update zips for objects from EcoTaxa: import with "Update data including
classification"; import zips with images for the others; status predicted), with --to folders
OUT/folders/<predicted label>/<rank>_<object>.<ext>.
A round: select -> validate in EcoTaxa -> export -> `plankton ingest EXPORT` (validated rows
come in with status validated) -> `plankton finetune` (uses validated labels by default).

Exit codes: 0 done, 2 usage error, 73 OUT cannot be created, 75 the store is locked (when
predictions had to be stored first).""")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="A fine-tuned model: model.safetensors (with model.json beside it) or its folder.")
@click.option("--budget", required=True, type=click.IntRange(min=1), help="How many objects to pick.")
@click.option("--strategy", type=click.Choice(["margin", "entropy", "coreset", "typiclust", "cluster-margin", "random"]),
              default=DEFAULT_STRATEGY, show_default=True,
              help="margin: smallest top-1 - top-2 gap; entropy: highest entropy; coreset: k-centre greedy on "
                   "embeddings; typiclust: typical points of clusters without labels; cluster-margin: the smallest "
                   "margin of each k-means cluster of the uncertain; random.")
@click.option("--mix", type=click.Choice(["margin", "entropy"]),
              help="With coreset or typiclust: pick among the 10 x budget most uncertain by this measure.")
@click.option("--per-class-min", type=click.IntRange(min=0), default=0, show_default=True,
              help="At least this many objects of every predicted class (all of a class that has fewer).")
@click.option("--to", "to", multiple=True, type=click.Choice(["ecotaxa", "folders"]),
              help="Files to validate with, besides the list (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("selection"),
              show_default=True, help="Folder for the list and the files.")
@click.option("--instrument", help="Only objects of this instrument.")
@click.option("--since", type=click.DateTime(), help="Only objects acquired on or after this date (UTC).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random, k-means and first centres.")
@click.option("--taxon-map", type=click.Path(exists=True, dir_okay=False),
              help="EcoTaxa output: TSV/CSV mapping labels to EcoTaxa taxon names [and ids] (`plankton taxa`).")
@click.option("--device", default="auto", show_default=True, help="For predictions the store lacks: auto, cpu, cuda…")
@click.option("--threads", type=click.IntRange(min=1), metavar="N", help="CPU threads for those predictions.")
@store_option
@lock_timeout_option
@json_option
def select(model_path, budget, strategy, mix, per_class_min, to, out_dir, instrument, since, seed, taxon_map,
           device, threads, store, lock_timeout, as_json):
    """Pick the objects experts should validate next (active learning), as a list and EcoTaxa files."""
    from plankton_cli.infer.select import select as run_select
    from plankton_cli.infer.predict import _check_out
    from plankton_cli.store import Store

    require_store(store)
    _check_out(out_dir)
    summary = run_select(
        model_path, Store(store), budget=budget, strategy=strategy, mix=mix, per_class_min=per_class_min,
        out_dir=out_dir, to=list(to), instrument=instrument, since=since.replace(tzinfo=UTC) if since else None,
        seed=seed, writer_options={"taxon_map": str(taxon_map)} if taxon_map else {},
        predict_options={"device": device, "threads": threads, "lock_timeout": lock_timeout})
    if as_json:
        emit_json(summary.to_dict())
        return
    click.echo(f"model {summary.model_id} ({summary.model_hash[:12]}): {summary.selected} of {summary.candidates} "
               f"candidates selected by {strategy}" + (f" among the most uncertain by {mix}" if mix else "")
               + (f" ({summary.predicted_now} predicted first)" if summary.predicted_now else ""))
    for label, n in list(summary.by_label.items())[:15]:
        click.echo(f"  {n:6d}  {label}")
    click.echo(f"list: {', '.join(summary.files)}")
    for name, info in summary.writers.items():
        for line in describe(name, info):
            click.echo(line)
