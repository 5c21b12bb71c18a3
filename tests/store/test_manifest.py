"""The manifest in two parts (issue #22): a night rewrites the recent part only, and reads none of the sealed part.

Real IFCB V2 bins (bench/scale.py's, made from the bundled pyifcb bin), one day folder a night, ingested as a
station's nightly job does. The parts are made small (`SEAL_ROWS`) so that a few nights seal one.
"""

from __future__ import annotations

import os
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import plankton_cli.store.manifest as manifest_module
from conftest import load_bench
from plankton_cli.ingest import ingest
from plankton_cli.store import Store
from plankton_cli.store.check import check, repair
from plankton_cli.store.info import store_info
from plankton_cli.store.layout import MANIFEST, MANIFEST_SEALED, read_committed
from plankton_cli.store.manifest import Manifest

scale = load_bench("scale")
BINS, ROIS = 2, 3


class Station:
    def __init__(self, root: Path):
        self.data, self.store, self.nights = root / "ifcb", Store(root / "store"), 0

    def night(self, rois: int = ROIS) -> Path:
        """A day folder of BINS new bins, settled (written two hours ago)."""
        self.nights += 1
        day = date(2024, 1, 1) + timedelta(days=self.nights - 1)
        folder = self.data / f"D{day:%Y}" / f"D{day:%Y%m%d}"
        folder.mkdir(parents=True)
        for i in range(BINS):
            scale.make_bin(folder / f"D{day:%Y%m%d}T{i:02d}0000_IFCB013", rois)
        settled = time.time() - 2 * 3600
        os.utime(folder, (settled, settled))
        return folder

    def ingest(self, **kw):
        return ingest(self.store, [self.data], **kw)

    def parts(self) -> dict[str, list[str]]:
        root = self.store.root
        return {name: pq.read_table(root / name, columns=["source_key"])["source_key"].to_pylist()
                for name in (MANIFEST, MANIFEST_SEALED) if (root / name).exists()}


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(manifest_module, "SEAL_ROWS", 4)
    monkeypatch.setattr(manifest_module, "SEALED_GROUP_ROWS", 2)


def sealed_reads(monkeypatch) -> list[int]:
    """The sealed part's row groups read from here on."""
    reads: list[int] = []
    real = manifest_module._Sealed.group

    def group(self, g):
        reads.append(g)
        return real(self, g)

    monkeypatch.setattr(manifest_module._Sealed, "group", group)
    return reads


def test_a_night_rewrites_the_recent_part_and_reads_nothing_of_the_sealed_one(tmp_path, small_parts, monkeypatch):
    station = Station(tmp_path)
    for _ in range(2):
        station.night()
        assert station.ingest().stored == BINS * ROIS
    parts = station.parts()  # the second night brought the recent part to SEAL_ROWS: it was merged
    assert len(parts[MANIFEST_SEALED]) == 2 * BINS and parts[MANIFEST] == []
    assert parts[MANIFEST_SEALED] == sorted(parts[MANIFEST_SEALED])
    sealed_entry = read_committed(station.store.root)[MANIFEST_SEALED]

    reads = sealed_reads(monkeypatch)
    station.night()
    summary = station.ingest()
    assert summary.stored == BINS * ROIS and summary.sources["new"] == BINS
    assert reads == []  # the night's bins sort after every sealed key: no row group of it was read
    assert read_committed(station.store.root)[MANIFEST_SEALED] == sealed_entry  # nor was it rewritten
    parts = station.parts()
    assert len(parts[MANIFEST]) == BINS and not set(parts[MANIFEST]) & set(parts[MANIFEST_SEALED])

    noop = station.ingest(rescan=True)  # every file checked against both parts
    assert noop.stored == 0 and noop.sources["unchanged"] == 3 * BINS and sorted(set(reads)) == [0, 1]
    assert store_info(station.store)["datasets"]["objects"]["sources"] == 3 * BINS  # summed over both parts


def test_a_changed_source_of_the_sealed_part_is_rewritten_there_not_twice(tmp_path, small_parts):
    station = Station(tmp_path)
    first = station.night()
    station.night()
    station.ingest()
    assert MANIFEST_SEALED in station.parts()
    changed = sorted(first.glob("*.adc"))[0].with_suffix("")
    scale.make_bin(changed, ROIS + 2)  # the instrument's bin rewritten with two more ROIs

    summary = station.ingest(rescan=True)
    assert summary.sources["changed"] == 1 and summary.stored == ROIS + 2
    parts = station.parts()
    assert len(parts[MANIFEST_SEALED]) == 2 * BINS and parts[MANIFEST] == []  # in place, once
    entry = Manifest(station.store.root).entries[str(changed)]
    assert entry["n_read"] == entry["n_stored"] == ROIS + 2
    assert station.store.dataset("objects").count_rows() == 2 * BINS * ROIS + 2
    assert station.ingest(rescan=True).stored == 0
    assert check(station.store).exit_code == 0


def test_a_store_with_one_manifest_file_is_sealed_at_its_next_commit(tmp_path, monkeypatch):
    station = Station(tmp_path)
    for _ in range(3):
        station.night()
    station.ingest()  # one file of 3 nights' sources, as stores were written before the sealed part
    before = dict(Manifest(station.store.root).entries.items())
    assert list(station.parts()) == [MANIFEST]

    monkeypatch.setattr(manifest_module, "SEAL_ROWS", 4)
    station.night()
    station.ingest()
    parts = station.parts()
    assert len(parts[MANIFEST_SEALED]) == 4 * BINS and parts[MANIFEST] == []
    after = dict(Manifest(station.store.root).entries.items())
    assert {key: after[key] for key in before} == before and len(after) == 4 * BINS


def test_a_lost_sealed_part_is_reported_and_repair_rebuilds_the_manifest(tmp_path, small_parts):
    station = Station(tmp_path)
    for _ in range(3):
        station.night()
        station.ingest()
    (station.store.root / MANIFEST_SEALED).unlink()
    report = check(station.store)
    assert report.exit_code != 0 and MANIFEST_SEALED in {p.path for p in report.problems}

    repaired = repair(station.store, ingest)
    assert repaired.exit_code == 0, [str(p) for p in repaired.problems]
    assert any("rebuilt the manifest" in line for line in repaired.repaired)
    assert len(Manifest(station.store.root).entries) == 3 * BINS  # every source known again from its rows
    again = station.ingest(rescan=True)
    assert again.stored == 0 and station.store.dataset("objects").count_rows() == 3 * BINS * ROIS
