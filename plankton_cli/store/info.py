"""What the store holds, from the committed list's per-file stats (`store/layout.py`: rows, label counts), the
partition folders and the manifest: a store of ten years answers as fast as one of a night. Only what stats
cannot add up is read: a file without stats (its footer, its label column), and the rejections (deduplicated)."""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq

from plankton_cli.store import Store
from plankton_cli.store.layout import partition_values, read_committed, read_listed, stats_of
from plankton_cli.store.manifest import MANIFEST
from plankton_cli.store.schema import SCHEMA_METADATA_KEY, load_schema


def store_info(store: Store, top: int = 20) -> dict:
    out: dict = {"store": str(store.root), "exists": store.exists, "datasets": {}}
    for name in store.datasets():
        # one read of the dataset's listed files, again over a fresh list if a commit deletes one meanwhile
        out["datasets"][name] = read_listed(store.root / name, partial(_dataset_info, store, name, top=top))
    manifest = store.root / MANIFEST
    if manifest.exists():
        table = pq.read_table(manifest, columns=["reader"])
        out["sources_by_reader"] = dict(Counter(table["reader"].to_pylist()).most_common())
    return out


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
    wanted = [c for c in ("instrument", "label", "source_key", "command", "reason") if c in schema.arrow.names]
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
    if "instrument" in counts:
        entry["by_instrument"] = dict(counts["instrument"].most_common())
    if "label" in counts:
        entry["labels"] = len([k for k in counts["label"] if k != "(none)"])
        entry["by_label"] = dict(counts["label"].most_common(top))
    if "source_key" in counts:
        entry["sources"] = len(counts["source_key"]) if name != "objects" else _stored_sources(store)
    if "reason" in counts:
        entry |= _rejections(store.dataset(name, files).to_table(columns=REJECTION_KEY).to_pylist(), top)
    if {"ingest_run", "ingested_at", "label_status"} <= set(schema.arrow.names):
        entry["ingest_runs"] = _ingest_runs(store, name, stats, top)
    return entry


def _size(path: Path, entry: dict | None) -> int:
    return entry["size"] if entry is not None and entry.get("size") is not None else path.stat().st_size


def _stored_sources(store: Store) -> int:
    """Sources with rows in `objects`: the manifest's entries that stored any (one small column, not the data)."""
    manifest = store.root / MANIFEST
    if not manifest.exists():
        return 0
    return sum(1 for n in pq.read_table(manifest, columns=["n_stored"])["n_stored"].to_pylist() if n)


def _ingest_runs(store: Store, name: str, stats: dict[Path, dict | None], top: int) -> list[dict]:
    """The objects each ingest run stored, by label status, latest `top` runs last: a labelling round's
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
    ordered = sorted(runs.values(), key=lambda r: (r["ingested_at"] is None, r["ingested_at"] or "", r["run"]))
    return [r | {"by_status": dict(r["by_status"].most_common())} for r in ordered[-top:]]


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
