"""What `plankton predict` hands to writer plugins (`plankton.writers` entry points).

A writer is an object with `name`, `description` and `open(out_dir, run) -> WriterSession`; the session gets
`write(batch)` for each batch of predictions and `close() -> dict` at the end (a JSON-able summary: files written,
counts, problems such as unmapped labels). Writers write atomically (temporary name + rename) and must be
re-runnable: writing the same predictions twice yields the same files, never duplicates. An optional `abort()`
drops what a session spooled when predict fails before `close()`.

Re-runnable matters: predict closes the file writers before the store commits (`plankton_cli.infer.predict`), and a
run that dies or fails in between is finished by the next run, which hands the same predictions to the writers
again. Writers that spool put their temporary files in their spool (`plankton_cli.core.spool`), which the next run
removes when a run is killed, rather than beside their outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

UNCLASSIFIED = "unclassified"


@dataclass(slots=True)
class Prediction:
    """One object's prediction, with what writers need to place it (sample, ROI number, image, position)."""

    object_id: str
    probabilities: np.ndarray  # (n_classes,) float32, softmax over PredictionRun.classes
    label: str  # after per-class thresholds; UNCLASSIFIED when below its class threshold
    label_auto: str  # argmax, regardless of thresholds
    sample_id: str | None = None  # IFCB bin id, EcoTaxa sample
    source_row: int | None = None  # IFCB target (ROI) number
    instrument: str | None = None
    acquired_at: datetime | None = None
    lat: float | None = None
    lon: float | None = None
    depth: float | None = None
    image: bytes | None = None  # the stored (encoded) image, for writers that ship images (EcoTaxa)
    image_name: str | None = None
    embedding: np.ndarray | None = None  # (dim,) float32 encoder features, when asked for
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class PredictionRun:
    """Facts shared by every prediction of one run."""

    model_id: str  # e.g. the fine-tune run name + fold
    model_hash: str  # BLAKE2b of the model weights file
    classes: list[str]
    thresholds: np.ndarray | None  # (n_classes,) or None
    classifier_name: str  # what IFCB Dashboard shows, e.g. "plankton-cli vit_base_patch16_224 <model_id>"
    top_k: int = 3
    package_version: str = ""
    options: dict[str, str] = field(default_factory=dict)  # writer options (`--writer-option key=value`)


@runtime_checkable
class WriterSession(Protocol):
    def write(self, batch: Sequence[Prediction]) -> None: ...

    def close(self) -> dict: ...


@runtime_checkable
class Writer(Protocol):
    name: str
    description: str

    def open(self, out_dir: Path, run: PredictionRun) -> WriterSession: ...
