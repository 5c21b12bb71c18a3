"""Fan-out: a command's work in shards, run by worker processes here (`--workers N`) or by a SLURM job array
(`--backend slurm --shards N`), committed by the command itself in one store transaction.

The command plans (what to read, split into disjoint slices), runs `work(k)` for every shard k, then reads the
shards' seals and commits (`plankton_cli.store.shards`). `work` is a picklable callable (a module-level class
holding plain data): forked workers get it by pickle, array tasks by submitit's pickle on the shared file system,
and each shard writes only into its own folder of the store. A shard that raises leaves no seal: the others still
run, and the commit then fails naming the missing ones (nothing is committed; running the command again does all
of it). On SLURM, a task that hits its time limit or is preempted is requeued by submitit and starts its shard
again.

`PLANKTON_FAIL_SHARD=k` makes shard k fail before it writes anything: fault injection, for tests and for drilling
what a failed task does to a nightly job.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plankton_cli.jobs import Resources

log = logging.getLogger("plankton.fanout")

FAIL_SHARD = "PLANKTON_FAIL_SHARD"


@dataclass
class FanOut:
    """Where the shards run: `workers` processes here, or `shards` tasks of a `backend` job array."""

    workers: int = 1
    backend: str = "local"
    shards: int = 1
    resources: Resources | None = None  # for a cluster backend
    run_dir: Path = Path(".")  # where a cluster backend keeps its scripts and logs
    pool: ProcessPoolExecutor | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        """How many shards the work is split into."""
        return self.shards if self.backend != "local" else self.workers

    @property
    def fanned(self) -> bool:
        return self.count > 1 or self.backend != "local"

    @contextmanager
    def started(self) -> Iterator[FanOut]:
        """Start the local worker processes now, before the caller takes the store lock: forked later, they would
        inherit its file descriptor (an orphaned worker would keep the store locked)."""
        if self.backend != "local" or self.workers <= 1:
            yield self
            return
        # fork: the workers inherit the imported modules; each opens the files it reads itself. An executor, not
        # a Pool: a worker that dies (killed, out of memory) fails its shard instead of hanging the run.
        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork")) as pool:
            pool.submit(int).result()  # a fork executor starts every worker on its first task: now, before the lock
            self.pool = pool
            try:
                yield self
            finally:
                self.pool = None

    def run(self, work: Callable[[int], Any]) -> str:
        """`work(k)` for every shard; returns "" when every shard ran, else where their errors are (for the
        `ShardsMissing` the commit raises)."""
        if self.backend == "local":
            if self.pool is None:
                failures = [f for f in map(_Guarded(work), range(self.count)) if f]
            else:
                futures = {k: self.pool.submit(_Guarded(work), k) for k in range(self.count)}
                failures = [f for f in map(_outcome, futures.items()) if f]
            for failure in failures:
                log.error("%s", failure)
            return f": {failures[0].splitlines()[0]}" if failures else ""
        from plankton_cli.core import plugins

        backend = plugins.load("backend", self.backend)
        submit_array = getattr(backend, "submit_array", None)
        if submit_array is None:
            raise plugins.PluginError(f"backend {self.backend!r} cannot run job arrays (no submit_array)")
        return submit_array(work, self.count, self.resources, Path(self.run_dir).absolute())


@dataclass
class Shard:
    """What one shard of a store's objects is (for `predict`): the run, where its output goes, its row groups."""

    run_id: str
    index: int
    folder: Path  # the shard's own folder inside the store (`store.shards`)
    row_groups: dict[str, list[int]]  # store-relative objects file -> row group numbers


def _outcome(shard: tuple[int, Future]) -> str:
    """What a worker's shard came to ("" when it ran), also when the worker died."""
    k, future = shard
    try:
        return future.result()
    except BrokenProcessPool as exc:
        return f"shard {k} failed: its worker process died ({exc})"


class _Guarded:
    """`work(k)` in a worker: "" when it ran, else one line naming the shard and its error (traceback logged)."""

    def __init__(self, work: Callable[[int], Any]):
        self.work = work

    def __call__(self, k: int) -> str:
        try:
            run_shard(self.work, k)
        except Exception as exc:
            log.debug("shard %d failed:\n%s", k, traceback.format_exc())
            return f"shard {k} failed: {type(exc).__name__}: {exc}"
        return ""


def run_shard(work: Callable[[int], Any], k: int) -> Any:
    """What every shard runs, here or on a node: `work(k)`, unless `PLANKTON_FAIL_SHARD` names it."""
    if str(k) in os.environ.get(FAIL_SHARD, "").split(","):
        raise RuntimeError(f"shard {k} made to fail by {FAIL_SHARD}")
    return work(k)


def split(weights: list[int], n: int) -> list[list[int]]:
    """Indices of `weights` in `n` slices of about equal total weight (largest first onto the lightest slice);
    each slice in index order."""
    slices: list[list[int]] = [[] for _ in range(n)]
    totals = [0] * n
    for i in sorted(range(len(weights)), key=lambda i: -weights[i]):
        k = totals.index(min(totals))
        slices[k].append(i)
        totals[k] += weights[i]
    return [sorted(s) for s in slices]
