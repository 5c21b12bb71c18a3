"""`plankton evaluate`."""

from __future__ import annotations

from pathlib import Path

import click

from plankton_cli.cli.options import require_store, json_option, store_option
from plankton_cli.cli.output import emit_json


@click.command(epilog="""\b
Examples:
  plankton evaluate runs/ft-mae-5pct                         # one fine-tune run, all folds
  plankton evaluate runs/ft-*-{1,5,10}pct --out report/      # + the few-label curve (paper Fig. 4/5)
  plankton evaluate --predictions preds/predictions.parquet --store S   # against stored labels

Writes summary.md / summary.csv / per_class.csv / evaluation.json, a normalised confusion
matrix per run, and few_label_curve.png when several runs differ in labels or init.
Macro averages are over the classes present in each fold's true labels (scikit-learn).""")
@click.argument("runs", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--predictions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A predictions file (Parquet or CSV from `plankton predict`) to score against the store's labels.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("evaluation"),
              show_default=True, help="Where tables and plots go.")
@store_option
@json_option
def evaluate(runs, predictions, out_dir, store, as_json):
    """Metrics, tables and plots from fine-tune runs or from predictions."""
    from plankton_cli.publish.evaluate import evaluate as run_evaluate
    from plankton_cli.store import Store

    if not runs and predictions is None:
        raise click.UsageError("give fine-tune RUN folders and/or --predictions FILE")
    if predictions:  # their true labels come from the store
        require_store(store)
    report = run_evaluate(list(runs), out_dir, predictions=predictions, store=Store(store) if predictions else None)
    if as_json:
        emit_json(report)
        return
    from plankton_cli.train.metrics import format_table_markdown

    if report["table"]:
        click.echo(format_table_markdown(report["table"]))
    for sentence in report["verdicts"]:
        click.echo(sentence)
    if "predictions" in report:
        p = report["predictions"]
        m = p["metrics"]
        click.echo(f"predictions: {p['n_matched']} labelled of {p['n_predictions']}: accuracy {m['accuracy']:.3f}, "
                   f"balanced accuracy {m['balanced_accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
    click.echo(f"tables and plots in {out_dir}/")
