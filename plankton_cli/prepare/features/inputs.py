"""Per-object features as classifier inputs: where they come from, which ones a run uses, how they are scaled.

Names:
- ``object_*``: EcoTaxa's per-object numbers (ZooProcess/UVP morphometrics), kept in the store's ``metadata``;
- ``adc.*``: IFCB ADC columns (scattering, fluorescence, ROI size), also in ``metadata``;
- ``features.<column>``: the store's ``features`` dataset (``plankton features``), which predict measures again
  from the same pixels (``morphometrics.measure`` is deterministic), so a model gets them for sources on disk too.

Left out because they say where or when an object was taken, or are bookkeeping, not what it is (a model that
used them would learn the station, not the organism): EcoTaxa position/time/environment columns and annotation
fields, IFCB trigger numbers, times, ROI positions and byte offsets (``NOT_FEATURES``). IFCB writes -999 for
"not measured": read as missing.

Scaling (``FeatureScaling``), fitted on a fold's labelled training images only: (x − median) / IQR, clipped to
±``CLIP`` so that one absurd value cannot dominate the head's input; an IQR of 0 scales by 1. A missing value
becomes 0 (the median) and its indicator column 1, so the head can tell "typical" from "unknown". The matrix is
``[standardised values | missing indicators]``, 2 × len(names) columns.

Torch-free: the linear/kNN heads and the random-forest baseline use ``feature_matrix`` too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from plankton_cli.prepare.features.morphometrics import FEATURES, NoObject, measure

PREFIX = "features."  # names of the `features` dataset's columns in a feature list
COVERAGE = 0.9
"""`--features auto` uses a feature when at least this share of the labelled objects has it."""
CLIP = 10.0
IFCB_MISSING = -999.0

NOT_FEATURES = (
    "object_id", "object_link", "object_lat*", "object_lon*", "object_date*", "object_time*", "object_depth*",
    "object_annotation_*", "object_temperature*", "object_salinity*", "object_orig_id",
    "object_x", "object_y", "object_bx", "object_by", "object_xstart", "object_ystart",  # place on the scan
    "adc.TRIGGER", "adc.*TIME*", "adc.ROI_X", "adc.ROI_Y", "adc.START_BYTE", "adc.START_POINT", "adc.STATUS",
    "adc.VALVE_STATUS",
)


def _is_feature_key(key: str) -> bool:
    return key.startswith(("object_", "adc.")) and not any(fnmatchcase(key, pattern) for pattern in NOT_FEATURES)


def metadata_features(metadata: Mapping[str, str] | Iterable[Mapping[str, str]]) -> dict[str, float]:
    """The numeric features among an object's metadata (a dict, or the store's list of {key, value} pairs)."""
    pairs = metadata.items() if isinstance(metadata, Mapping) else ((m["key"], m["value"]) for m in metadata)
    values = {}
    for key, text in pairs:
        if not _is_feature_key(key):
            continue
        try:
            value = float(text)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and not (key.startswith("adc.") and value == IFCB_MISSING):
            values[key] = value
    return values


def image_features(image: bytes, instrument: str | None, pixel_size_um: float | None) -> dict[str, float]:
    """``features.*`` measured from an image's bytes, as ``plankton features`` stores them (empty: no object)."""
    from plankton_cli.store.images import ImageError, decode

    try:
        measured = measure(decode(image), instrument, pixel_size_um)
    except (ImageError, NoObject, ValueError):
        return {}  # `plankton features` rejects these: no row, so every feature is missing, here as there
    return {PREFIX + name: value for name, value in measured.items() if value is not None}


def object_features(store_root: Path, dataset: str, object_ids: Iterable[str]) -> dict[str, dict[str, float]]:
    """object_id → {feature name: value} of every numeric feature the store holds for these objects: the
    ``metadata`` of ``dataset`` (objects, or padded, which copies it) and the rows of the ``features`` dataset."""
    from plankton_cli.store import Store

    store = Store(store_root)
    wanted = pa.array(sorted(set(object_ids)), pa.string())
    values: dict[str, dict[str, float]] = {oid: {} for oid in wanted.to_pylist()}
    table = _read(store, dataset, ["object_id", "metadata"], wanted)
    for oid, metadata in zip(table["object_id"].to_pylist(), table["metadata"].to_pylist()):
        values[oid].update(metadata_features(metadata))
    if store.files("features"):
        table = _read(store, "features", ["object_id", *FEATURES], wanted)
        columns = {name: table[name].to_pylist() for name in FEATURES}
        for i, oid in enumerate(table["object_id"].to_pylist()):
            values[oid].update({PREFIX + name: columns[name][i] for name in FEATURES if columns[name][i] is not None})
    return values


def _read(store, name: str, columns: list[str], ids: pa.Array) -> pa.Table:
    return store.dataset(name).to_table(columns=columns, filter=ds.field("object_id").isin(ids))


def select_features(spec: str, values: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The feature names ``--features SPEC`` picks, given every object's values (the labelled pool).

    ``none``: no features. ``auto``: every feature at least ``COVERAGE`` of the objects have. Otherwise a
    comma-separated list of names or patterns (``object_*``, ``features.*``); a name or pattern that matches
    nothing any object has is an error naming it.
    """
    spec = spec.strip()
    if spec == "none" or not values:
        return []
    counts: dict[str, int] = {}
    for features in values.values():
        for name in features:
            counts[name] = counts.get(name, 0) + 1
    if spec == "auto":
        return sorted(name for name, n in counts.items() if n >= COVERAGE * len(values))
    chosen: list[str] = []
    for pattern in (part.strip() for part in spec.split(",") if part.strip()):
        matched = sorted(name for name in counts if fnmatchcase(name, pattern))
        if not matched:
            raise ValueError(f"--features {pattern}: no labelled object has such a feature (have: "
                             f"{', '.join(sorted(counts)[:12]) or 'none'}{' …' if len(counts) > 12 else ''})")
        chosen += [name for name in matched if name not in chosen]
    return chosen


@dataclass(frozen=True)
class FeatureScaling:
    """Robust standardisation of named features; ``transform`` gives the head's feature input."""

    names: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    clip: float = CLIP

    @classmethod
    def fit(cls, names: Sequence[str], rows: Sequence[Mapping[str, float]]) -> FeatureScaling:
        """Median and IQR of each feature over the rows that have it (a feature no row has: 0 and 1)."""
        center, scale = [], []
        for name in names:
            column = np.array([row[name] for row in rows if name in row], np.float64)
            if len(column):
                q1, median, q3 = np.percentile(column, [25, 50, 75])
                center.append(float(median))
                scale.append(float(q3 - q1) if q3 > q1 else 1.0)
            else:
                center.append(0.0)
                scale.append(1.0)
        return cls(tuple(names), tuple(center), tuple(scale))

    @classmethod
    def from_info(cls, info) -> FeatureScaling | None:
        """The scaling a ``ModelInfo`` records; None for a model without features."""
        if not info.features:
            return None
        return cls(tuple(info.features), tuple(info.feature_center), tuple(info.feature_scale), info.feature_clip)

    def info_fields(self) -> dict[str, object]:
        """The ``ModelInfo`` fields that record this scaling."""
        return {"features": list(self.names), "feature_center": list(self.center),
                "feature_scale": list(self.scale), "feature_clip": self.clip}

    @property
    def width(self) -> int:
        return 2 * len(self.names)

    def transform(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """(len(rows), 2 × len(names)) float32: standardised values (0 where missing), then missing indicators."""
        raw = np.array([[row.get(name, np.nan) for name in self.names] for row in rows], np.float64)
        raw = raw.reshape(len(rows), len(self.names))
        missing = np.isnan(raw)
        values = np.clip((raw - np.array(self.center)) / np.array(self.scale), -self.clip, self.clip)
        values[missing] = 0.0
        return np.concatenate([values, missing], axis=1).astype(np.float32)

    def missing(self, row: Mapping[str, float]) -> list[str]:
        return [name for name in self.names if name not in row]


def feature_matrix(store_root: Path, object_ids: Sequence[str], scaling: FeatureScaling,
                   dataset: str = "objects") -> np.ndarray:
    """The standardised feature input of these objects, in their order: what a model with ``scaling`` gets."""
    values = object_features(store_root, dataset, object_ids)
    return scaling.transform([values.get(oid, {}) for oid in object_ids])
