"""A night costs what the night added, not what the store holds (issue #22).

The station of bench/scale.py (real IFCB V2 bins made from the bundled pyifcb bin, a tiny real classifier), small.
What a step reads is checked by taking the earlier nights' data files away while it runs: a step that opened one
would fail (the committed list still names it). Its results must equal those of a full scan. No timing here: the
times are bench/scale.py's.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import load_bench
from plankton_cli.core.atomic import atomic_write_bytes
from plankton_cli.store.layout import COMMITTED, COVERS_KEY, checksum, read_committed

BINS, ROIS = 2, 5


scale = load_bench("scale")


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_night(station) -> dict:
    """The nightly steps on the night just added, with what each said."""
    station.ingest()
    return {"predict": station.predict(), "summarize": station.summarize(), "report": station.report()}


def data_files(root: Path) -> set[str]:
    return {rel for rel in read_committed(root) or {} if "/" in rel}


class Away:
    """The store's data files of earlier nights moved out of the store while a step runs."""

    def __init__(self, root: Path, files: set[str], to: Path):
        self.root, self.files, self.to = root, sorted(files), to

    def __enter__(self):
        for rel in self.files:
            (self.to / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.root / rel, self.to / rel)

    def __exit__(self, *exc):
        for rel in self.files:
            shutil.move(self.to / rel, self.root / rel)


def test_a_night_opens_only_its_own_files_and_gives_the_full_scans_results(tmp_path):
    station = scale.Station(tmp_path / "station", BINS, ROIS)
    station.new_night()
    run_night(station)
    old = data_files(station.store.root)
    assert any(rel.startswith("objects/") for rel in old) and any(rel.startswith("predictions/") for rel in old)
    station.nights += 8  # the next night is 9 days later: the report's trailing week no longer reaches night 1
    station.new_night()
    with Away(station.store.root, old, tmp_path / "away"):
        ingested = station.ingest()
        again = station.ingest()
        predicted = station.predict()
        nothing = station.predict()
        summary = station.summarize()
        no_news = station.summarize()
        report = station.report()
        info = station.info()
    night = BINS * ROIS
    assert ingested.stored == night and again.stored == 0 and again.sources["unchanged"] == 2 * BINS
    assert predicted.predicted == night and nothing.predicted == 0 and nothing.skipped_already_predicted == 2 * night
    assert len(predicted.writers["ifcb-h5"]["files"]) == BINS  # class files for the night's bins only
    assert summary.new_samples == BINS and no_news.new_samples == 0
    assert report.objects == night and report.samples == BINS
    assert info["datasets"]["objects"]["rows"] == 2 * night and info["datasets"]["objects"]["sources"] == 2 * BINS

    # the same as reading everything: each object predicted once, the summary equal to a rebuild's
    table = station.store.dataset("predictions").to_table(columns=["object_id", "label"])
    assert table.num_rows == 2 * night == len(set(table["object_id"].to_pylist()))
    labels = pd.Series(table["label"].to_pylist()).value_counts().to_dict()
    assert info["datasets"]["predictions"]["by_label"] == labels
    from plankton_cli.publish.summarize import read_counts, summarize

    summarize(station.store, station.model, "bin", tmp_path / "rebuilt", rebuild=True, plots=False)
    incremental = read_counts(station.out / "summary")
    rebuilt = read_counts(tmp_path / "rebuilt")
    pd.testing.assert_frame_equal(incremental, rebuilt)


def strip_to_old_format(root: Path, summary: Path) -> None:
    """The store as an older plankton-cli left it: no stats in the committed list, no covers in predictions; the
    summary as one `counts.parquet` (the whole table, its bookkeeping in the metadata) without the list of
    predictions files it read."""
    import pyarrow as pa

    from plankton_cli.publish.summarize import LEGACY_COUNTS, LEGACY_METADATA_KEY, SUMMARY, read_counts

    recorded = json.loads((summary / SUMMARY).read_text())
    del recorded["predictions_files"]
    table = pa.Table.from_pandas(read_counts(summary), preserve_index=False)
    pq.write_table(table.replace_schema_metadata({LEGACY_METADATA_KEY: json.dumps(recorded).encode()}),
                   summary / LEGACY_COUNTS)
    (summary / SUMMARY).unlink()
    shutil.rmtree(summary / "counts")
    files = read_committed(root)
    for rel in [r for r in files if r.startswith("predictions/")]:
        table = pq.read_table(root / rel)
        metadata = {k: v for k, v in table.schema.metadata.items() if k != COVERS_KEY}
        pq.write_table(table.replace_schema_metadata(metadata), root / rel)
        files[rel] = {"size": (root / rel).stat().st_size, "checksum": checksum(root / rel)}
    old = {rel: {k: v for k, v in entry.items() if k != "stats"} for rel, entry in files.items()}
    atomic_write_bytes(root / COMMITTED, json.dumps({"files": old}).encode())


def test_a_store_from_before_stats_works_and_is_upgraded_by_its_next_commit(tmp_path):
    station = scale.Station(tmp_path / "station", BINS, ROIS)
    station.new_night()
    run_night(station)
    strip_to_old_format(station.store.root, station.out / "summary")
    assert all("stats" not in e for e in read_committed(station.store.root).values())

    nothing = station.predict()  # no covers yet: the ids are looked up, nothing is predicted twice
    assert nothing.predicted == 0 and nothing.skipped_already_predicted == BINS * ROIS
    assert station.info()["datasets"]["objects"]["rows"] == BINS * ROIS
    station.new_night()
    assert station.ingest().stored == BINS * ROIS  # the first commit gives every file its stats
    entries = read_committed(station.store.root)
    assert all("stats" in e for rel, e in entries.items() if rel.endswith(".parquet"))
    assert station.predict().predicted == BINS * ROIS  # the night's only; its file covers the old night's too
    covered = {f for rel, e in read_committed(station.store.root).items() if rel.startswith("predictions/")
               for f in e["stats"].get("covers", ())}
    assert covered == {rel for rel in read_committed(station.store.root) if rel.startswith("objects/")}
    assert station.summarize().new_samples == BINS  # an old summary had read no file by name: all are read, once
    assert station.summarize().new_samples == 0
    summary = station.out / "summary"  # split into months by its first run, and the same as a rebuild
    from plankton_cli.publish.summarize import read_counts, summarize

    assert not (summary / "counts.parquet").exists() and (summary / "summary.json").exists()
    summarize(station.store, station.model, "bin", station.root / "rebuilt", plots=False)
    pd.testing.assert_frame_equal(read_counts(summary), read_counts(station.root / "rebuilt"))


def test_check_since_verifies_only_the_nights_files(tmp_path):
    from plankton_cli.store.check import check

    station = scale.Station(tmp_path / "station", BINS, ROIS)
    station.new_night()
    station.ingest()
    first = data_files(station.store.root)
    time.sleep(1.1)  # file names carry their commit's time to the second
    cut = datetime.now(UTC)
    station.new_night()
    station.ingest()
    (station.store.root / sorted(first)[0]).write_bytes(b"damaged")  # an old file: not the night's business
    since = check(station.store, since=cut)
    assert since.files == len(data_files(station.store.root) - first) + 1 and since.exit_code == 0  # + manifest
    assert check(station.store).exit_code == 74
