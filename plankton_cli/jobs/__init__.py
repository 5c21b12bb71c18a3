"""Compute backends: run a `plankton` command line here (`local`) or on a cluster (`slurm`, third parties).

The SLURM backend lives in `plankton_plugins.slurm` and is loaded through the `plankton.backends` entry
points like any third-party backend, so importing this package never imports submitit.
"""

from plankton_cli.jobs.base import (
    EXIT_NOT_FINISHED,
    FINISHED_STATES,
    PLANKTON_CLI,
    Backend,
    Job,
    JobHandle,
    Resources,
    run_plankton,
)
from plankton_cli.jobs.local import LocalBackend
from plankton_cli.jobs.registry import JOBS_FILE, JobRecord, list_jobs, record

__all__ = [
    "EXIT_NOT_FINISHED",
    "FINISHED_STATES",
    "JOBS_FILE",
    "PLANKTON_CLI",
    "Backend",
    "Job",
    "JobHandle",
    "JobRecord",
    "LocalBackend",
    "Resources",
    "list_jobs",
    "record",
    "run_plankton",
]
