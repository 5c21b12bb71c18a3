"""Every registered reader passes the same contract, like timm generates its model tests from its registry.

A new reader plugin only needs a sample in `SAMPLES` (or a `contract_sample()` method returning a path).
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BUNDLED, shared_data
from plankton_cli.core import plugins
from plankton_cli.ingest import ingest
from plankton_cli.core.records import LABEL_STATUSES, ReadOptions, Record, Rejection
from plankton_cli.store import Store

V2_BIN = BUNDLED / "ifcb/pyifcb-testdata/white/D2013/D201305/D20130526/D20130526T095207_IFCB013"


def _ifcb_png_export(tmp: Path) -> Path:
    """The real V2 bin exported the way ifcb-analysis does: <bin>/<bin>_<target:05d>.png."""
    reader = plugins.load("reader", "ifcb")
    out = tmp / "png" / V2_BIN.name
    out.mkdir(parents=True)
    for source in reader.discover(V2_BIN.parent, ReadOptions()):
        for rec in reader.read(source, ReadOptions()):
            Image.fromarray(rec.image).save(out / f"{rec.object_id}.png")
    return out.parent


SAMPLES = {
    "ifcb": lambda tmp: BUNDLED / "ifcb/pyifcb-testdata/white",
    "ifcb-png": _ifcb_png_export,
    "ecotaxa": lambda tmp: shared_data("ecotaxa", "ecotaxa-back-qa", "import_test"),
    "folders": lambda tmp: BUNDLED / "planktonclass-demo/demo-images",
}


def sample_for(name: str, reader, tmp: Path) -> Path:
    if hasattr(reader, "contract_sample"):
        return Path(reader.contract_sample())
    if name not in SAMPLES:
        pytest.fail(f"reader {name!r} has no contract sample: add one to SAMPLES or give it contract_sample()")
    return SAMPLES[name](tmp)


@pytest.fixture(params=plugins.names("reader"))
def reader_and_sample(request, tmp_path):
    reader = plugins.load("reader", request.param)
    return request.param, reader, sample_for(request.param, reader, tmp_path)


def read_all(reader, path):
    items = []
    for source in reader.discover(path, ReadOptions()):
        items.extend(reader.read(source, ReadOptions()))
    return items


def test_reader_follows_the_protocol(reader_and_sample):
    name, reader, _ = reader_and_sample
    assert isinstance(reader, plugins.Reader)
    assert reader.name == name and reader.description


def test_reader_sniffs_its_own_sample(reader_and_sample):
    name, reader, sample = reader_and_sample
    assert reader.sniff(sample)
    assert plugins.sniff_reader(sample) == name


def test_reader_yields_well_formed_records(reader_and_sample):
    _, reader, sample = reader_and_sample
    keys = [s.key for s in reader.discover(sample, ReadOptions())]
    assert keys and len(keys) == len(set(keys))
    assert keys == [s.key for s in reader.discover(sample, ReadOptions())]  # stable order
    items = read_all(reader, sample)
    records = [r for r in items if isinstance(r, Record)]
    assert records and all(isinstance(r, Record | Rejection) for r in items)
    ids = [r.object_id for r in records]
    assert len(ids) == len(set(ids)) and all(ids)
    for r in records:
        assert r.source_file and r.label_status in LABEL_STATUSES
        assert (r.image.size if isinstance(r.image, np.ndarray) else len(r.image)) > 0


def test_reader_round_trips_through_the_store(reader_and_sample, tmp_path):
    name, reader, sample = reader_and_sample
    n_records = sum(isinstance(r, Record) for r in read_all(reader, sample))
    store = Store(tmp_path / "store")
    first = ingest(store, [sample], fmt=name)
    assert first.stored == n_records
    assert first.read == first.stored + first.skipped_duplicate + first.n_rejected
    assert ingest(store, [sample], fmt=name).stored == 0
    assert store.dataset("objects").count_rows() == n_records


def test_reader_survives_damaged_files(reader_and_sample, tmp_path):
    """Every file of the sample truncated and byte-flipped: the reader yields rejections, never raises."""
    import shutil

    _, reader, sample = reader_and_sample
    damaged = tmp_path / "damaged"
    shutil.copytree(sample, damaged) if sample.is_dir() else shutil.copy(sample, damaged)
    rng = np.random.default_rng(0)
    for f in sorted(p for p in damaged.rglob("*") if p.is_file()):
        data = bytearray(f.read_bytes())
        if len(data) > 8:
            data = data[: len(data) * 2 // 3]
            for i in rng.integers(0, len(data), size=8):
                data[i] ^= 0xFF
        f.write_bytes(bytes(data))
    items = read_all(reader, damaged)
    assert all(isinstance(r, Record | Rejection) for r in items)
