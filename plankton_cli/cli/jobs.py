"""`plankton jobs`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from plankton_cli.cli.options import json_option, store_option
from plankton_cli.cli.output import emit_json


@click.command(epilog="""\b
Examples:
  plankton jobs                        # runs submitted for the store ($PLANKTON_STORE or ./plankton-store)
  plankton jobs runs/mae-l             # runs recorded in a run directory
  plankton jobs --json | jq '.[] | select(.state == "RUNNING")'

Jobs are recorded in jobs.jsonl when submitted (pretrain records them in the store); their state
is asked of the backend that ran them (squeue/sacct for SLURM).""")
@click.argument("directories", nargs=-1, type=click.Path(file_okay=False, path_type=Path))
@store_option
@json_option
def jobs(directories: tuple[Path, ...], store: Path, as_json: bool) -> None:
    """Show the state of runs submitted to a compute backend (SLURM, ...)."""
    from plankton_cli.jobs import list_jobs

    records = [entry for directory in (directories or (store,)) for entry in list_jobs(Path(directory))]
    if as_json:
        emit_json([asdict(r) for r in records])
        return
    if not records:
        click.echo(f"no submitted jobs recorded in {', '.join(str(d) for d in directories or (store,))}")
        return
    for r in records:
        status = f" exit {r.exit_code}" if r.exit_code is not None else ""
        click.echo(f"{r.job_id:>12}  {r.backend:<6} {r.state or 'UNKNOWN':<10}{status}  {r.submitted_at}  "
                   f"{r.name}  {r.run_dir}")
        if r.log_paths:
            click.echo(f"{'':>12}  logs: {r.log_paths[0]}{' …' if len(r.log_paths) > 1 else ''}")
