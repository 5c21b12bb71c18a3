"""`plankton features` as a library function: the store's `objects` → its `features` dataset (morphometrics).

The same guarantees as `plankton pad`, each tested:
- Counts add up: read = computed + skipped (measured before with the same content and settings, or rejected
  before with them) + rejected.
- Incremental and idempotent: an object is measured again only when its `content_hash` or the feature settings
  (`morphometrics.SETTINGS`) changed; its old row is then dropped in the same commit, as are the rows of objects
  that left `objects`.
- Atomic: one commit of a `WriteSession` under the store's writer lock; a crash leaves the store as before (or, once the
  journal is written, as after). Rows are written in `objects` order, so a re-run writes identical values.

Torch-free: `plankton features --help` and a station box without the `train` extra can run it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli.jobs.fanout import FanOut, split
from plankton_cli.prepare.features.morphometrics import SETTINGS, NoObject, measure
from plankton_cli.store import Store
from plankton_cli.store.images import ImageError, decode
from plankton_cli.store.layout import partition_values
from plankton_cli.store.schema import load_schema
from plankton_cli.store.session import WriteSession
from plankton_cli.store.shards import ShardSession, ShardSpace
from plankton_cli.store.transaction import new_run_id

log = logging.getLogger("plankton.features")

DATASET = "features"
COMMAND = "features"
_PLAN_COLUMNS = ["object_id", "content_hash", "ingested_at", "pixel_size_um", "source_key", "source_file",
                 "source_row"]


@dataclass
class FeaturesSummary:
    run: str
    store: str
    settings: str
    read: int = 0
    computed: int = 0
    skipped: int = 0  # measured before with the same content and settings
    skipped_rejected: int = 0  # rejected before with the same content and settings
    rejected: Counter = field(default_factory=Counter)  # reason kind -> count
    removed: int = 0  # old rows dropped: measured again, or their object left `objects`

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> dict:
        return {
            "run": self.run, "store": self.store, "settings": self.settings, "read": self.read,
            "computed": self.computed, "skipped": self.skipped + self.skipped_rejected,
            "skipped_already_computed": self.skipped, "skipped_rejected_before": self.skipped_rejected,
            "rejected": self.n_rejected, "rejected_by_reason": dict(self.rejected), "removed": self.removed,
        }


def compute_features(store: Store, *, lock_timeout: float = 60.0,
                     on_progress: Callable[[int], None] | None = None, fanout: FanOut | None = None) -> FeaturesSummary:
    """Measure every object of `objects` not yet measured with these settings into the `features` dataset.

    `fanout`: the row groups to measure split between worker processes or a cluster's job array, which stage their
    rows; committed here with the rest, at once."""
    run_id = new_run_id()
    summary = FeaturesSummary(run=run_id, store=str(store.root), settings=SETTINGS)
    fan = fanout if fanout is not None and fanout.fanned else None
    with fan.started() if fan else nullcontext(), store.locked(timeout=lock_timeout):
        done = _measured(store)
        schema = load_schema(DATASET)
        session = WriteSession(store.root, run_id, COMMAND)
        session.writer(DATASET, schema)
        try:
            tasks, to_drop = _plan(store, done, summary)
            fan = fan if tasks else None  # nothing to measure: no shard to start
            with ShardSpace(store.root, run_id) if fan else nullcontext() as space:  # the shards' files until the commit
                if fan is None:
                    for task in tasks:
                        _measure(task, session, summary)
                        if on_progress:
                            on_progress(len(task.rows))
                else:
                    _measure_fanned(space, session, tasks, fan, summary)
                summary.removed, _ = session.remove_ids({done[oid][2] for oid in to_drop}, to_drop, schema)
                # One commit for the whole run (unlike pad's commit every ~256 MB): feature rows are small, and a
                # run that fails part-way then leaves the store exactly as before.
                session.commit()
        except BaseException:
            session.abort()
            raise
    return summary


@dataclass(frozen=True)
class _Task:
    """The objects of one row group to measure."""

    path: str
    group: int
    rows: tuple[int, ...]  # offsets in the row group
    instrument: str | None  # from the partition folder, when the file has no instrument column


def _plan(store: Store, done: dict[str, tuple[str, str, str]], summary: FeaturesSummary
          ) -> tuple[list[_Task], set[str]]:
    """The row groups' objects to measure, and the ids whose stored row goes (measured again, or gone)."""
    rejected_before = _rejected_before(store)
    tasks, to_drop, seen = [], set(), set()
    for path in store.files("objects"):
        partition = partition_values(path, store.root / "objects")
        with pq.ParquetFile(path) as file:
            for group in range(file.num_row_groups):
                plan = file.read_row_group(group, columns=["object_id", "content_hash", "ingested_at"])
                todo = []
                for offset, (oid, content, ingested) in enumerate(zip(*(c.to_pylist() for c in plan.columns))):
                    seen.add(oid)
                    summary.read += 1
                    stored = done.get(oid)
                    if stored is not None and stored[:2] == (content, SETTINGS):
                        summary.skipped += 1
                    elif any(at >= ingested for at in rejected_before.get(oid, ())):
                        summary.skipped_rejected += 1
                    else:
                        todo.append(offset)
                        if stored is not None:
                            to_drop.add(oid)
                if todo:
                    tasks.append(_Task(str(path), group, tuple(todo), partition.get("instrument")))
    return tasks, to_drop | (set(done) - seen)  # and the objects that left `objects`


def _measure(task: _Task, session: WriteSession, summary: FeaturesSummary) -> None:
    """Measure a task's objects into `session` (rows or rejections), counting them in `summary`."""
    with pq.ParquetFile(task.path) as file:
        columns = _PLAN_COLUMNS + ([] if task.instrument is not None else ["instrument"])
        plan = file.read_row_group(task.group, columns=columns).take(list(task.rows)).to_pylist()
        images = file.read_row_group(task.group, columns=["image"]).take(list(task.rows))["image"].to_pylist()
    now = datetime.now(UTC)
    for row, image in zip(plan, images):
        row.setdefault("instrument", task.instrument)
        try:
            if not image or not image["bytes"]:
                raise ImageError("no image bytes")
            values = measure(decode(image["bytes"]), row["instrument"], row["pixel_size_um"])
        except (ImageError, NoObject, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc} [{SETTINGS}]"
            summary.rejected[type(exc).__name__] += 1
            log.warning("rejected %s (%s, row %s): %s", row["object_id"], row["source_file"], row["source_row"], exc)
            session.reject({
                "source_key": row["source_key"], "source_file": row["source_file"], "object_id": row["object_id"],
                "source_row": None if row["source_row"] is None else str(row["source_row"]),
                "reason": reason, "rejected_at": now,
            })
            continue
        session.add(DATASET, {
            "object_id": row["object_id"], "instrument": row["instrument"], "content_hash": row["content_hash"],
            "features_settings": SETTINGS, "pixel_size_um": row["pixel_size_um"], "run": session.run_id,
            "computed_at": now, **values,
        })
        summary.computed += 1


@dataclass
class FeaturesShard:
    """Shard k's work: measure its row groups, stage the rows and rejections, seal them (picklable: plain data)."""

    root: str
    run_id: str
    slices: list[list[_Task]]

    def __call__(self, k: int) -> None:
        session = ShardSession(Path(self.root), self.run_id, COMMAND, k)
        session.writer(DATASET, load_schema(DATASET))
        counts = FeaturesSummary(run=self.run_id, store=self.root, settings=SETTINGS)
        for task in self.slices[k]:
            _measure(task, session, counts)
        session.seal({"computed": counts.computed, "rejected": counts.rejected})


def _measure_fanned(space: ShardSpace, session: WriteSession, tasks: list[_Task], fan: FanOut,
                    summary: FeaturesSummary) -> None:
    """Measure `tasks` in `fan`'s shards; their files join `session`'s commit."""
    slices = [[tasks[i] for i in s] for s in split([len(t.rows) for t in tasks], fan.count)]
    for seal in space.sealed(fan.count, fan.run(FeaturesShard(str(space.root), summary.run, slices))):
        seal.adopt_into(session.txn)
        summary.computed += seal.result["computed"]
        summary.rejected.update(seal.result["rejected"])


def _measured(store: Store) -> dict[str, tuple[str, str, str]]:
    """object_id → (content_hash, features_settings, store-relative file) of every stored row."""
    index = {}
    for path in store.files(DATASET):
        table = pq.read_table(path, columns=["object_id", "content_hash", "features_settings"])
        rel = str(path.relative_to(store.root))
        for oid, content, settings in zip(*(table[c].to_pylist() for c in table.column_names)):
            index[oid] = (content, settings, rel)
    return index


def _rejected_before(store: Store) -> dict[str, list[datetime]]:
    """object_id → times an earlier run with these settings rejected it (tried again once its object changes)."""
    out: dict[str, list[datetime]] = {}
    for path in store.files("rejections"):
        table = pq.read_table(path, columns=["command", "object_id", "reason", "rejected_at"])
        table = table.filter(pc.equal(table["command"], COMMAND))
        for oid, reason, at in zip(*(table[c].to_pylist() for c in ("object_id", "reason", "rejected_at"))):
            if reason.endswith(f"[{SETTINGS}]"):
                out.setdefault(oid, []).append(at)
    return out
