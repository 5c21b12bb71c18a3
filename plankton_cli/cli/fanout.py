"""The fan-out options of `ingest`, `pad`, `features` and `predict`: `--workers N` processes here, or
`--backend slurm --shards N` array tasks on a cluster; either way this command commits once (`plankton_cli.jobs.fanout`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from plankton_cli.cli.dispatch import BackendOptions, backend_choice, cluster_options, pop_cluster_options

FANOUT_HELP = """\b
Fan-out: --workers N splits the work between N processes here; --backend slurm --shards N
between N tasks of a SLURM job array (submitit), which this command submits, waits for
and commits: one commit for all of them, or none. The store must be on a file system that
every node sees (shared), and the command waits on a machine that can submit jobs (a login
node). A task that hits --time or is preempted is requeued; one that fails makes the commit
fail (exit 75), naming it and its log: the store is unchanged, and running the command
again does all of it."""


def fanout_options(*, workers_default: int = 1, workers_default_text: str | None = None,
                   accelerator: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: adds --workers, --backend, --shards and the cluster options, and passes the command one
    `fanout` argument (a `plankton_cli.jobs.fanout.FanOut`, whose cluster logs go under the command's `--store`)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option("--workers", type=click.IntRange(min=1), default=workers_default, show_default=
                         workers_default_text or True, help="Processes on this machine, each taking a disjoint "
                                                            "share of the work; one commit at the end."),
            click.option("--backend", default="local", show_default=True, metavar="NAME", callback=lambda c, p, v:
                         backend_choice(v), help="local: here, in --workers processes; slurm: --shards tasks of a "
                                                 "SLURM job array (the store on a shared file system)."),
            click.option("--shards", type=click.IntRange(min=1), metavar="N",
                         help="[cluster] Array tasks to split the work into [default: 1]."),
            *([click.option("--accelerator", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
                            show_default=True, help="[cluster] What each task asks for: auto = a GPU.")]
              if accelerator else []),
            *cluster_options(),
        ]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from plankton_cli.jobs.fanout import FanOut

            backend, workers, shards = kwargs.pop("backend"), kwargs.pop("workers"), kwargs.pop("shards")
            ctx = click.get_current_context()
            given = ctx.get_parameter_source("workers") not in (None, click.core.ParameterSource.DEFAULT)
            if backend == "local" and shards is not None:
                raise click.UsageError("--shards splits the work between cluster tasks (--backend slurm); here, "
                                       "use --workers N")
            if backend != "local" and given:
                raise click.UsageError("--workers is for this machine; on a cluster, --shards N sets the tasks")
            options = BackendOptions(backend=backend, accelerator=kwargs.pop("accelerator", "cpu"),
                                     **pop_cluster_options(kwargs))
            kwargs["fanout"] = FanOut(workers=workers if backend == "local" else 1, backend=backend,
                                      shards=shards or 1, resources=options.resources(),
                                      run_dir=logs_under(kwargs["store"]))
            return command(*args, **kwargs)

        decorated: Any = wrapper
        for option in reversed(options):
            decorated = option(decorated)
        return decorated

    return decorate


def logs_under(store: Path) -> Path:
    """Where a cluster backend keeps a fanned-out command's job scripts and logs: beside the data, hidden from
    Parquet readers."""
    return Path(store).absolute() / ".jobs"
