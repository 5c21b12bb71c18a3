"""The `local` backend: run the command in this process, to the end, before `submit` returns.

Nothing is launched or queued: `plankton pretrain --backend local ...` behaves exactly like running the
command directly (Lightning starts its own processes for several devices). This is the default backend.
"""

from __future__ import annotations

import shlex
import sys
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from plankton_cli.jobs.base import PLANKTON_CLI, Job, run_plankton


@dataclass
class LocalJobHandle:
    """A job that has already run; its state and exit status are final."""

    job_id: str
    exit_code: int
    log_paths: list[Path] = field(default_factory=list)  # output went to this terminal

    def state(self) -> str:
        return "COMPLETED" if self.exit_code == 0 else "FAILED"

    def wait(self) -> int:
        return self.exit_code

    def cancel(self) -> None:
        """Nothing to cancel: the job finished before its handle existed."""


class LocalBackend:
    """Runs `plankton <argv>` in this process by calling the Click command."""

    name = "local"
    description = "run the command in this process (default)"

    def __init__(self, cli: str = PLANKTON_CLI) -> None:
        self.cli = cli  # "module:attribute" of the Click command; only tests point it elsewhere

    def submit(self, job: Job) -> LocalJobHandle:
        job_id = f"local-{uuid.uuid4().hex[:8]}"
        try:
            exit_code = run_plankton(job.argv, self.cli)
        except SystemExit as exc:  # a command that calls sys.exit() directly
            exit_code = _exit_status(exc.code)
            if exit_code == 1 and isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)  # what the interpreter would have printed
        except Exception:
            # The handle must still report the failure; the traceback is what the user needs to see.
            traceback.print_exc()
            exit_code = 1
        return LocalJobHandle(job_id, exit_code)

    def dry_run(self, job: Job) -> str:
        return f"would run in this process: plankton {shlex.join(job.argv)}"

    def state(self, job_id: str) -> str:
        # Local jobs are over when `submit` returns; the registry keeps their exit status instead.
        return "UNKNOWN"


def _exit_status(code: object) -> int:
    """The process exit status `sys.exit(code)` would give."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1  # sys.exit("message") prints the message and exits with 1
