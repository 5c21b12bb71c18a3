"""The record of submitted jobs behind `plankton jobs`: one JSON line per job in `<directory>/jobs.jsonl`.

The directory is the store (or the run directory) the job works on, so the record travels with the data it
produced. Lines are only ever appended (one short `write` on a file opened for appending, which concurrent
submitters do not interleave); a job's current state is asked of its backend when listing, except for jobs
that had already finished when they were recorded (local ones), whose exit status is kept in the line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from plankton_cli.jobs.base import FINISHED_STATES, Backend, Job, JobHandle

JOBS_FILE = "jobs.jsonl"


@dataclass
class JobRecord:
    job_id: str
    backend: str
    name: str
    argv: list[str]
    run_dir: str
    submitted_at: str  # ISO 8601, UTC
    log_paths: list[str] = field(default_factory=list)
    state: str | None = None  # final state, when known at recording time; else asked of the backend
    exit_code: int | None = None


def record(directory: Path, job: Job, handle: JobHandle, backend: str) -> JobRecord:
    """Append the job just submitted through `backend` (its name) to `<directory>/jobs.jsonl`."""
    state = handle.state()
    finished = state in FINISHED_STATES
    entry = JobRecord(
        job_id=handle.job_id,
        backend=backend,
        name=job.name,
        argv=list(job.argv),
        run_dir=str(Path(job.run_dir).resolve()),
        submitted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        log_paths=[str(p) for p in handle.log_paths],
        state=state if finished else None,
        exit_code=handle.wait() if finished else None,  # returns at once: the job is over
    )
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / JOBS_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(entry)) + "\n")
    return entry


def list_jobs(
    directory: Path,
    backends: Mapping[str, Backend] | Callable[[str], Backend] | None = None,
) -> list[JobRecord]:
    """Every job recorded in `<directory>/jobs.jsonl`, oldest first, with its current state.

    `backends` gives the backend that answers for a backend name's jobs (a mapping, or a function of the
    name); by default the installed `plankton.backends` plugins.
    A job whose backend is missing or cannot tell is listed as UNKNOWN.
    """
    path = directory / JOBS_FILE
    if not path.exists():
        return []
    lookup = _lookup(backends)
    jobs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        entry = JobRecord(**json.loads(line))
        if entry.state is None:
            entry.state = _current_state(lookup, entry)
        jobs.append(entry)
    return jobs


def _lookup(backends: Mapping[str, Backend] | Callable[[str], Backend] | None) -> Callable[[str], Backend]:
    if backends is None:
        from plankton_cli.core import plugins

        return lambda name: plugins.load("backend", name)
    if isinstance(backends, Mapping):
        return backends.__getitem__
    return backends


def _current_state(lookup: Callable[[str], Backend], entry: JobRecord) -> str:
    try:
        return lookup(entry.backend).state(entry.job_id)
    except Exception:  # an uninstalled or broken backend must not stop the listing
        return "UNKNOWN"
