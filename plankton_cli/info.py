"""What the store holds, computed from Parquet footers and a few small columns (never the images)."""

from __future__ import annotations

import re
from collections import Counter

import pyarrow.parquet as pq

from plankton_cli.store import Store
from plankton_cli.store.manifest import MANIFEST
from plankton_cli.store.schema import SCHEMA_METADATA_KEY, load_schema


def store_info(store: Store, top: int = 20) -> dict:
    out: dict = {"store": str(store.root), "exists": store.exists, "datasets": {}}
    for name in store.datasets():
        files = store.files(name)
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        entry: dict = {
            "rows": rows,
            "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
            "schema_version": _schema_version(files[0]),
        }
        try:
            schema = load_schema(name)
        except KeyError:
            schema = None
        if schema is not None:
            wanted = [c for c in ("instrument", "label", "source_key", "command", "reason") if c in schema.arrow.names]
            counts: dict[str, Counter] = {c: Counter() for c in wanted}
            table = store.dataset(name).to_table(columns=wanted)
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
                entry |= _rejections(store.dataset(name).to_table(columns=REJECTION_KEY).to_pylist(), top)
        out["datasets"][name] = entry
    manifest = store.root / MANIFEST
    if manifest.exists():
        table = pq.read_table(manifest, columns=["reader"])
        out["sources_by_reader"] = dict(Counter(table["reader"].to_pylist()).most_common())
    return out


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
