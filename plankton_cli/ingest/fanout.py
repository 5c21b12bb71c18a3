"""`plankton ingest --workers N` / `--backend slurm --shards N`: sources read in shards, decided and committed here.

What costs is reading a source and checking its images (decode, hash): each shard does that for a disjoint slice of
the sources to read (balanced by bytes), writing the rows it prepared and the records it rejected as staged files
(`store.shards`). What decides where a row goes (a duplicate, a conflict, an EcoTaxa twin, a superseded source) is
cheap and depends on every source before it, so the run takes it here, in source order, with the same code as
one process (`ingest._admit`), reading only the few columns it needs; a file whose rows are all stored is committed
as the shard wrote it, one that loses rows is rewritten without them. Manifest, superseded rows and every shard's
files change in one commit: the store is the one process would leave, row for row (file boundaries aside).

A run that supersedes an EcoTaxa source that had stored objects reads the sources that may have skipped objects as
its twins again, one after the other (see `ingest`): it runs in one process.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from plankton_cli.core import plugins
from plankton_cli.jobs.fanout import FanOut, split
from plankton_cli.ingest import (DATASET, ECOTAXA, ECOTAXA_ID, IngestSummary, _admit, _Candidate, _prepare, _reject, _Run,
                                 reason_kind)
from plankton_cli.core.records import ReadOptions, Record, Rejection, Source
from plankton_cli.store import Store
from plankton_cli.store.shards import Sealed, ShardSession, ShardSpace
from plankton_cli.store.layout import ROW_GROUP_ROWS
from plankton_cli.store.manifest import checksum
from plankton_cli.store.writer import parquet_options

log = logging.getLogger("plankton.ingest")


@dataclass
class IngestShard:
    """Shard k's work: read its sources, prepare their rows and rejections, seal them (picklable: plain data)."""

    root: str
    run_id: str
    slices: list[list[tuple[int, Source]]]  # per shard: (index in the run's sources, source)
    options: ReadOptions

    def __call__(self, k: int) -> None:
        session = ShardSession(Path(self.root), self.run_id, "ingest", k)
        done = []
        for index, source in self.slices[k]:
            reader = plugins.load("reader", source.reader)
            read, rejected = 0, Counter[str]()
            now = datetime.now(UTC)
            items = None
            while True:
                try:
                    items = items or iter(reader.read(source, self.options))
                    item = next(items)
                except StopIteration:
                    break
                except Exception as exc:  # a reader bug rejects the source, as in one process
                    read += 1
                    item = Rejection(str(source.files[0]), None, f"reader error: {type(exc).__name__}: {exc}")
                    _stage_rejection(session, item, source, now, rejected)
                    break
                read += 1
                if isinstance(item, Record):
                    item = _prepare(item, source, self.run_id, now)
                if isinstance(item, Rejection):
                    _stage_rejection(session, item, source, now, rejected)
                else:
                    session.add(DATASET, item)
            # the manifest's checksum of a source read for the first time: here, in parallel, not in the commit
            done.append({"index": index, "read": read, "rejected": dict(rejected), "checksum": checksum(source.files)})
        session.seal({"sources": done})


def _stage_rejection(session: ShardSession, rej: Rejection, source: Source, now: datetime, kinds: Counter) -> None:
    kinds[reason_kind(rej.reason)] += 1
    log.warning("rejected %s", rej)
    session.reject({"source_key": source.key, "source_file": rej.source_file,
                    "source_row": None if rej.source_row is None else str(rej.source_row),
                    "object_id": rej.object_id, "reason": rej.reason, "rejected_at": now})


def needs_one_process(run: _Run, planned: list[tuple[object, Source, Path, str, dict]]) -> bool:
    """Whether the run supersedes an EcoTaxa source that had stored objects (see the module's docstring)."""
    return any(status in ("changed", "retried") and source.reader == ECOTAXA
               and run.manifest.entries.get(source.key, {}).get("n_stored")
               for _, source, _, status, _ in planned)


def ingest_fanned(store: Store, run: _Run, planned: list[tuple[object, Source, Path, str, dict]], fan: FanOut,
                  options: ReadOptions, summary: IngestSummary) -> None:
    """Read the planned sources (reader, source, path given, status, manifest facts) in `fan`'s shards, decide
    and commit here (under the store lock the caller holds)."""
    to_read = [i for i, (_, _, _, status, _) in enumerate(planned) if status != "unchanged"]
    slices = split([planned[i][4]["size"] for i in to_read], fan.count)
    work = IngestShard(str(store.root), run.run_id, [[(to_read[j], planned[to_read[j]][1]) for j in s]
                                                      for s in slices], options)
    with ShardSpace(store.root, run.run_id) as space:
        where = fan.run(work)
        sealed = space.sealed(fan.count, where)
        _decide(store, run, planned, sealed, options, summary)
        run.commit()


def _decide(store: Store, run: _Run, planned: list, sealed: list[Sealed], options: ReadOptions,
            summary: IngestSummary) -> None:
    """Take every prepared row's fate in source order, stage the shards' files accordingly, record the manifest."""
    shard_of = {entry["index"]: entry for seal in sealed for entry in seal.result["sources"]}
    ecotaxa = {source.key for _, source, _, _, _ in planned if source.reader == ECOTAXA}
    rows: dict[str, list[tuple[str, int, _Candidate]]] = {}  # source key -> (staged file, row, candidate)
    sizes: dict[str, int] = {}
    for seal in sealed:
        for staged, final, _ in seal.files:
            if final.startswith(f"{DATASET}/"):
                sizes[staged] = _candidates(store.root / staged, staged, ecotaxa, rows)
    kept: dict[str, list[int]] = {staged: [] for staged in sizes}
    recorded = []
    for index, (_, source, found_in, status, facts) in enumerate(planned):
        run.seen.add(source.key)
        if status == "unchanged":
            continue
        if status in ("changed", "retried"):
            run.supersede(source)
        done = shard_of[index]
        counts = Counter(read=done["read"], stored=0, skipped=0, rejected=sum(done["rejected"].values()), twins=0)
        summary.rejected.update(done["rejected"])
        stored_in = []
        now = datetime.now(UTC)
        for staged, i, cand in rows.get(source.key, ()):
            verdict = _admit(run, cand, source, counts, summary)
            if verdict is True:
                kept[staged].append(i)
                stored_in.append(staged)
            elif isinstance(verdict, Rejection):
                _reject(run, verdict, source, now, counts, summary)
        summary.add_source(counts, source.reader)
        recorded.append((source, {"checksum": done["checksum"], **facts}, dict(counts), stored_in, found_in))
    final_of = _stage_kept(store, run, sealed, sizes, kept)
    for source, facts, source_counts, stored_in, found_in in recorded:
        run.manifest.record(source, facts, source_counts, [final_of[s] for s in stored_in], run.run_id, found_in,
                            options)


def _candidates(path: Path, staged: str, ecotaxa: set[str], rows: dict[str, list[tuple[str, int, _Candidate]]]
                ) -> int:
    """Add the prepared rows of the shard file `path` to `rows` (per source key, in file order); returns how many.
    Column by column, and the metadata (large: every ADC column of an IFCB ROI) only when the file holds rows of
    `ecotaxa` sources, the only ones whose decision reads it (EcoTaxa's own object id)."""
    names = ["object_id", "content_hash", "label", "source_file", "source_row", "source_key"]
    table = pq.read_table(path, columns=names)
    ids, hashes, labels, files, source_rows, keys = (table[name].to_pylist() for name in names)
    flags = [False] * table.num_rows
    if ecotaxa & set(keys):
        metadata = pq.read_table(path, columns=["metadata"])["metadata"].to_pylist()
        flags = [key in ecotaxa and any(pair["key"] == ECOTAXA_ID for pair in pairs)
                 for key, pairs in zip(keys, metadata)]
    for i, key in enumerate(keys):
        cand = _Candidate(ids[i], hashes[i], labels[i], files[i], source_rows[i], flags[i])
        rows.setdefault(key, []).append((staged, i, cand))
    return table.num_rows


def _stage_kept(store: Store, run: _Run, sealed: list[Sealed], sizes: dict[str, int], kept: dict[str, list[int]]
                ) -> dict[str, str]:
    """Commit each shard file with the run: whole when all its rows are stored, rewritten with only those that
    are, not at all when none is. Returns staged path -> its file in the store."""
    final_of = {}
    txn = run.session.txn
    for seal in sealed:
        for staged, final, entry in seal.files:
            if staged not in sizes:  # rejections: all of them are this run's
                txn.adopt(staged, final, entry)
            elif len(kept[staged]) == sizes[staged]:
                txn.adopt(staged, final, entry)
                final_of[staged] = final
            elif kept[staged]:
                table = pq.read_table(store.root / staged, schema=run.objects_schema.file_schema)
                table = table.take(pa.array(kept[staged], pa.int64()))
                new = txn.new_name(Path(final).parent)
                with pq.ParquetWriter(txn.stage(new), table.schema, **parquet_options(run.objects_schema)) as w:
                    w.write_table(table, row_group_size=ROW_GROUP_ROWS)
                final_of[staged] = new
    return final_of
