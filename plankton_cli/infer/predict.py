"""`plankton predict` as a library function: a fine-tuned model over the store or over sources, into writers.

Preprocessing is exactly what the model file records (`model.json`): the padding preset and crops, the resize and
centre crop, mean and std. Padding is redone from the stored original image with the same function and the same
per-object noise seed as `plankton pad`, so the pixels the model sees at prediction time are the pixels it was
trained and validated on, bit for bit. A model trained with per-object features (`features` in model.json) gets
them the same way: the same metadata columns, standardised with the recorded median and IQR, and the `features.*`
morphometrics measured again from the same stored pixels (`plankton_cli.prepare.features.inputs`). A source that lacks
some of them is named once, with what it lacks; those values are fed as missing (0 plus the indicator), as in
training.

Outputs are part of the work. With the `store` writer among the writers, a model's prediction of an object counts
as done when the store holds it, so the store commit comes last, after every file output, in one protocol:

1. predict the objects nobody has predicted, into every writer (the store's spool `<run>.part`, the file
   writers' spools in OUT);
2. `finish()` the store spool (renamed `<run>.parquet`): from here on these objects are never predicted again;
3. close the file writers: each writes its files atomically (temporary name, rename);
4. commit the store spool (one journaled store commit, which also deletes the spool).

A run killed in 1 leaves a `.part` the next run deletes and predicts again (nothing was written). A run killed or
failed in 2-4 (a writer failed, the store lock timed out) leaves a finished spool. The next run of the model
claims it (an flock: never a spool whose run is still alive, see `plankton_cli.infer.predictions`), skips its objects,
writes them from the spool and the stored objects to its own file writers and to the outputs the spool records its
run asked for, before its own predictions; then commits it with its own. Outputs are files named by sample or bin
and rewritten whole from the same predictions, so writing them again gives the same files, never a second copy.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence, Set
from dataclasses import dataclass, field, replace
from itertools import chain
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from plankton_cli import __version__
from plankton_cli.core import plugins
from plankton_cli.core.errors import CantCreate
from plankton_cli.infer.predictions import StoreSession, StoreWriter, pending_ids, spool_outputs
from plankton_cli.jobs.fanout import Shard
from plankton_cli.prepare.features.inputs import PREFIX, FeatureScaling, image_features, metadata_features
from plankton_cli.train.model_info import ModelInfo
from plankton_cli.core.records import ReadOptions, Record, Rejection
from plankton_cli.store import Store
from plankton_cli.store.layout import checksum as file_hash  # a model file is hashed like a store file
from plankton_cli.store.layout import iter_listed, may_hold
from plankton_cli.store.images import ImageError, check, decode
from plankton_cli.core.writers import UNCLASSIFIED, Prediction, PredictionRun

log = logging.getLogger("plankton.predict")

COLUMNS = ["object_id", "image", "instrument", "sample_id", "source_row", "acquired_at", "lat", "lon", "depth",
           "source_file", "pixel_size_um", "metadata"]


@dataclass
class PredictSummary:
    model_id: str
    model_hash: str
    cpu_path: str | None = None  # the CPU arithmetic used (cpu_inference), None on a GPU
    predicted: int = 0
    skipped_already_predicted: int = 0
    rejected: int = 0
    by_label: dict[str, int] = field(default_factory=dict)
    by_instrument: dict[str, int] = field(default_factory=dict)  # of the objects predicted ("" when unknown)
    unclassified_by_threshold: int = 0  # top class below its precision threshold: labelled `unclassified`
    writers: dict[str, dict] = field(default_factory=dict)
    features_lacking: list[str] = field(default_factory=list)  # one line per source that lacked model features

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(slots=True)
class _Item:
    """One object on its way to the model."""

    object_id: str
    image: bytes
    instrument: str | None = None
    sample_id: str | None = None
    source_row: int | None = None
    acquired_at: datetime | None = None
    lat: float | None = None
    lon: float | None = None
    depth: float | None = None
    source_file: str | None = None
    pixel_size_um: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class Preprocessor:
    """Stored image bytes → the normalised tensor the model expects, as recorded in its `model.json`.

    A model trained on a padded dataset lists, per instrument, the crop and padding its images got
    (`pad_settings`, see `padding.padding_rules`); the same crop and padding are applied here. An instrument the
    model never saw gets the paper's default preset for it (`plankton pad --preset auto`).
    """

    def __init__(self, info: ModelInfo):
        from plankton_cli.prepare.data.transforms import EvalTransform
        from plankton_cli.prepare.pad_store import parse_padding_rule

        self.pad = bool(info.pad_settings)
        self.rules = {instrument: (crop, size) for instrument, crop, size in map(parse_padding_rule, info.pad_settings)}
        config = info.data_config()
        self.transform = EvalTransform(resize=int(config["resize"]), crop=int(info.img_size),
                                       mean=float(np.mean(config["mean"])), std=float(np.mean(config["std"])))

    def __call__(self, item: _Item):
        from PIL import Image

        from plankton_cli.prepare.pad_store import crop_for
        from plankton_cli.prepare.square_pad import pad_to_square

        if not self.pad:
            return self.transform(item.image)
        crop, size = self.rules.get(item.instrument) or (crop_for(item.instrument, "auto"), None)
        padded = pad_to_square(decode(item.image), item.object_id, crop=crop, size=size).image
        return self.transform(Image.fromarray(padded))


class FeatureInputs:
    """An object → the feature input a model with ``scaling`` was trained with; notes what each source lacks."""

    def __init__(self, scaling: FeatureScaling):
        self.scaling = scaling
        self.measure = any(name.startswith(PREFIX) for name in scaling.names)
        self.lacking: dict[str, tuple[set[str], int]] = {}  # source -> (features it lacked, objects)

    def values(self, item: _Item) -> dict[str, float]:
        values = metadata_features(item.metadata)
        if self.measure:
            values.update(image_features(item.image, item.instrument, item.pixel_size_um))
        return values

    def __call__(self, items: list[_Item]) -> np.ndarray:
        rows = [self.values(item) for item in items]
        for item, row in zip(items, rows):
            if missing := self.scaling.missing(row):
                source = item.source_file or item.sample_id or "unknown source"
                names, count = self.lacking.get(source, (set(), 0))
                self.lacking[source] = (names | set(missing), count + 1)
        return self.scaling.transform(rows)

    def report(self) -> list[str]:
        """One line per source that lacked features, e.g. for the log and the summary."""
        return [f"{source} lacks {', '.join(sorted(names))} for {count} object(s): fed as missing"
                for source, (names, count) in sorted(self.lacking.items())]


class Scorer:
    """A model file loaded once, scoring objects the way `predict` does: the preprocessing and feature inputs its
    `model.json` records, the CPU path, bf16 autocast on a GPU. `predict` runs one per call; a server (the DEEPaaS
    and CytoProcess integrations) keeps one for every request."""

    def __init__(self, model_path: Path, *, device: str = "auto", compile: bool = False, threads: int | None = None,
                 cpu_path: str = "auto"):
        import torch

        from plankton_cli.infer import cpu_inference
        from plankton_cli.train.models.checkpoints import load_model

        cpu_inference.set_threads(threads)
        self.weights = model_weights(model_path)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        model, self.info = load_model(self.weights, device=self.device)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        self.cpu_path: str | None = None  # the CPU arithmetic used (cpu_inference), None on a GPU
        if self.device.type == "cpu":
            model, self.autocast, self.cpu_path = cpu_inference.prepare(model, cpu_path)
        self.model = torch.compile(model) if compile else model
        self.classes: list[str] = list(self.info.classes)
        thresholds = self.info.thresholds or None
        self.thresholds = (np.array([float(thresholds.get(c, np.nan)) for c in self.classes], dtype=np.float64)
                           if thresholds else None)
        self.preprocess = Preprocessor(self.info)
        scaling = FeatureScaling.from_info(self.info)
        self.feature_inputs = FeatureInputs(scaling) if scaling else None

    def score(self, batch: list[_Item], embeddings: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities of a batch (objects × classes), and its embeddings when asked for."""
        import torch

        with torch.inference_mode():
            inputs = torch.stack([self.preprocess(item) for item in batch]).to(self.device, non_blocking=True)
            extra = (torch.from_numpy(self.feature_inputs(batch)).to(self.device, non_blocking=True)
                     if self.feature_inputs else None)
            with self.autocast:  # a forest head reads the features only: no encoder to run unless embeddings are kept
                features = self.model.forward_features(inputs) if self.model.reads_image or embeddings else None
                logits = self.model.classify(features, extra)
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
            feats = features.float().cpu().numpy() if embeddings and features is not None else None
        return probs, feats

    def label(self, probabilities: np.ndarray) -> str:
        """The top class, or `unclassified` when its probability is below the class's precision threshold."""
        best = int(probabilities.argmax())
        if self.thresholds is not None and probabilities[best] < self.thresholds[best]:
            return UNCLASSIFIED
        return self.classes[best]


def _store_items(store: Store, *, instrument: str | None = None, since: datetime | None = None,
                 exclude: Set[str] = frozenset(), only: set[str] | None = None,
                 files: Collection[Path] | None = None,
                 row_groups: dict[str, list[int]] | None = None) -> Iterator[_Item]:
    """The stored objects (of `files` only, when given; of these row groups only, store-relative file -> row group
    numbers, for a shard), less those in `exclude`; filters are applied by pyarrow, so only the rows to predict are
    turned into Python objects."""
    flt = None if only is None else ds.field("object_id").isin(pa.array(sorted(only), pa.string()))
    if exclude:
        keep = ~ds.field("object_id").isin(pa.array(sorted(exclude), pa.string()))
        flt = keep if flt is None else flt & keep
    if instrument:
        flt = ds.field("instrument") == instrument if flt is None else flt & (ds.field("instrument") == instrument)
    if since is not None:
        recent = ds.field("acquired_at") >= pc.scalar(since)
        flt = recent if flt is None else flt & recent
    if only is not None and files is None:  # the files whose id ranges may hold them
        ids = sorted(only)
        files = list(store.stats("objects", lambda stats: may_hold(stats, "object_id", ids)))
    wanted = None if files is None else set(files)
    if wanted is not None and not wanted:  # nothing new: the store's files are not even listed
        return

    def batches(path: Path) -> Iterator[pa.RecordBatch]:
        if wanted is not None and path not in wanted:
            return iter(())
        dataset = store.dataset("objects", [path])
        if row_groups is not None:
            groups = row_groups.get(str(path.relative_to(store.root)), [])
            fragments = [f.subset(row_group_ids=groups) for f in dataset.get_fragments()] if groups else []
            dataset = ds.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)
        return dataset.to_batches(columns=COLUMNS, filter=flt, batch_size=256)

    # File by file, going on over a fresh list if ingest commits and deletes a file meanwhile (predict does not
    # hold the store lock while it reads); a file that commit rewrote comes again, so ids already given are skipped.
    given: set[str] = set()
    for batch in iter_listed(store.root / "objects", batches):
        for row in batch.to_pylist():
            if row["object_id"] in given:
                continue
            given.add(row["object_id"])
            row["image"] = row["image"]["bytes"]
            row["metadata"] = {pair["key"]: pair["value"] for pair in row["metadata"] or ()}
            yield _Item(**row)


@dataclass
class _Todo:
    """What a run over the store has to predict, found from the committed list's stats (`layout.file_stats`)."""

    files: list[Path]  # the objects files to read
    exclude: set[str]  # ids among them already predicted (or waiting in a spool)
    skipped: int  # objects already predicted: rows of covered files + `exclude`
    covers: list[str]  # objects files (store-relative) wholly predicted once this run commits


def _todo(store: Store, model_hash: str, *, force: bool, filtered: bool) -> _Todo:
    """The objects a run has to predict, in proportion to what is new, not to the store.

    Each predictions file records the objects files whose every row its model had predicted when it was
    committed (its `covers`, in its footer and the committed list). A run reads only the objects files no
    predictions file of its model covers (the night's, a file rewritten by ingest; every file of a store from
    before covers, once), and among them skips the ids its model already predicted, looked up only in its
    predictions files whose id ranges reach them. Those files are then covered by this run's predictions: a run
    with `--instrument`/`--since` covers nothing, as it may leave rows of them out."""
    objects = store.stats("objects")
    rel = {path: str(path.relative_to(store.root)) for path in objects}
    if force:
        return _Todo(list(objects), set(), 0, [] if filtered else sorted(rel.values()))
    mine = store.stats("predictions", lambda stats: may_hold(stats, "model_hash", [model_hash]))
    covered = {f for stats in mine.values() if stats for f in stats.get("covers", ())}
    todo = [path for path in objects if rel[path] not in covered]
    skipped = sum((objects[path] or {}).get("rows", 0) for path in objects if rel[path] in covered)
    ids: list[str] = []
    for path in todo:
        try:
            ids += pq.read_table(path, columns=["object_id"])["object_id"].to_pylist()
        except FileNotFoundError:  # rewritten by an ingest meanwhile: its new file is the next run's
            continue
    ids.sort()
    exclude = pending_ids(store, model_hash) & set(ids)
    done = ds.field("model_hash") == model_hash
    for path, stats in mine.items():
        if may_hold(stats, "object_id", ids):
            found = store.dataset("predictions", [path]).to_table(
                columns=["object_id"], filter=done & ds.field("object_id").isin(pa.array(ids, pa.string())))
            exclude.update(found["object_id"].to_pylist())
    return _Todo(todo, exclude, skipped + len(exclude), [] if filtered else sorted(rel[p] for p in todo))


def _prediction(item: _Item, probabilities: np.ndarray, label: str, label_auto: str,
                embedding: np.ndarray | None) -> Prediction:
    return Prediction(
        object_id=item.object_id, probabilities=probabilities, label=label, label_auto=label_auto,
        sample_id=item.sample_id, source_row=item.source_row, instrument=item.instrument,
        acquired_at=item.acquired_at, lat=item.lat, lon=item.lon, depth=item.depth, image=item.image,
        image_name=None, embedding=embedding, metadata=item.metadata,
    )


def _check_out(out_dir: Path) -> None:
    """Refuse an OUT that cannot take files before predicting anything: one line naming the folder (exit 73),
    not a writer's temporary file name at the end of the run. `os.access` also answers for root, who writes
    through permission bits but not into an immutable folder or a read-only file system; no probe file is made,
    so a run killed here leaves nothing behind."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CantCreate(f"{out_dir}: cannot write outputs there ({exc.strerror or exc})", path=out_dir) from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise CantCreate(f"{out_dir}: cannot write outputs there (not writable)", path=out_dir)


# A writer's file or folder that cannot be made (a file where its folder goes, a read-only or immutable folder)
CANT_CREATE = frozenset({errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS})


def _output_failure(exc: Exception, *, kept: bool) -> Exception:
    """A writer's failure to create its output as `CantCreate` (exit 73) naming the path, saying whether the
    predictions wait for the next run; any other failure as it is."""
    if not isinstance(exc, OSError) or exc.errno not in CANT_CREATE:
        return exc
    then = "; the predictions are kept: once it is fixed, the next run writes the outputs without predicting again"
    return CantCreate(f"{exc.filename}: {exc.strerror}{then if kept else ''}", path=exc.filename)


def _finish_outputs(store: Store, spool: IO[bytes], run: PredictionRun, sessions: dict[tuple[str, str], Any],
                    own: list[tuple[str, str]], batch_size: int) -> None:
    """Write an ended run's stored-but-unfinished predictions (its finished spool) to this run's own file writers
    (`own`: this run commits them, so it owes their outputs) and to the outputs that run asked for, from the
    spooled scores and the stored objects: nothing is predicted again."""
    outputs, options = spool_outputs(spool)
    targets = dict.fromkeys([*own, *outputs.items()])
    for name, out in targets:  # an output the earlier run asked for and this run does not write: opened for it
        if (name, out) not in sessions:
            sessions[(name, out)] = plugins.load("writer", name).open(Path(out), replace(run, options=options))
    table = pq.read_table(spool, columns=["object_id", "label", "label_auto", "probabilities", "embedding"])
    rows = {oid: i for i, oid in enumerate(table["object_id"].to_pylist())}  # an object twice: its last row
    labels, autos = table["label"].to_pylist(), table["label_auto"].to_pylist()
    scores = table["probabilities"].to_pylist()
    embeddings = table["embedding"].to_pylist()
    found = 0
    for batch in _batches(_store_items(store, only=set(rows)), batch_size):
        found += len(batch)
        preds = []
        for item in batch:
            i = rows[item.object_id]
            embedding = None if embeddings[i] is None else np.asarray(embeddings[i], np.float32)
            preds.append(_prediction(item, np.asarray(scores[i], np.float32), labels[i], autos[i], embedding))
        for key in targets:
            sessions[key].write(preds)
    if found < len(rows):
        log.warning("%d predictions of an earlier run are stored without file outputs: their objects left the "
                    "store meanwhile", len(rows) - found)


def _source_items(paths: list[Path], fmt: str, options: ReadOptions,
                  rejected: Callable[[Rejection], None]) -> Iterator[_Item]:
    from plankton_cli.ingest import discover

    for reader, source, _ in discover(paths, fmt, options):
        for item in reader.read(source, options):  # type: ignore[attr-defined]
            if isinstance(item, Rejection):
                rejected(item)
                continue
            rec: Record = item
            try:
                image = check(rec.image).data
            except ImageError as exc:
                rejected(Rejection(rec.source_file, rec.source_row, str(exc), rec.object_id))
                continue
            yield _Item(rec.object_id, image, rec.instrument, rec.sample_id, rec.source_row, rec.acquired_at,
                        rec.lat, rec.lon, rec.depth, str(rec.source_file), rec.pixel_size_um, dict(rec.metadata))


def model_weights(model_path: Path) -> Path:
    """The weights file of `--model` (a model.safetensors, its model.json, or their folder)."""
    model_path = Path(model_path)
    return model_path / "model.safetensors" if model_path.is_dir() else model_path.with_suffix(".safetensors")


def model_name(weights: Path, info: ModelInfo) -> str:
    """The model id predictions carry: model.json's, else `<run>/<fold>` from where the file is."""
    return info.extra.get("model_id") or f"{weights.parent.parent.name}/{weights.parent.name}"


def already_predicted(store: Store, model_hash: str) -> set[str]:
    if not store.files("predictions"):
        return set()
    table = store.dataset("predictions").to_table(columns=["object_id"],
                                                  filter=ds.field("model_hash") == model_hash)
    return set(table["object_id"].to_pylist())


def _batches(items: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    batch: list[_Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict(
    model_path: Path,
    *,
    store: Store | None = None,
    sources: list[Path] | None = None,
    fmt: str = "auto",
    read_options: ReadOptions | None = None,
    to: Sequence[str] = ("store",),
    out_dir: Path = Path("predictions"),
    instrument: str | None = None,
    since: datetime | None = None,
    force: bool = False,
    only: Set[str] | None = None,
    batch_size: int = 64,
    top_k: int = 3,
    embeddings: bool = False,
    writer_options: dict[str, str] | None = None,
    device: str = "auto",
    compile: bool = False,
    lock_timeout: float = 60.0,
    threads: int | None = None,
    cpu_path: str = "auto",
    on_batch: Callable[[int], None] | None = None,
    shard: Shard | None = None,
    adopt: Sequence[Path] = (),
    covers: Sequence[str] = (),
) -> PredictSummary:
    """Predict every object of `store` (or of `sources`) with the model at `model_path`, into the `to` writers.

    On CPU, `threads` sets torch's intra-op threads and `cpu_path` the arithmetic (`cpu_inference.CPU_PATHS`).
    `only`: of the store's objects, only these ids (`plankton select` predicts what it lacks).
    The model is loaded when there is something to predict: a run with nothing new imports no torch.
    `shard`: one shard of a fanned-out run (`infer.predict_fanout`): its row groups, into its spool; `adopt`: the
    shards' spools, committed with this run, and `covers` the objects files they predicted whole (see `_todo`).
    """
    weights = model_weights(Path(model_path))
    info = ModelInfo.load(weights)
    classes: list[str] = list(info.classes)
    thresholds = info.thresholds or None
    threshold_vec = (np.array([float(thresholds.get(c, np.nan)) for c in classes], dtype=np.float64)
                     if thresholds else None)
    model_hash = file_hash(weights)
    model_id = model_name(weights, info)
    summary = PredictSummary(model_id=model_id, model_hash=model_hash)
    options: dict[str, Any] = dict(writer_options or {})
    if store is not None:
        options.setdefault("store", str(store.root))
        options.setdefault("lock_timeout", lock_timeout)
    if shard is not None:
        options["run_id"] = shard.run_id  # every shard's rows carry the run's id
    run = PredictionRun(
        model_id=model_id, model_hash=model_hash, classes=classes, thresholds=threshold_vec,
        classifier_name=f"plankton-cli {info.architecture} {model_id}", top_k=top_k,
        package_version=__version__, options=options,
    )

    def rejected(rej: Rejection) -> None:
        summary.rejected += 1
        log.warning("rejected %s", rej)

    items: Iterable[_Item]
    covered = list(covers)  # objects files the store's new predictions file covers (see `_todo`)
    if sources:
        items = _source_items(list(sources), fmt, read_options or ReadOptions(), rejected)
    elif adopt:
        items = ()  # the shards predicted them
    elif store is not None:
        # Objects an earlier run predicted but could not store (the store was locked) are stored with this run's.
        todo = _todo(store, model_hash, force=force, filtered=bool(instrument or since or only is not None))
        summary.skipped_already_predicted = todo.skipped
        items = _store_items(store, instrument=instrument, since=since, exclude=todo.exclude, files=todo.files,
                             only=None if only is None else set(only),
                             row_groups=None if shard is None else shard.row_groups)
        covered = [] if shard is not None else todo.covers  # a shard predicts a slice: the run says what is covered
    else:
        raise ValueError("predict needs a store or sources")

    files = [name for name in to if name != StoreWriter.name]
    if files:
        _check_out(Path(out_dir))  # before any prediction: an OUT that cannot take files fails in one line
    options["outputs"] = {name: str(out_dir) for name in files}  # what the store's spool says this run owes
    sessions: dict[tuple[str, str], Any] = {}  # (writer, OUT) -> session; the store's is closed apart, last
    store_session: StoreSession | None = None
    scorer: Scorer | None = None
    try:
        if shard is not None and store is not None:  # a shard: its predictions wait in its folder for the run
            store_session = StoreSession(store, run, spool_dir=shard.folder, claim=False)
        for name in () if shard is not None else to:
            session = plugins.load("writer", name).open(Path(out_dir), run)
            if isinstance(session, StoreSession):
                store_session = session
                store_session.covers = covered
            else:
                sessions[(name, str(out_dir))] = session
        own_files = [*sessions]  # this run's file writers, not outputs only owed to earlier runs (opened below)
        own = [*sessions.values(), *([store_session] if store_session else [])]
        if store_session is not None and store is not None:
            for path in adopt:  # the shards' predictions: committed with this run's
                store_session.adopt(path)
            for spool in store_session.earlier.values():  # finish what ended runs left: their outputs first
                _finish_outputs(store, spool, run, sessions, own_files, batch_size)
        elif store is not None:
            for path in adopt:  # no store writer: the shards' predictions go to the file writers only
                with open(path, "rb") as spooled:
                    _finish_outputs(store, spooled, run, sessions, own_files, batch_size)
        counts: dict[str, int] = {}
        batches = _batches(items, batch_size)
        first = next(batches, None)
        if first is not None:
            scorer = Scorer(model_path, device=device, compile=compile, threads=threads, cpu_path=cpu_path)
            summary.cpu_path = scorer.cpu_path
        for batch in [] if first is None else chain([first], batches):
            assert scorer is not None
            probs, feats = scorer.score(batch, embeddings=embeddings)
            preds = []
            for i, item in enumerate(batch):
                p = probs[i]
                label = scorer.label(p)
                if label == UNCLASSIFIED:
                    summary.unclassified_by_threshold += 1
                counts[label] = counts.get(label, 0) + 1
                instrument_key = item.instrument or ""
                summary.by_instrument[instrument_key] = summary.by_instrument.get(instrument_key, 0) + 1
                preds.append(_prediction(item, p.astype(np.float32), label, classes[int(p.argmax())],
                                         None if feats is None else feats[i]))
            for session in own:
                session.write(preds)
            summary.predicted += len(preds)
            if on_batch:
                on_batch(len(preds))
        if store_session is not None:
            store_session.finish()  # durable: a run that fails or dies from here on is finished without predicting
    except BaseException:
        # Writers spool until close(); a failed run drops what they spooled (a killed one: see plankton_cli.core.spool).
        for session in [*sessions.values(), *([store_session] if store_session else [])]:
            abort = getattr(session, "abort", None)  # optional: writers without a spool have nothing to drop
            if abort is not None:
                abort()
        raise
    failure: BaseException | None = None
    for (name, out), session in sessions.items():  # every writer finishes its files even when one of them fails
        try:
            summary.writers[name if out == str(out_dir) else f"{name} ({out})"] = session.close()
        except Exception as exc:
            failure = failure or _output_failure(exc, kept=store_session is not None)
    if store_session is not None:
        if failure is not None:  # not done: the finished spool stays for the next run, which writes the outputs
            store_session.release()
        elif shard is not None:  # the run commits it with the other shards'
            summary.writers[StoreWriter.name] = {"spool": str(store_session.spool_path)}
            store_session.release()
        else:
            summary.writers[StoreWriter.name] = store_session.commit()  # the commit point of the whole run
    if failure is not None:
        raise failure
    if scorer is not None and scorer.feature_inputs:
        summary.features_lacking = scorer.feature_inputs.report()
        for line in summary.features_lacking:
            log.warning("features: %s", line)
    summary.by_label = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    return summary
