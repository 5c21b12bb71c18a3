"""`plankton stats`."""

from __future__ import annotations

from pathlib import Path

import click

from plankton_cli.cli.options import require_store, json_option, store_option
from plankton_cli.cli.output import emit_json


@click.command(epilog="""\b
Examples:
  plankton stats                      # the padded dataset when there is one, else objects
  plankton stats --dataset objects --max-images 0 --json""")
@click.option("--dataset", help="Dataset of the store [default: padded when it exists, else objects].")
@click.option("--resize", type=click.IntRange(min=1), default=256, show_default=True, metavar="PX",
              help="Images are resized to PX x PX first, as the training transforms do.")
@click.option("--max-images", type=click.IntRange(min=0), default=10_000, show_default=True, metavar="N",
              help="Use a random sample of N images (0: every image).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random sample.")
@store_option
@json_option
def stats(dataset: str | None, resize: int, max_images: int, seed: int, store: Path, as_json: bool) -> None:
    """Compute (or read the cached) pixel mean and std of a dataset, for normalisation.

    Grayscale pixel values on the 0-1 scale after the training resize, as pretrain and finetune
    normalise with. The result is cached in the dataset's folder (`_stats.json`) and computed
    again only when the dataset or these options change.
    """
    from plankton_cli.prepare.data.stats import STATS_FILE, load_or_compute_stats
    from plankton_cli.store import Store

    require_store(store)
    the_store = Store(store)
    if dataset is None:
        dataset = "padded" if the_store.files("padded") else "objects"
    if not the_store.files(dataset):
        raise click.UsageError(f"dataset {dataset!r} of {the_store.root} is empty or missing"
                               f" (datasets: {', '.join(the_store.datasets()) or 'none'})")
    result = load_or_compute_stats(the_store.root / dataset, resize=resize, max_images=max_images or None,
                                   seed=seed)
    data = {"dataset": dataset, "mean": result["mean"], "std": result["std"], "n_images": result["n_images"],
            "resize": resize, "cache": str(the_store.root / dataset / STATS_FILE)}
    if as_json:
        emit_json(data)
    else:
        click.echo(f"{dataset}: mean {data['mean']:.4f}, std {data['std']:.4f} "
                   f"({data['n_images']:,} images at {resize}x{resize}; cached in {data['cache']})")
