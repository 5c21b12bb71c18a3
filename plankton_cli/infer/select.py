"""`plankton select` as a library function: the objects an expert should validate next, and the files to do it.

Candidates are the store's objects nobody validated (label status `none` or `predicted`), optionally of one
instrument or acquired since a date. The strategies (`plankton_cli.infer.select_strategies`) read the model's class
probabilities and embeddings of them from the store's `predictions` dataset (`plankton predict --to store --to
embeddings` keeps both), and the embeddings of the validated objects as what is already labelled. What the store
lacks (objects this model never predicted, or predicted without embeddings when the strategy needs them) is
predicted first with the model, into the store (`plankton_cli.infer.predict`, `only` those objects), so the next
selection with the same model reads it.

Outputs in OUT, each written atomically:
- `selection.parquet` and `selection.csv`: rank, object id, the predicted label, the strategy's score and why it
  was picked, and where the object is (instrument, sample, EcoTaxa's object id);
- `--to ecotaxa`: the EcoTaxa writer plugin, as predict runs it: objects read from EcoTaxa into update zips
  (`ecotaxa-update/`), the others into import zips with their images (`ecotaxa/`), status `predicted`, the same
  files and checks as `plankton predict --to ecotaxa` for these objects;
- `--to folders`: `folders/<predicted label>/<rank>_<object>.<ext>`, the images to sort by hand, most useful
  first.

Validated labels come back by ingesting the EcoTaxa export after validation (`plankton ingest`): its rows carry
status `validated`, which `plankton finetune` uses by default.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from plankton_cli import __version__
from plankton_cli.core import plugins
from plankton_cli.infer.select_strategies import DIVERSITY, NEEDS_EMBEDDINGS, STRATEGIES, Picks, choose
from plankton_cli.core.atomic import atomic_path
from plankton_cli.core.errors import UsageError
from plankton_cli.train.model_info import ModelInfo
from plankton_cli.store import Store
from plankton_cli.store.layout import checksum as file_hash
from plankton_cli.core.writers import Prediction, PredictionRun

log = logging.getLogger("plankton.select")

CANDIDATE_STATUSES = ("none", "predicted")  # not validated by anyone: what an expert may look at next
LABELLED_STATUS = "validated"
OUTPUTS = ("ecotaxa", "folders")  # besides the selection list, always written
ECOTAXA_ID = "ecotaxa_object_id"  # the EcoTaxa reader's metadata key of EcoTaxa's own object id


@dataclass
class SelectSummary:
    model_id: str
    model_hash: str
    strategy: str
    mix: str | None
    budget: int
    candidates: int = 0  # objects nobody validated (after --instrument/--since)
    labelled: int = 0  # validated objects whose embeddings count as labelled (diversity strategies)
    predicted_now: int = 0  # candidates the store had no (usable) prediction of: predicted with the model first
    selected: int = 0
    by_label: dict[str, int] = field(default_factory=dict)  # selected, per predicted label
    files: list[str] = field(default_factory=list)
    writers: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Pool:
    """Stored predictions of one model for some objects, rows in `ids` order."""

    ids: list[str]
    labels: list[str]  # the stored label (after the model's thresholds)
    probabilities: np.ndarray  # (n, n_classes) float32
    embeddings: np.ndarray | None  # (n, dim) float32, None when some row has none


def _matrix(column: pa.ChunkedArray) -> np.ndarray | None:
    """A list<float32> column of equal-length rows as an (n, m) array; None if a row is null."""
    if column.null_count or not len(column):
        return None
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(column), -1)


def candidate_ids(store: Store, statuses: Sequence[str], *, instrument: str | None = None,
                  since: datetime | None = None) -> list[str]:
    """The ids of the store's objects with one of `statuses` (and of `instrument`, acquired on or after `since`)."""
    flt = ds.field("label_status").isin(list(statuses))
    if instrument:
        flt &= ds.field("instrument") == instrument
    if since is not None:
        flt &= ds.field("acquired_at") >= pc.scalar(since)
    if not store.files("objects"):
        return []
    return sorted(set(store.dataset("objects").to_table(columns=["object_id"], filter=flt)["object_id"].to_pylist()))


def stored_predictions(store: Store, model_hash: str, ids: Sequence[str], *, embeddings: bool) -> Pool:
    """This model's stored predictions of `ids` (those it has), with embeddings when asked for and present."""
    if not ids or not store.files("predictions"):
        return Pool([], [], np.zeros((0, 0), np.float32), None)
    columns = ["object_id", "label", "probabilities"] + (["embedding"] if embeddings else [])
    flt = (ds.field("model_hash") == model_hash) & ds.field("object_id").isin(pa.array(list(ids), pa.string()))
    table = store.dataset("predictions").to_table(columns=columns, filter=flt)
    if embeddings:  # a row without an embedding is not usable by a diversity strategy: predicted again
        table = table.filter(pc.is_valid(table["embedding"]))
    table = table.filter(pc.is_valid(table["probabilities"]))
    return Pool(table["object_id"].to_pylist(), [str(v) for v in table["label"].to_pylist()],
                _matrix(table["probabilities"]) if table.num_rows else np.zeros((0, 0), np.float32),
                _matrix(table["embedding"]) if embeddings and table.num_rows else None)


def select(
    model_path: Path,
    store: Store,
    *,
    budget: int,
    strategy: str = "margin",
    mix: str | None = None,
    per_class_min: int = 0,
    out_dir: Path = Path("selection"),
    to: Sequence[str] = (),
    instrument: str | None = None,
    since: datetime | None = None,
    seed: int = 0,
    writer_options: dict[str, str] | None = None,
    predict_options: dict | None = None,
) -> SelectSummary:
    """Pick `budget` objects of `store` to validate next by `strategy` with the model at `model_path`, and write
    the selection list and the `to` outputs into `out_dir`. `predict_options` go to `predict` (device, threads,
    lock timeout...) when the store lacks predictions."""
    from plankton_cli.infer.predict import model_name, model_weights

    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if mix is not None and strategy not in DIVERSITY:
        raise UsageError(f"--mix {mix} pre-selects for a diversity strategy ({', '.join(DIVERSITY)}), "
                         f"not for {strategy}")
    if unknown := [name for name in to if name not in OUTPUTS]:
        raise UsageError(f"unknown output {', '.join(unknown)}; expected {', '.join(OUTPUTS)}")
    weights = model_weights(model_path)
    info = ModelInfo.load(weights)
    model_hash = file_hash(weights)
    summary = SelectSummary(model_id=model_name(weights, info), model_hash=model_hash, strategy=strategy, mix=mix,
                            budget=budget)
    needs_embeddings = strategy in NEEDS_EMBEDDINGS
    candidates = candidate_ids(store, CANDIDATE_STATUSES, instrument=instrument, since=since)
    labelled = candidate_ids(store, [LABELLED_STATUS], instrument=instrument) if needs_embeddings else []
    summary.candidates = len(candidates)
    classes = list(info.classes)
    pool = stored_predictions(store, model_hash, candidates, embeddings=needs_embeddings)
    known = stored_predictions(store, model_hash, labelled, embeddings=True) if labelled else None
    missing = (set(candidates) - set(pool.ids)) | (set(labelled) - set(known.ids) if known else set())
    if missing:  # predicted once with the model, into the store: the next selection reads them
        from plankton_cli.infer.predict import predict

        log.info("predicting %d objects this model has no stored prediction%s of", len(missing),
                 " with embeddings" if needs_embeddings else "")
        done = predict(model_path, store=store, to=["store"], embeddings=needs_embeddings, force=True,
                       only=missing, **(predict_options or {}))
        summary.predicted_now = done.predicted
        pool = stored_predictions(store, model_hash, candidates, embeddings=needs_embeddings)
        known = stored_predictions(store, model_hash, labelled, embeddings=True) if labelled else None
    if needs_embeddings and len(pool.ids) < len(candidates):  # predicted just now, and still without embeddings
        raise UsageError(f"{weights}: {len(candidates) - len(pool.ids)} candidates have no embedding from this model "
                         f"after predicting them, which --strategy {strategy} needs: use margin, entropy or random")
    summary.labelled = len(known.ids) if known else 0
    if per_class_min and pool.ids:
        needed = sum(min(per_class_min, n) for n in Counter(pool.probabilities.argmax(1).tolist()).values())
        if needed > budget:
            raise UsageError(f"--per-class-min {per_class_min} needs {needed} objects over the predicted classes, "
                             f"more than --budget {budget}")
    picks = choose(strategy, budget, predicted=pool.probabilities.argmax(1) if len(pool.ids) else None,
                   per_class_min=per_class_min, probabilities=pool.probabilities, embeddings=pool.embeddings,
                   labelled=known.embeddings if known else None, mix=mix, seed=seed) if pool.ids else Picks.empty()
    summary.selected = len(picks)
    table = _selection_table(store, pool, picks, strategy, classes)
    summary.by_label = dict(Counter(table["predicted_label"].to_pylist()).most_common())
    out_dir = Path(out_dir)
    summary.files = _write_list(table, out_dir)
    if to and len(picks):
        run = PredictionRun(model_id=summary.model_id, model_hash=model_hash, classes=classes,
                            thresholds=_thresholds(info, classes), top_k=3, package_version=__version__,
                            classifier_name=f"plankton-cli {info.architecture} {summary.model_id}",
                            options={**(writer_options or {}), "store": str(store.root)})
        predictions = _predictions(store, pool, picks, classes)
        if "ecotaxa" in to:
            session = plugins.load("writer", "ecotaxa").open(out_dir, run)
            session.write(predictions)
            summary.writers["ecotaxa"] = session.close()
        if "folders" in to:
            summary.writers["folders"] = _write_folders(predictions, out_dir / "folders")
    return summary


def _thresholds(info: ModelInfo, classes: list[str]) -> np.ndarray | None:
    if not info.thresholds:
        return None
    return np.array([float(info.thresholds.get(c, np.nan)) for c in classes], dtype=np.float64)


def _object_rows(store: Store, ids: Sequence[str], columns: list[str]) -> dict[str, dict]:
    flt = ds.field("object_id").isin(pa.array(list(ids), pa.string()))
    rows = store.dataset("objects").to_table(columns=columns, filter=flt).to_pylist()
    return {row["object_id"]: row for row in rows}


def _selection_table(store: Store, pool: Pool, picks: Picks, strategy: str, classes: list[str]) -> pa.Table:
    ids = [pool.ids[i] for i in picks.rows]
    where = _object_rows(store, ids, ["object_id", "instrument", "sample_id", "metadata"]) if ids else {}
    native = {oid: {p["key"]: p["value"] for p in row["metadata"] or ()}.get(ECOTAXA_ID)
              for oid, row in where.items()}
    probabilities = pool.probabilities[picks.rows] if len(picks) else np.zeros((0, len(classes)))
    return pa.table({
        "rank": pa.array(np.arange(1, len(ids) + 1), pa.int32()),
        "object_id": pa.array(ids, pa.string()),
        "predicted_label": pa.array([pool.labels[i] for i in picks.rows], pa.string()),
        "label_auto": pa.array([classes[j] for j in probabilities.argmax(1)] if len(ids) else [], pa.string()),
        "probability": pa.array(probabilities.max(1) if len(ids) else [], pa.float32()),
        "strategy": pa.array([strategy] * len(ids), pa.string()),
        "score": pa.array(picks.scores, pa.float64()),
        "reason": pa.array(picks.reasons, pa.string()),
        "instrument": pa.array([where[i]["instrument"] for i in ids], pa.string()),
        "sample_id": pa.array([where[i]["sample_id"] for i in ids], pa.string()),
        "ecotaxa_object_id": pa.array([native[i] for i in ids], pa.string()),
    })


def _write_list(table: pa.Table, out_dir: Path) -> list[str]:
    import pyarrow.csv as pacsv

    parquet, csv = out_dir / "selection.parquet", out_dir / "selection.csv"
    with atomic_path(parquet) as tmp:
        pq.write_table(table, tmp)
    with atomic_path(csv) as tmp:
        pacsv.write_csv(table, tmp)
    return [str(parquet), str(csv)]


def _predictions(store: Store, pool: Pool, picks: Picks, classes: list[str]) -> list[Prediction]:
    """The picked objects as predict hands them to writers: stored object, stored probabilities, in pick order."""
    from plankton_cli.infer.predict import _prediction, _store_items

    rows = {pool.ids[i]: int(i) for i in picks.rows}
    items = {item.object_id: item for item in _store_items(store, only=set(rows))}
    out = []
    for oid, i in rows.items():
        if oid in items:  # an object that left the store since it was read: nothing to validate
            probabilities = pool.probabilities[i]
            out.append(_prediction(items[oid], probabilities, pool.labels[i], classes[int(probabilities.argmax())],
                                   None))
    return out


def _write_folders(predictions: list[Prediction], folder: Path) -> dict:
    """`<folder>/<label>/<rank>_<object>.<ext>`: each picked image as stored (PNG when not PNG/JPEG/GIF)."""
    from plankton_cli.store.images import decode

    written = Counter[str]()
    width = len(str(len(predictions)))
    for rank, p in enumerate(predictions, start=1):
        data = p.image or b""
        suffix = next((s for magic, s in _MAGIC if data.startswith(magic)), None)
        if suffix is None:
            import io

            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(decode(data)).save(buffer, format="PNG")
            data, suffix = buffer.getvalue(), ".png"
        path = folder / _safe(p.label) / f"{rank:0{width}d}_{_safe(p.object_id)}{suffix}"
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        written[p.label] += 1
    return {"writer": "folders", "folder": str(folder), "images": sum(written.values()),
            "by_label": dict(written.most_common())}


_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
