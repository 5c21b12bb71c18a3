"""`plankton predict --workers N` / `--backend slurm --shards N`: the store's objects predicted in shards, committed
here at once.

The row groups of the objects files the model has still to predict (`predict._todo`: the night's files, not the
store's) are split into slices of about equal rows; shard k predicts the objects of its slice that the model has not
predicted (each shard reads which those are itself) into a spool in its folder of the store
(`store.shards`), as a one-process run spools its predictions. When every shard has sealed its spool, this process
runs `predict` with them adopted: like the finished spools of earlier runs, they are written to the file outputs
(EcoTaxa zips, class files: from the spooled scores and the stored objects, nothing predicted twice) and committed
with the store in one commit. A shard that failed leaves no seal: the run commits nothing and names it.

The store lock is not held while the shards predict (ingest may commit meanwhile, as with one process); objects of
a file rewritten meanwhile are left to the next run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from plankton_cli.jobs.fanout import FanOut, Shard, split
from plankton_cli.store import Store
from plankton_cli.store.shards import ShardSpace
from plankton_cli.store.transaction import new_run_id


@dataclass
class PredictShard:
    """Shard k's work: predict its row groups into its folder, seal the spool (picklable: plain data)."""

    root: str
    run_id: str
    model_path: str
    slices: list[dict[str, list[int]]]  # per shard: store-relative objects file -> row group numbers
    options: dict[str, Any] = field(default_factory=dict)  # predict's keyword arguments

    def __call__(self, k: int) -> None:
        from plankton_cli.infer.predict import predict
        from plankton_cli.store.shards import ShardSession

        session = ShardSession(Path(self.root), self.run_id, "predict", k)  # its folder; nothing to adopt whole
        shard = Shard(self.run_id, k, session.txn.staging, self.slices[k])
        summary = predict(Path(self.model_path), store=Store(self.root), to=["store"], shard=shard, **self.options)
        session.seal(summary.to_dict())


def row_group_slices(store: Store, files: list[Path], n: int) -> list[dict[str, list[int]]]:
    """The row groups of objects `files` in `n` slices of about equal rows."""
    groups: list[tuple[str, int, int]] = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        rel = str(path.relative_to(store.root))
        groups += [(rel, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    slices: list[dict[str, list[int]]] = []
    for indices in split([rows for _, _, rows in groups], n):
        slice_: dict[str, list[int]] = {}
        for i in indices:
            slice_.setdefault(groups[i][0], []).append(groups[i][1])
        slices.append(slice_)
    return slices


def predict_fanned(fan: FanOut, model_path: Path, *, store: Store, threads: int | None = None, on_batch=None,
                   writer_options: dict[str, str] | None = None, **options: Any):
    """`predict` of the store's objects in `fan`'s shards, then their outputs and one commit here (`options`:
    `predict`'s keyword arguments)."""
    from plankton_cli.infer.predict import PredictSummary, _todo, file_hash, model_weights, predict

    run_id = new_run_id()
    if fan.backend == "local" and threads is None:  # the cores shared between the workers
        threads = max(1, (os.cpu_count() or 1) // fan.count)
    elif fan.backend != "local" and threads is None and fan.resources and fan.resources.cpus_per_task:
        threads = fan.resources.cpus_per_task
    shard_options = {k: options[k] for k in ("instrument", "since", "force", "batch_size", "top_k", "embeddings",
                                             "device", "compile", "cpu_path", "lock_timeout") if k in options}
    filtered = bool(options.get("instrument") or options.get("since") or options.get("only") is not None)
    todo = _todo(store, file_hash(model_weights(Path(model_path))), force=bool(options.get("force")),
                 filtered=filtered)
    with fan.started(), ShardSpace(store.root, run_id) as space:
        work = PredictShard(str(store.root), run_id, str(model_path), row_group_slices(store, todo.files, fan.count),
                            shard_options | {"threads": threads})
        where = fan.run(work)
        sealed = space.sealed(fan.count, where)
        spools = [Path(seal.result["writers"]["store"]["spool"]) for seal in sealed]
        summary: PredictSummary = predict(Path(model_path), store=store, adopt=spools, covers=todo.covers,
                                          threads=threads,
                                          writer_options={**(writer_options or {}), "run_id": run_id}, **options)
    for seal in sealed:  # what the shards predicted
        done = seal.result
        summary.predicted += done["predicted"]
        summary.unclassified_by_threshold += done["unclassified_by_threshold"]
        summary.cpu_path = summary.cpu_path or done["cpu_path"]
        summary.skipped_already_predicted = max(summary.skipped_already_predicted, done["skipped_already_predicted"])
        for key in ("by_label", "by_instrument"):
            merged = getattr(summary, key)
            for name, n in done[key].items():
                merged[name] = merged.get(name, 0) + n
        summary.features_lacking += done["features_lacking"]
        if on_batch:
            on_batch(done["predicted"])
    summary.by_label = dict(sorted(summary.by_label.items(), key=lambda kv: -kv[1]))
    return summary
