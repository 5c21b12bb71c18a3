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
    from plankton_cli.core import plugins

    infos = plugins.describe()
    if as_json:
        emit_json([i.__dict__ for i in infos])
        return
    # Plain lines, never a table: a table is cut to the terminal's width, and to 80 columns without one.
    for kind in dict.fromkeys(i.kind for i in infos):
        click.echo(f"{kind}s:")
        for i in (i for i in infos if i.kind == kind):
            status = f"BROKEN: {i.broken}" if i.broken else i.description
            click.echo(f"  {i.name}  ({i.package} {i.version}, {i.target})\n      {status}")
