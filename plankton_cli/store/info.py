"""What the store holds, computed from Parquet footers and a few small columns (never the images)."""

from __future__ import annotations

import re
from collections import Counter
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq

from plankton_cli.store import Store
from plankton_cli.store.layout import read_listed
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
    entry: dict = {
        "rows": sum(pq.ParquetFile(f).metadata.num_rows for f in files),
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "schema_version": _schema_version(files[0]) if files else None,
    }
    try:
        schema = load_schema(name)
    except KeyError:
        return entry
    wanted = [c for c in ("instrument", "label", "source_key", "command", "reason") if c in schema.arrow.names]
    counts: dict[str, Counter] = {c: Counter() for c in wanted}
    table = store.dataset(name, files).to_table(columns=wanted)
    for c in wanted:
        counts[c].update(v if v is not None else "(none)" for v in table[c].to_pylist())
    if "instrument" in counts:
        entry["by_instrument"] = dict(counts["instrument"].most_common())
    if "label" in counts:
        entry["labels"] = len([k for k in counts["label"] if k != "(none)"])
        entry["by_label"] = dict(counts["label"].most_common(top))
    if "source_key" in counts:
        entry["sources"] = len(counts["source_key"])
    if "reason" in counts:
        entry |= _rejections(store.dataset(name, files).to_table(columns=REJECTION_KEY).to_pylist(), top)
    if {"ingest_run", "ingested_at", "label_status"} <= set(schema.arrow.names):
        entry["ingest_runs"] = _ingest_runs(store.dataset(name, files).to_table(
            columns=["ingest_run", "ingested_at", "label_status"]), top)
    return entry


def _ingest_runs(table, top: int) -> list[dict]:
    """The objects each ingest run stored, by label status, latest `top` runs last: a labelling round's
    re-ingested export shows how many validated objects it brought (a changed source is stored again whole by
    the run that reads it, so its other objects count there too)."""
    runs: dict[str, dict] = {}
    for run, at, status in zip(*(table[c].to_pylist() for c in ("ingest_run", "ingested_at", "label_status"))):
        entry = runs.setdefault(run, {"run": run, "ingested_at": at, "objects": 0, "by_status": Counter()})
        entry["objects"] += 1
        entry["by_status"][status or "none"] += 1
        entry["ingested_at"] = min(entry["ingested_at"], at) if entry["ingested_at"] and at else \
            entry["ingested_at"] or at
    ordered = sorted(runs.values(), key=lambda r: (r["ingested_at"] is None, r["ingested_at"] or 0, r["run"]))
    return [r | {"by_status": dict(r["by_status"].most_common()),
                 "ingested_at": r["ingested_at"].isoformat() if r["ingested_at"] else None} for r in ordered[-top:]]


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


def _schema_version(path) -> str | None:
    import json

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(SCHEMA_METADATA_KEY)
    if raw is None:
        return None
    info = json.loads(raw)
    return f"{info['dataset']}.v{info['version']}"
