"""Dataset schemas: `schemas/<dataset>.v<N>.json` loaded at run time into pyarrow schemas.

The JSON files are the single source of truth for the store's columns; `schemas/README.md` explains them for people.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import pyarrow as pa

SCHEMA_METADATA_KEY = b"plankton"
"""Schema-level Parquet metadata key holding {"dataset": ..., "version": ...} (visible to any Parquet reader)."""

# The Hugging Face `datasets` Image feature, so `datasets.load_dataset("parquet", ...)` decodes the column.
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
HF_FEATURES_KEY = b"huggingface"

_SIMPLE_TYPES = {
    "string": pa.string(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
    # Key/value pairs as a list of structs (the physical layout of a Parquet MAP) rather than a map type, because
    # Hugging Face `datasets` cannot load map columns; duckdb: `map_from_entries(metadata)`.
    "list<struct<key,value>>": pa.list_(pa.struct([pa.field("key", pa.string()), pa.field("value", pa.string())])),
    "list<string>": pa.list_(pa.string()),
    "list<float32>": pa.list_(pa.float32()),
    "image": IMAGE_TYPE,
}


def arrow_type(name: str) -> pa.DataType:
    # Dictionary columns are written with dictionary encoding but keep a plain string type in memory, so files
    # written by different runs always share one schema.
    if name.startswith("dictionary<"):
        return arrow_type(name[len("dictionary<") : -1])
    return _SIMPLE_TYPES[name]


@dataclass(frozen=True)
class DatasetSchema:
    dataset: str
    version: int
    description: str
    partitioning: tuple[str, ...]
    sort: tuple[str, ...]
    fields: tuple[dict, ...]

    @property
    def arrow(self) -> pa.Schema:
        """The full schema, partition columns included (what a reader of the whole dataset sees)."""
        meta = {SCHEMA_METADATA_KEY: json.dumps({"dataset": self.dataset, "version": self.version}).encode()}
        if any(f["type"] == "image" for f in self.fields):
            meta[HF_FEATURES_KEY] = json.dumps(self._hf_features()).encode()
        return pa.schema(
            [
                pa.field(f["name"], arrow_type(f["type"]), nullable=f["nullable"],
                         metadata={"description": f["description"]})
                for f in self.fields
            ],
            metadata=meta,
        )

    @property
    def file_schema(self) -> pa.Schema:
        """The schema of one Parquet file: hive partition columns live in the directory names, not the file."""
        full = self.arrow
        keep = [f for f in full if f.name not in self.partitioning]
        return pa.schema(keep, metadata=full.metadata)

    @property
    def dictionary_columns(self) -> list[str]:
        return [f["name"] for f in self.fields if f["type"].startswith("dictionary<")]

    def _hf_features(self) -> dict:
        features = {}
        for f in self.fields:
            if f["name"] in self.partitioning:
                continue
            if f["type"] == "image":
                features[f["name"]] = {"_type": "Image"}
        return {"info": {"features": features}}


@cache
def load_schema(dataset: str, version: int | None = None) -> DatasetSchema:
    """The schema of `dataset` (the newest version unless `version` is given)."""
    files = resources.files("plankton_cli.schemas")
    candidates = sorted(
        (int(p.name.split(".v")[1].split(".")[0]), p)
        for p in files.iterdir()
        if p.name.startswith(f"{dataset}.v") and p.name.endswith(".json")
    )
    if version is not None:
        candidates = [c for c in candidates if c[0] == version]
    if not candidates:
        raise KeyError(f"no schema for dataset {dataset!r}" + (f" version {version}" if version else ""))
    raw = json.loads(candidates[-1][1].read_text())
    return DatasetSchema(
        dataset=raw["dataset"],
        version=raw["version"],
        description=raw["description"],
        partitioning=tuple(raw.get("partitioning", ())),
        sort=tuple(raw.get("sort", ())),
        fields=tuple(raw["fields"]),
    )
