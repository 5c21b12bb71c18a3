"""What the store holds. Answered from the running totals on the first line of the committed list
(`layout.fold_totals`), kept exact by every commit: a store of ten years answers as fast as one of a night,
without reading the list of its files. What the totals cannot add up is read as before: a dataset's files' stats
from the committed list (`store/layout.py`: rows, label counts), a file without stats (its footer, its label
column), the sources of a dataset other than `objects` (distinct values of a column), and the rejections
(deduplicated)."""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq

from plankton_cli.store import Store
from plankton_cli.store.layout import (MANIFEST, MANIFEST_FILES, partition_values, read_committed, read_listed,
                                       read_totals, stats_of)
from plankton_cli.store.schema import SCHEMA_METADATA_KEY, load_schema

COLUMNS = ("instrument", "label", "source_key", "command", "reason")
"""The columns whose values `info` counts, of those a dataset has."""


def store_info(store: Store, top: int = 20) -> dict:
    out: dict = {"store": str(store.root), "exists": store.exists, "datasets": {}}
    totals = read_totals(store.root)
    names = store.datasets() if totals is None else sorted(name for name in totals if name != MANIFEST)
    for name in names:
        summed = None if totals is None else _from_totals(store, name, totals, top)
        # else one read of the dataset's listed files, again over a fresh list if a commit deletes one meanwhile
        out["datasets"][name] = summed or read_listed(store.root / name, partial(_dataset_info, store, name, top=top))
    readers = (totals or {}).get(MANIFEST, {})
    if readers.get("counts", {}).get("reader") and not readers["uncounted"].get("reader"):
        out["sources_by_reader"] = dict(Counter(readers["counts"]["reader"]).most_common())
    elif parts := [store.root / name for name in MANIFEST_FILES if (store.root / name).exists()]:
        counted = Counter(r for part in parts for r in pq.read_table(part, columns=["reader"])["reader"].to_pylist())
        out["sources_by_reader"] = dict(counted.most_common())
    return out


def _from_totals(store: Store, name: str, totals: dict[str, dict], top: int) -> dict | None:
    """A dataset's info from its running totals, or None when they cannot tell it all (files without stats, a
    column with too many values to count, several ingest runs in a file, sources or rejections to deduplicate)."""
    t = totals[name]
    if t["unsummed"]:
        return None
    entry: dict = {"rows": t["rows"], "files": t["files"], "bytes": t["bytes"],
                   "schema_version": max(t["schemas"], key=lambda v: int(v.rsplit(".v", 1)[1]), default=None)}
    try:
        schema = load_schema(name)
    except KeyError:
        return entry
    names = set(schema.arrow.names)
    wanted = [c for c in COLUMNS if c in names]
    if "reason" in wanted or ("source_key" in wanted and name != "objects") or t["runs_uncounted"] or any(
            t["uncounted"].get(c) for c in wanted if c not in schema.partitioning and c != "source_key"):
        return None
    counts = {c: Counter({value or "(none)": n for value, n in t["counts"].get(c, {}).items()})
              for c in wanted if c != "source_key"}
    latest = _latest([{"run": run, "ingested_at": min(filter(None, r["starts"]), default=None)}
                      for run, r in t["runs"].items()], top)
    runs = [run | {"objects": t["runs"][run["run"]]["objects"], "by_status": dict(Counter(
        {s or "none": n for s, n in t["runs"][run["run"]]["by_status"].items()}).most_common())} for run in latest]
    return _described(store, name, names, entry, counts, top, runs, totals)


def _dataset_info(store: Store, name: str, files: list[Path], *, top: int) -> dict:
    entries = read_committed(store.root) or {}
    stats = {f: stats_of(store.root, str(f.relative_to(store.root)), entries.get(str(f.relative_to(store.root))))
             for f in files}
    entry: dict = {
        "rows": sum(pq.ParquetFile(f).metadata.num_rows if s is None else s["rows"] for f, s in stats.items()),
        "files": len(files),
        "bytes": sum(_size(f, entries.get(str(f.relative_to(store.root)))) for f in files),
        "schema_version": _schema_version(files, stats),
    }
    try:
        schema = load_schema(name)
    except KeyError:
        return entry
    wanted = [c for c in COLUMNS if c in schema.arrow.names]
    counts: dict[str, Counter] = {c: Counter() for c in wanted}
    partition = schema.partitioning
    for f, s in stats.items():
        values = partition_values(f, store.root / name)
        for c in wanted:
            if c in partition and s is not None:
                counts[c][values.get(c) or "(none)"] += s["rows"]
            elif c in (s or {}).get("counts", {}):
                counts[c].update({k or "(none)": n for k, n in s["counts"][c].items()})
            elif c != "source_key" or name != "objects":  # the objects' sources: the manifest's (below)
                column = store.dataset(name, [f]).to_table(columns=[c])[c].to_pylist()
                counts[c].update(v if v is not None else "(none)" for v in column)
    runs = _ingest_runs(store, name, stats) if {"ingest_run", "ingested_at", "label_status"} <= set(
        schema.arrow.names) else []
    entry = _described(store, name, set(schema.arrow.names), entry, counts, top, runs, None)
    if "reason" in counts:
        entry |= _rejections(store.dataset(name, files).to_table(columns=REJECTION_KEY).to_pylist(), top)
    return entry


def _described(store: Store, name: str, names: set[str], entry: dict, counts: dict[str, Counter], top: int,
               runs: list[dict], totals: dict[str, dict] | None) -> dict:
    """`entry` with what `counts` (value counts per column) and `runs` (objects per ingest run) say, for a dataset
    with columns `names`."""
    if "instrument" in counts:
        entry["by_instrument"] = dict(counts["instrument"].most_common())
    if "label" in counts:
        entry["labels"] = len([k for k in counts["label"] if k != "(none)"])
        entry["by_label"] = dict(counts["label"].most_common(top))
    if "source_key" in names:
        entry["sources"] = len(counts["source_key"]) if name != "objects" else _stored_sources(store, totals)
    if {"ingest_run", "ingested_at", "label_status"} <= names:
        entry["ingest_runs"] = _latest(runs, top)
    return entry


def _latest(runs: list[dict], top: int) -> list[dict]:
    """The last `top` ingest runs by time, oldest first (runs without a time last)."""
    return sorted(runs, key=lambda r: (r["ingested_at"] is None, r["ingested_at"] or "", r["run"]))[-top:]


def _size(path: Path, entry: dict | None) -> int:
    return entry["size"] if entry is not None and entry.get("size") is not None else path.stat().st_size


def _stored_sources(store: Store, totals: dict[str, dict] | None) -> int:
    """Sources with rows in `objects`: the manifest's entries that stored any (from the totals, else one small
    column of the manifest)."""
    if (stored := ((totals or {}).get(MANIFEST) or {}).get("stored_sources")) is not None:
        return stored
    return sum((stats_of(store.root, name, None) or {}).get("stored_sources", 0)  # the parts' footers and columns
               for name in MANIFEST_FILES if (store.root / name).exists())


def _ingest_runs(store: Store, name: str, stats: dict[Path, dict | None]) -> list[dict]:
    """The objects each ingest run stored, by label status: a labelling round's
    re-ingested export shows how many validated objects it brought (a changed source is stored again whole by
    the run that reads it, so its other objects count there too). A file of one run (what ingest writes) is
    counted from its stats; a file holding several runs' rows (rewritten when a source changed) is read."""
    counted: list[tuple[str, str | None, str | None, int]] = []  # (run, ingested at, label status, objects)
    columns = ["ingest_run", "ingested_at", "label_status"]
    for path, st in stats.items():
        counts = (st or {}).get("counts", {})
        if st is not None and len(counts.get("ingest_run", ())) == 1 and "label_status" in counts:
            run = next(iter(counts["ingest_run"]))
            at = st["min"].get("ingested_at")
            counted += [(run, at, status or None, n) for status, n in counts["label_status"].items()]
        elif st is None or st.get("rows"):
            table = store.dataset(name, [path]).to_table(columns=columns)
            counted += [(run, at.isoformat() if at else None, status, 1)
                        for run, at, status in zip(*(table[c].to_pylist() for c in columns))]
    runs: dict[str, dict] = {}
    for run, at, status, n in counted:
        entry = runs.setdefault(run, {"run": run, "ingested_at": at, "objects": 0, "by_status": Counter()})
        entry["objects"] += n
        entry["by_status"][status or "none"] += n
        entry["ingested_at"] = min(entry["ingested_at"], at) if entry["ingested_at"] and at else \
            entry["ingested_at"] or at
    return [r | {"by_status": dict(r["by_status"].most_common())} for r in runs.values()]


REJECTION_KEY = ["source_key", "source_file", "source_row", "object_id", "reason"]
_DETAILS = ((re.compile(r"'[^']*'|\"[^\"]*\""), "'…'"), (re.compile(r"(?:[A-Za-z]:)?/[^\s:,;]+"), "PATH"),
            (re.compile(r"\d+(?:\.\d+)?"), "N"))


def reason_kind(reason: str) -> str:
    """A rejection reason without its particulars (quoted values, paths, numbers), to group alike reasons."""
    for pattern, replacement in _DETAILS:
        reason = pattern.sub(replacement, reason)
    return reason


def _rejections(rows: list[dict], top: int) -> dict:
    """Distinct rejected objects (a row rejected again when its source was retried counts once), grouped by the
    kind of reason, most frequent first."""
    distinct = {tuple(row[k] for k in REJECTION_KEY) for row in rows}
    kinds = Counter(reason_kind(key[-1] or "") for key in distinct)
    return {"rejected": len(distinct), "by_reason": dict(kinds.most_common(top))}


def _schema_version(files: list[Path], stats: dict[Path, dict | None]) -> str | None:
    """The newest schema version among the dataset's files: from their stats, else (files from before the stats
    recorded it) from the newest-named file's footer."""
    schemas = [s["schema"] for s in stats.values() if s is not None and "schema" in s]
    if not schemas and files:
        raw = (pq.read_schema(files[-1]).metadata or {}).get(SCHEMA_METADATA_KEY)
        schemas = [] if raw is None else [json.loads(raw)]
    if not schemas:
        return None
    newest = max(schemas, key=lambda schema: schema["version"])
    return f"{newest['dataset']}.v{newest['version']}"
