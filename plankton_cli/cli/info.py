"""`plankton info`."""

from __future__ import annotations

from pathlib import Path

import click

from plankton_cli.cli.options import missing_store, json_option, store_option
from plankton_cli.cli.output import emit_json


@click.command(epilog="""\b
Examples:
  plankton info
  plankton info --store /data/store --json | jq '.datasets.objects.by_instrument'""")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="How many labels and reasons to list.")
@store_option
@json_option
def info(top: int, store: Path, as_json: bool) -> None:
    """Show what the store holds: counts by dataset, instrument, label and source."""
    from plankton_cli.store.info import store_info
    from plankton_cli.store import Store

    data = store_info(Store(store), top=top)
    if as_json:
        emit_json(data)
        return
    if not data["exists"]:  # not an error: info answers "what is there", and nothing is
        click.echo(missing_store(store))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]Store[/bold] {data['store']}")
    for name, d in data["datasets"].items():
        console.print(f"\n[bold]{name}[/bold]: {d['rows']:,} rows in {d['files']} files, "
                      f"{d['bytes'] / 1e6:,.1f} MB, schema {d['schema_version']}"
                      + (f", {d['sources']:,} sources" if "sources" in d else "")
                      + (f"; {d['rejected']:,} distinct objects (retries counted once)" if "rejected" in d else ""))
        for key, title in (("by_instrument", "instrument"), ("by_label", "label"), ("by_reason", "reason")):
            if d.get(key):
                table = Table(title_justify="left", box=None, pad_edge=False)
                table.add_column(title)
                table.add_column("count", justify="right")
                for k, v in d[key].items():
                    table.add_row(str(k), f"{v:,}")
                console.print(table)
        if d.get("ingest_runs"):
            runs = Table(title_justify="left", box=None, pad_edge=False)
            for column in ("ingest run (round)", "ingested at", "objects", "by label status"):
                runs.add_column(column, justify="right" if column == "objects" else "left")
            for r in d["ingest_runs"]:
                runs.add_row(r["run"], (r["ingested_at"] or "")[:19], f"{r['objects']:,}",
                             ", ".join(f"{k} {v:,}" for k, v in r["by_status"].items()))
            console.print(runs)
        if "labels" in d and d["labels"] > len(d.get("by_label", {})) - ("(none)" in d.get("by_label", {})):
            console.print(f"  ({d['labels']} labels in all; --top N shows more)")
    if data.get("sources_by_reader"):
        console.print("\n[bold]sources by reader[/bold]: " +
                      ", ".join(f"{k} {v:,}" for k, v in data["sources_by_reader"].items()))
