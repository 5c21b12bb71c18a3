"""`plankton plugins`."""

from __future__ import annotations

import click

from plankton_cli.cli.output import emit_json


@click.command("plugins", epilog="""\b
Examples:
  plankton plugins
  plankton plugins --json

Third-party packages add plugins through the entry-point groups plankton.readers,
plankton.writers and plankton.backends (see examples/ in the repository).""")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_command(as_json: bool) -> None:
    """List installed reader, writer and backend plugins (and broken ones)."""
    from plankton_cli import plugins

    infos = plugins.describe()
    if as_json:
        emit_json([i.__dict__ for i in infos])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("kind", "name", "package", "version", "entry point", "status")
    for i in infos:
        status = f"[red]broken: {i.broken}[/red]" if i.broken else "[green]ok[/green]"
        table.add_row(i.kind, i.name, i.package, i.version, i.target, status)
    Console().print(table)
