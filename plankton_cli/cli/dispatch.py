"""Run a command here or hand it to a compute backend: the options and the hand-off shared by
`pretrain`, `finetune` and `predict`.

Scheme (one task per device, what Lightning and SLURM both expect):

- ``--devices N`` (alias ``--gpus-per-node``): processes per node, one per GPU, or CPU processes with
  ``--accelerator cpu``;
- ``--num-nodes N`` (alias ``--nodes``): nodes;
- ``--accelerator auto|cpu|gpu``;
- everything else (``--partition``, ``--cpus-per-task``, ``--mem``, ``--time``, ``--account``, ``--qos``,
  ``--sbatch KEY=VALUE``, ``--setup LINE``, ``--wait``, ``--dry-run``) only matters to a non-local backend.

A command calls ``dispatch`` first. With ``--backend local`` it returns False and the command runs in this
process. Otherwise the command line is rebuilt from the Click context (every option the user set, by flag,
environment variable or config file, minus the backend-only ones, plus ``--backend local``), submitted as a
`plankton_cli.jobs.Job`, recorded in ``jobs.jsonl`` (see `plankton jobs`), and ``dispatch`` returns True:
the command has nothing more to do here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

if TYPE_CHECKING:
    from plankton_cli.jobs import Resources

# Parameters that configure where a command runs, not what it does: never passed to the job itself.
BACKEND_ONLY = (
    "backend", "partition", "cpus_per_task", "mem", "time", "account", "qos", "sbatch", "setup", "wait", "dry_run",
)


@dataclass
class BackendOptions:
    """The parsed backend options, handed to the command as ``backend_opts``."""

    backend: str = "local"
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    partition: str | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 60
    account: str | None = None
    qos: str | None = None
    sbatch: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    wait: bool = False
    dry_run: bool = False

    def resources(self) -> Resources:
        """The `Resources` a submitted job asks for. ``--accelerator auto`` asks for GPUs (one per device):
        training is what clusters are used for; CPU-only jobs say ``--accelerator cpu``."""
        from plankton_cli.jobs import Resources

        accelerator = "gpu" if self.accelerator == "auto" else self.accelerator
        return Resources(
            nodes=self.num_nodes, devices=self.devices, accelerator=accelerator,  # type: ignore[arg-type]
            cpus_per_task=self.cpus_per_task, mem_gb=self.mem_gb, time_min=self.time_min,
            partition=self.partition, account=self.account, qos=self.qos,
            extra_sbatch=dict(self.sbatch), setup=list(self.setup),
        )


def _backend_names() -> list[str]:
    from plankton_cli.core import plugins

    return plugins.names("backend") or ["local"]


def parse_mem(value: str) -> float:
    """``64G``/``64GB``/``64`` (GB), ``512M``, ``1T`` → gigabytes."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", value, re.IGNORECASE)
    if not found:
        raise click.BadParameter(f"expected a size like 64G or 512M, got {value!r}", param_hint="--mem")
    number, unit = float(found.group(1)), found.group(2).upper() or "G"
    return number * {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[unit]


def parse_time(value: str) -> int:
    """SLURM time formats (``90``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) → minutes,
    rounded up."""
    found = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if not found:
        raise click.BadParameter(f"expected minutes or [D-]HH:MM:SS, got {value!r}", param_hint="--time")
    days, a, b, c = (int(g) if g else None for g in found.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # minutes
        seconds = a * 60
    return max(1, -(-seconds // 60))


def backend_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: adds the backend options and passes them to the command as one ``backend_opts`` argument."""
    options = [
        click.option("--backend", default="local", show_default=True, metavar="NAME",
                     help="Where to run: local (this process) or a backend plugin such as slurm "
                          "(see `plankton plugins`)."),
        click.option("--devices", "--gpus-per-node", "devices", type=click.IntRange(min=1), default=1,
                     show_default=True, help="Processes per node: one per GPU, or CPU processes with "
                                             "--accelerator cpu. DDP when devices × nodes > 1."),
        click.option("--num-nodes", "--nodes", "num_nodes", type=click.IntRange(min=1), default=1,
                     show_default=True, help="Nodes to train on."),
        click.option("--accelerator", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
                     show_default=True, help="auto: a GPU when there is one."),
        click.option("--partition", help="[cluster] SLURM partition."),
        click.option("--cpus-per-task", type=click.IntRange(min=1),
                     help="[cluster] CPUs per task (DataLoader workers + 1 is a good start)."),
        click.option("--mem", help="[cluster] Memory per node, e.g. 64G."),
        click.option("--time", default="60", show_default=True,
                     help="[cluster] Wall-clock limit: minutes or [D-]HH:MM:SS. A job that hits it is requeued "
                          "and resumes from its last checkpoint."),
        click.option("--account", help="[cluster] Account to charge."),
        click.option("--qos", help="[cluster] Quality of service."),
        click.option("--sbatch", multiple=True, metavar="KEY=VALUE",
                     help="[cluster] Extra sbatch option, e.g. --sbatch constraint=h100 (repeatable; "
                          "a bare KEY is a flag)."),
        click.option("--setup", multiple=True, metavar="LINE",
                     help="[cluster] Shell line to run before the command, e.g. 'module load cuda' (repeatable)."),
        click.option("--wait", is_flag=True, help="[cluster] Follow the submitted job until it ends; exit with its "
                                                  "status."),
        click.option("--dry-run", is_flag=True, help="Print what would be run or submitted (the job script), "
                                                     "and do nothing."),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        backend = kwargs.pop("backend")
        if backend not in _backend_names():
            raise click.BadParameter(f"unknown backend {backend!r}; installed: {', '.join(_backend_names())}",
                                     param_hint="--backend")
        extra: dict[str, str] = {}
        for item in kwargs.pop("sbatch"):
            key, sep, value = item.partition("=")
            if not key:
                raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--sbatch")
            extra[key.lstrip("-")] = value if sep else ""
        mem = kwargs.pop("mem")
        kwargs["backend_opts"] = BackendOptions(
            backend=backend,
            devices=kwargs.pop("devices"),
            num_nodes=kwargs.pop("num_nodes"),
            accelerator=kwargs.pop("accelerator"),
            partition=kwargs.pop("partition"),
            cpus_per_task=kwargs.pop("cpus_per_task"),
            mem_gb=parse_mem(mem) if mem else None,
            time_min=parse_time(kwargs.pop("time")),
            account=kwargs.pop("account"),
            qos=kwargs.pop("qos"),
            sbatch=extra,
            setup=list(kwargs.pop("setup")),
            wait=kwargs.pop("wait"),
            dry_run=kwargs.pop("dry_run"),
        )
        return command(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def job_argv(ctx: click.Context) -> list[str]:
    """The arguments after `plankton` that re-run this command, minus the backend-only options,
    plus ``--backend local`` (so a job never submits itself again, whatever its environment says).

    Only parameters the user set (command line, environment variable, config file) are written out, so the
    job does not depend on this machine's environment or config file. Paths are made absolute.
    """
    argv: list[str] = []
    root = ctx.find_root()
    if root is not ctx:
        argv += _params_argv(root, exclude=("config",))
    argv.append(ctx.info_name or ctx.command.name or "")
    argv += _params_argv(ctx, exclude=BACKEND_ONLY)
    argv += ["--backend", "local"]
    return argv


def _params_argv(ctx: click.Context, exclude: tuple[str, ...]) -> list[str]:
    options: list[str] = []
    arguments: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name is None or name in exclude or name not in ctx.params:
            continue
        source = ctx.get_parameter_source(name)
        if source in (None, ParameterSource.DEFAULT):
            continue
        value = ctx.params[name]
        if isinstance(param, click.Argument):
            values = value if isinstance(value, (list, tuple)) else [value]
            arguments += [_text(v) for v in values if v is not None]
            continue
        assert isinstance(param, click.Option)
        if param.is_flag and not param.count:
            if param.secondary_opts:  # --x/--no-x
                options.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                options.append(param.opts[0])
            continue
        if param.count:
            options += [param.opts[0]] * int(value or 0)
            continue
        if value is None:
            continue
        values = value if param.multiple else [value]
        for v in values:
            if isinstance(v, (list, tuple)):  # nargs > 1
                options += [param.opts[0], *(_text(x) for x in v)]
            else:
                options += [param.opts[0], _text(v)]
    return options + (["--", *arguments] if arguments else [])


def _text(value: Any) -> str:
    if isinstance(value, Path):
        return str(value.expanduser().absolute())
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def dispatch(
    ctx: click.Context,
    backend: str,
    resources: Resources,
    run_dir: Path,
    *,
    wait: bool = False,
    dry_run: bool = False,
    record_dir: Path | None = None,
    name: str | None = None,
) -> bool:
    """Hand the current command to ``backend`` unless it is ``local``; True when the command must stop here.

    - ``local`` without ``dry_run``: returns False, the command runs in this process.
    - ``dry_run``: prints what the backend would do (for SLURM, the sbatch script) and returns True.
    - otherwise: submits `job_argv(ctx)` as a Job whose backend files go under ``run_dir``, prints the job id
      and log paths on stderr, records it in ``<record_dir or run_dir>/jobs.jsonl``, follows it with ``wait``
      (exiting with its status when that is not 0), and returns True.
    """
    if backend == "local" and not dry_run:
        return False
    from plankton_cli.core import plugins
    from plankton_cli.jobs import Job, record

    try:
        runner = plugins.load("backend", backend)
    except plugins.PluginError as exc:
        raise click.UsageError(str(exc)) from exc
    job = Job(argv=job_argv(ctx), resources=resources, run_dir=Path(run_dir).absolute(),
              name=name or f"plankton-{ctx.info_name}")
    if dry_run:
        click.echo(runner.dry_run(job))
        return True

    job.run_dir.mkdir(parents=True, exist_ok=True)
    handle = runner.submit(job)
    click.echo(f"submitted {job.name} to {backend}: job {handle.job_id}", err=True)
    for path in handle.log_paths:
        click.echo(f"  log: {path}", err=True)
    where = Path(record_dir or job.run_dir)
    record(where, job, handle, backend)
    if not wait:
        click.echo(f"follow it with: plankton jobs {where}", err=True)
        return True
    status = handle.wait()
    click.echo(f"job {handle.job_id} ended: {handle.state()} (exit status {status})", err=True)
    if status != 0:
        ctx.exit(status)
    return True
