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
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow.compute as pc
import pyarrow.parquet as pq

from plankton_cli.prepare.features.morphometrics import SETTINGS, NoObject, measure
from plankton_cli.store import Store
from plankton_cli.store.images import ImageError, decode
from plankton_cli.store.layout import partition_values
from plankton_cli.store.schema import load_schema
from plankton_cli.store.session import WriteSession
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
                     on_progress: Callable[[int], None] | None = None) -> FeaturesSummary:
    """Measure every object of `objects` not yet measured with these settings into the `features` dataset."""
    run_id = new_run_id()
    summary = FeaturesSummary(run=run_id, store=str(store.root), settings=SETTINGS)
    with store.locked(timeout=lock_timeout):
        done = _measured(store)
        rejected_before = _rejected_before(store)
        schema = load_schema(DATASET)
        session = WriteSession(store.root, run_id, COMMAND)
        session.writer(DATASET, schema)
        to_drop: set[str] = set()  # ids whose stored row goes in the commit
        seen: set[str] = set()
        try:
            for path in store.files("objects"):
                partition = partition_values(path, store.root / "objects")
                with pq.ParquetFile(path) as file:
                    for group in range(file.num_row_groups):
                        columns = _PLAN_COLUMNS + ([] if "instrument" in partition else ["instrument"])
                        plan = file.read_row_group(group, columns=columns).to_pylist()
                        todo = []
                        for offset, row in enumerate(plan):
                            row.setdefault("instrument", partition.get("instrument"))
                            seen.add(row["object_id"])
                            summary.read += 1
                            stored = done.get(row["object_id"])
                            if stored is not None and stored[:2] == (row["content_hash"], SETTINGS):
                                summary.skipped += 1
                            elif any(at >= row["ingested_at"] for at in rejected_before.get(row["object_id"], ())):
                                summary.skipped_rejected += 1
                            else:
                                todo.append(offset)
                                if stored is not None:
                                    to_drop.add(row["object_id"])
                        if not todo:
                            continue
                        images = file.read_row_group(group, columns=["image"]).take(todo)["image"].to_pylist()
                        now = datetime.now(UTC)
                        for offset, image in zip(todo, images):
                            row = plan[offset]
                            try:
                                if not image or not image["bytes"]:
                                    raise ImageError("no image bytes")
                                values = measure(decode(image["bytes"]), row["instrument"], row["pixel_size_um"])
                            except (ImageError, NoObject, ValueError) as exc:
                                reason = f"{type(exc).__name__}: {exc} [{SETTINGS}]"
                                summary.rejected[type(exc).__name__] += 1
                                log.warning("rejected %s (%s, row %s): %s", row["object_id"], row["source_file"],
                                            row["source_row"], exc)
                                session.reject({
                                    "source_key": row["source_key"], "source_file": row["source_file"],
                                    "object_id": row["object_id"],
                                    "source_row": None if row["source_row"] is None else str(row["source_row"]),
                                    "reason": reason, "rejected_at": now,
                                })
                                continue
                            session.add(DATASET, {
                                "object_id": row["object_id"], "instrument": row["instrument"],
                                "content_hash": row["content_hash"], "features_settings": SETTINGS,
                                "pixel_size_um": row["pixel_size_um"], "run": run_id, "computed_at": now,
                                **values,
                            })
                            summary.computed += 1
                        if on_progress:
                            on_progress(len(todo))
            to_drop |= set(done) - seen  # objects that left `objects`
            summary.removed, _ = session.remove_ids({done[oid][2] for oid in to_drop}, to_drop, schema)
            # One commit for the whole run (unlike pad's commit every ~256 MB): feature rows are small, and a
            # run that fails part-way then leaves the store exactly as before.
            session.commit()
        except BaseException:
            session.abort()
            raise
    return summary


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
