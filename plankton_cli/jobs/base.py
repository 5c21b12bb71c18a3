"""What a compute backend is: a `plankton` command line plus resources, run somewhere.

A `Job` is the arguments after `plankton` (e.g. ``["pretrain", "--store", "S"]``) and the `Resources` it asks
for. A `Backend` runs that command line: in this process (`local`), on a SLURM cluster through submitit
(`slurm`), or anywhere a third party knows how to reach. Any command (pretrain, finetune, predict) can be
dispatched this way, and a backend never needs to know what the command does.

Backends register under the ``plankton.backends`` entry-point group (see `plankton_cli.core.plugins`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import click

# The Click group a backend runs, as "module:attribute" (the group itself: `main` exits the process).
# Tests and other front-ends may point elsewhere.
PLANKTON_CLI = "plankton_cli.cli:cli"

# Job states use SLURM's vocabulary (squeue/sacct), the richest one a backend is likely to meet.
# A job in any other state (PENDING, RUNNING, REQUEUED, COMPLETING, ...) may still change.
FINISHED_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)

# Exit status for a job that ended without its command finishing (cancelled, killed at the time limit after
# its last requeue, node failure): sysexits' EX_TEMPFAIL, "try again", since `--resume` can pick it up.
EXIT_NOT_FINISHED = 75


@dataclass
class Resources:
    """What a job asks of the machine it runs on. `None` means "the cluster's default"."""

    nodes: int = 1
    devices: int = 1  # GPUs per node, or CPU processes per node when accelerator="cpu"; one task each
    accelerator: Literal["cpu", "gpu"] = "cpu"
    cpus_per_task: int | None = None  # DataLoader workers + 1 is a good start
    mem_gb: float | None = None  # per node
    time_min: int = 60  # wall-clock limit; a job that hits it is requeued with --resume where it can be
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    extra_sbatch: dict[str, str | int | bool] = field(default_factory=dict)  # e.g. {"constraint": "h100"}
    setup: list[str] = field(default_factory=list)  # shell lines before the command ("module load cuda")


@dataclass
class Job:
    """A `plankton` command line and the resources to run it with."""

    argv: list[str]  # the arguments after `plankton`
    resources: Resources = field(default_factory=Resources)
    run_dir: Path = Path(".")  # where the backend keeps scripts and logs
    name: str = "plankton"


@runtime_checkable
class JobHandle(Protocol):
    """A submitted job.

    - `job_id`: the backend's id for it (the SLURM job id, ...).
    - `log_paths`: files the job's output goes to (empty when it goes to this terminal).
    - `state()`: the current state, one of SLURM's names (see `FINISHED_STATES`).
    - `wait()`: block until the job has finished and return its exit status (0 on success).
    - `cancel()`: stop the job if it is still queued or running.
    """

    job_id: str
    log_paths: list[Path]

    def state(self) -> str: ...

    def wait(self) -> int: ...

    def cancel(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """Runs `plankton` command lines somewhere.

    - `name`: what `--backend NAME` calls it (the entry-point name).
    - `submit(job)`: start the job and return its handle (a local backend may run it to the end first).
    - `dry_run(job)`: exactly what `submit` would do, as text, without doing it (for `--dry-run`).
    - `state(job_id)`: the current state of a job submitted earlier, possibly by another process.
    """

    name: str

    def submit(self, job: Job) -> JobHandle: ...

    def dry_run(self, job: Job) -> str: ...

    def state(self, job_id: str) -> str: ...


def load_cli(target: str = PLANKTON_CLI) -> click.Command:
    """The Click command named by "module:attribute"."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def run_plankton(argv: Sequence[str], cli: str = PLANKTON_CLI) -> int:
    """Run `plankton <argv>` in this process and return its exit status, as the `plankton` script would.

    Click's own errors (bad usage, `ClickException`, abort) become their exit status and message. Other
    exceptions and `SystemExit` propagate: the caller decides (the SLURM task must let submitit's
    requeue `SystemExit` through).
    """
    import click  # here, not at module level: `plankton --help` should not pay for what it does not run

    command = load_cli(cli)
    try:
        rv = command.main(args=list(argv), prog_name="plankton", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    # A command that returns an int means it as its exit status (Click returns ctx.exit's code the same way).
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
