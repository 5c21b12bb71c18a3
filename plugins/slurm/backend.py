"""The `slurm` backend: submitit runs the `plankton` command line on a SLURM cluster.

One SLURM task per device (GPU, or CPU process), every task running the same command line; Lightning's
`SLURMEnvironment` reads each task's rank from SLURM's variables, so `--ntasks-per-node` must equal the
command's `--devices` and `--nodes` its `--num-nodes` (Lightning hangs otherwise).

Requeue has one owner, submitit: SLURM sends USR2 90 s before the time limit (or on preemption), submitit
calls `PlanktonCommand.checkpoint()`, which resubmits the same command with `--resume`, and requeues the job
(up to 3 times for timeouts, without limit for preemption). The training code must therefore use
`SLURMEnvironment(auto_requeue=False)`.

Job states come from `squeue`, then `sacct`, then `sacct -c` (the job-completion log that clusters without an
accounting database keep, such as the one `.ci/slurm-up.sh` starts). submitit's own watcher only asks
`sacct` and would wait forever for a cancelled job on such a cluster, so the handle does not use it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import click
import submitit

from plankton_cli.jobs.fanout import run_shard
from plankton_cli.jobs.base import (EXIT_NOT_FINISHED, FINISHED_STATES, PLANKTON_CLI, Job, Resources, load_cli,
                                    run_plankton)

RESUME_FLAG = "--resume"


class CommandFailed(RuntimeError):
    """The command exited with a non-zero status. Raised in the task so SLURM marks the job FAILED."""

    def __init__(self, argv: list[str], status: int) -> None:
        super().__init__(f"plankton exited with status {status}: plankton {' '.join(argv)}")
        self.status = status


# The handle finds a failed task's exit status in the traceback submitit saves; this matches the message above.
_FAILED_STATUS = re.compile(r"CommandFailed: plankton exited with status (-?\d+)")


class PlanktonCommand(submitit.helpers.Checkpointable):
    """What each SLURM task runs: `plankton <argv>`, in the task's Python process.

    Module-level and holding only strings, so it pickles by reference into the submitted job.
    """

    def __init__(self, argv: list[str], cli: str = PLANKTON_CLI) -> None:
        self.argv = list(argv)
        self.cli = cli

    def __call__(self) -> int:
        status = run_plankton(self.argv, self.cli)
        if status != 0:
            raise CommandFailed(self.argv, status)
        return 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout or preemption: the same command, resuming from its last checkpoint.

        The command itself writes checkpoints as it goes; nothing needs saving here. `--resume` is only added
        to commands that accept it (a preempted `predict` simply starts again).
        """
        argv = self.argv
        if RESUME_FLAG not in argv and _accepts_option(load_cli(self.cli), argv, RESUME_FLAG):
            argv = [*argv, RESUME_FLAG]
        return submitit.helpers.DelayedSubmission(PlanktonCommand(argv, self.cli), *args, **kwargs)


def _accepts_option(cli: click.Command, argv: list[str], option: str) -> bool:
    """Whether the (sub)command that `argv` selects in `cli` has `option`."""
    command = cli
    ctx = click.Context(cli)
    for arg in argv:
        if not isinstance(command, click.Group):
            break
        sub = command.get_command(ctx, arg)
        if sub is not None:
            command = sub
    return any(option in param.opts for param in command.params)


class ShardTask(submitit.helpers.Checkpointable):
    """What each array task of a fanned-out command runs: its shard of the work (`plankton_cli.jobs.fanout`).

    Checkpointable: on timeout or preemption submitit requeues the task with the same shard, which starts again
    (a shard seals its output only when done, so a half-done one leaves nothing to resume from)."""

    def __init__(self, work: Any) -> None:
        self.work = work

    def __call__(self, k: int) -> int:
        run_shard(self.work, k)
        return 0


class SlurmJobHandle:
    """A job submitted to SLURM through submitit; one submitit task per SLURM task."""

    def __init__(self, job: submitit.Job) -> None:
        self._job = job
        self.job_id: str = job.job_id
        self._tasks = [job.task(i) for i in range(job.num_tasks)]
        self.log_paths: list[Path] = [p for t in self._tasks for p in (t.paths.stdout, t.paths.stderr)]

    def state(self) -> str:
        return slurm_state(self.job_id)

    def wait(self, poll_s: float = 2.0) -> int:
        """Block until every task has finished; return the first non-zero task exit status, else 0."""
        state = slurm_state(self.job_id)
        while not self._all_results() and state not in FINISHED_STATES:
            time.sleep(poll_s)
            state = slurm_state(self.job_id)
        # The results are written before SLURM ends the job (epilogue, accounting): give it a moment to say so, so
        # that `state()` after `wait()` is final. Bounded: a cluster whose tools know no finished job never would.
        deadline = time.monotonic() + 60
        while state not in FINISHED_STATES and time.monotonic() < deadline:
            time.sleep(min(poll_s, 1.0))
            state = slurm_state(self.job_id)
        # Tasks that exited by themselves wrote a result, which a slow shared file system may show late.
        # Cancelled or killed ones never will.
        if state in ("COMPLETED", "FAILED"):
            for _ in range(10):
                if self._all_results():
                    break
                time.sleep(1)
        statuses = [self._exit_status(task) for task in self._tasks]
        return next((s for s in statuses if s != 0), 0)

    def cancel(self) -> None:
        self._job.cancel(check=False)

    def _all_results(self) -> bool:
        return all(task.paths.result_pickle.exists() for task in self._tasks)

    @staticmethod
    def _exit_status(task: submitit.Job) -> int:
        if not task.paths.result_pickle.exists():
            return EXIT_NOT_FINISHED  # killed, cancelled or out of requeues before the command returned
        error = task.exception()  # returns at once: the result file is there
        if error is None:
            return int(task.result())
        found = _FAILED_STATUS.search(str(error))
        return int(found.group(1)) if found else 1  # 1: an exception, as Python's own exit status


class SlurmBackend:
    """Submits `plankton` command lines to SLURM with submitit, logs under `<run_dir>/slurm/`."""

    name = "slurm"
    description = "submit to a SLURM cluster with submitit (one task per device, requeue with --resume)"

    def __init__(self, cli: str = PLANKTON_CLI) -> None:
        self.cli = cli  # "module:attribute" of the Click command each task runs

    def submit(self, job: Job) -> SlurmJobHandle:
        submitted = self._executor(job).submit(PlanktonCommand(job.argv, self.cli))
        return SlurmJobHandle(submitted)  # the command reports the id and log paths (cli/dispatch.py)

    def submit_array(self, work: Any, shards: int, resources: Resources | None, run_dir: Path) -> str:
        """Run `work(k)` for k < `shards` as one job array (one task per shard, all at once if the cluster has
        room), wait for every task; returns "" when all finished, else which failed and their logs."""
        job = Job(argv=[], resources=resources or Resources(accelerator="cpu"), run_dir=run_dir,
                  name="plankton-shards")
        executor = self._executor(job)
        executor.update_parameters(slurm_array_parallelism=shards)
        tasks = executor.map_array(ShardTask(work), range(shards))
        click.echo(f"submitted {shards} shards to slurm: job array {tasks[0].job_id.split('_')[0]} "
                   f"(logs in {run_dir / 'slurm'})", err=True)
        failed = [f"shard {k} (job {task.job_id}, exit {status}, log {task.paths.stderr})"
                  for k, task in enumerate(tasks) if (status := SlurmJobHandle(task).wait()) != 0]
        return ": " + "; ".join(failed) if failed else ""

    def dry_run(self, job: Job) -> str:
        """The sbatch script `submit` would write, rendered by submitit itself (nothing is submitted)."""
        executor = self._executor(job)
        # `_make_submission_file_text` is the call submitit's own submit makes; there is no public one.
        slurm_executor = executor._executor
        return slurm_executor._make_submission_file_text(slurm_executor._submitit_command_str, uuid.uuid4().hex)

    def state(self, job_id: str) -> str:
        return slurm_state(job_id)

    def _executor(self, job: Job) -> submitit.AutoExecutor:
        if shutil.which("srun") is None:
            raise click.ClickException("SLURM is not installed here: no `srun` on PATH")
        executor = submitit.AutoExecutor(folder=Path(job.run_dir) / "slurm", cluster="slurm")
        executor.update_parameters(**slurm_parameters(job))
        return executor


def slurm_parameters(job: Job) -> dict[str, Any]:
    """submitit's `update_parameters` arguments for a job (unset resources are left to the cluster)."""
    r = job.resources
    params: dict[str, Any] = {
        "name": job.name,
        "nodes": r.nodes,
        "tasks_per_node": r.devices,  # one task per GPU: what Lightning's SLURMEnvironment expects
        "timeout_min": r.time_min,
        "cpus_per_task": r.cpus_per_task,
        "mem_gb": r.mem_gb,
        "gpus_per_node": r.devices if r.accelerator == "gpu" else None,
        "slurm_partition": r.partition,
        "slurm_account": r.account,
        "slurm_qos": r.qos,
        "slurm_additional_parameters": dict(r.extra_sbatch) or None,
        "slurm_setup": list(r.setup) or None,
    }
    return {key: value for key, value in params.items() if value is not None}


def slurm_state(job_id: str) -> str:
    """The job's state in SLURM's words (RUNNING, COMPLETED, ...), or UNKNOWN if no tool knows it."""
    queued = _run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"])
    if queued:
        return queued.split()[0]
    # -c reads the job-completion log, for clusters that keep no accounting database.
    for completion_log in ([], ["-c"]):
        accounted = _run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id, *completion_log])
        if accounted:
            # The last line is the latest run of a requeued job; "CANCELLED by 0" -> "CANCELLED".
            return accounted.splitlines()[-1].split()[0]
    return "UNKNOWN"


def _run(command: list[str]) -> str:
    """A SLURM query's stdout, or "" when it fails (unknown job, no accounting, tool missing)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""
