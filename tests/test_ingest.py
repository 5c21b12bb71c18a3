"""Ingest end to end through the real readers and the real store."""

import io
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import plankton
from plankton_cli.ingest import ingest
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store
from plankton_cli.store.images import decode


def snapshot(store_dir) -> list[tuple]:
    """The store's content, independent of file names and row order."""
    if not (store_dir / "objects").exists():
        return []
    table = ds.dataset(store_dir / "objects", format="parquet", partitioning="hive").to_table(
        columns=["object_id", "content_hash", "label", "instrument", "source_key", "height", "width"])
    return sorted(zip(*[table[c].to_pylist() for c in table.column_names]))


def test_ingest_uvp6_vignettes_with_labels(tmp_path, uvp6):
    store = Store(tmp_path / "s")
    summary = ingest(store, [uvp6], options=ReadOptions(instrument="UVP6"))
    assert summary.read == summary.stored == 1250
    table = store.dataset("objects").to_table()
    counts = dict(zip(*np.unique(table["label"].to_pylist(), return_counts=True)))
    assert counts["Copepoda__6666"] == 200 and counts["detritus__8888"] == 250
    assert set(table["instrument"].to_pylist()) == {"UVP6"}
    # the stored bytes are the source file's bytes
    row = table.slice(0, 1).to_pylist()[0]
    src = uvp6.parent / row["object_id"]  # <collection = the folder's name>/<path in it>
    assert row["image"]["bytes"] == src.read_bytes()
    assert (row["height"], row["width"]) == np.asarray(Image.open(src)).shape[:2]


def test_reingest_is_a_no_op(tmp_path, demo_images):
    store = Store(tmp_path / "s")
    first = ingest(store, [demo_images])
    before = snapshot(store.root)
    files_before = store.files("objects")
    second = ingest(store, [demo_images])
    assert first.stored == 105 and second.stored == 0 and second.read == 0
    assert second.sources["unchanged"] == 105
    assert snapshot(store.root) == before
    assert store.files("objects") == files_before


def test_changed_source_supersedes_its_old_row(tmp_path, demo_images):
    src = tmp_path / "images"
    shutil.copytree(demo_images, src)
    store = Store(tmp_path / "s")
    ingest(store, [src])
    victim = sorted((src / "Tripos").iterdir())[0]
    old = {r[0]: r for r in snapshot(store.root)}
    img = np.asarray(Image.open(victim).convert("L"))[::-1].copy()  # new content, same name
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    victim.write_bytes(buf.getvalue())
    summary = ingest(store, [src])
    assert summary.sources["changed"] == 1 and summary.stored == 1
    new = {r[0]: r for r in snapshot(store.root)}
    assert new.keys() == old.keys()  # one row per object, none duplicated
    key = f"{src.name}/Tripos/{victim.name}"  # qualified by the folder given (its collection)
    assert new[key][1] != old[key][1]
    assert all(new[k] == old[k] for k in new if k != key)
    stored = store.dataset("objects").to_table(filter=ds.field("object_id") == key).to_pylist()[0]
    assert np.array_equal(decode(stored["image"]["bytes"]), img)


def test_touched_but_unchanged_source_is_not_read_again(tmp_path, demo_images):
    src = tmp_path / "images"
    shutil.copytree(demo_images, src)
    store = Store(tmp_path / "s")
    ingest(store, [src])
    victim = next((src / "Tripos").iterdir())
    os.utime(victim, (time.time() + 100, time.time() + 100))
    summary = ingest(store, [src])
    assert summary.read == 0 and summary.sources["unchanged"] == 105


def test_rejections_are_reported_stored_and_counted(tmp_path, demo_images):
    src = tmp_path / "images"
    shutil.copytree(demo_images, src)
    bad = src / "Tripos" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    store = Store(tmp_path / "s")
    summary = ingest(store, [src])
    assert summary.read == 106 and summary.stored == 105 and summary.n_rejected == 1
    assert summary.read == summary.stored + summary.skipped_duplicate + summary.n_rejected
    rej = store.dataset("rejections").to_table().to_pylist()
    assert len(rej) == 1 and rej[0]["source_file"].endswith("broken.jpg")
    # --retry-rejected reads it again once it is fixed
    shutil.copy(next((src / "Ciliophora").iterdir()), bad)
    again = ingest(store, [src], retry_rejected=True)
    assert again.sources["changed"] == 1 and again.stored == 1


def test_same_object_from_two_sources_is_skipped_as_duplicate(tmp_path, demo_images):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(demo_images, a)
    shutil.copytree(demo_images, b)
    store = Store(tmp_path / "s")
    ingest(store, [a])
    summary = ingest(store, [b], options=ReadOptions(collection="a"))  # same collection and paths = same ids
    assert summary.read == 105 and summary.skipped_duplicate == 105 and summary.stored == 0
    c = tmp_path / "c"
    shutil.copytree(demo_images, c)
    other = ingest(store, [c])  # collection "c": other objects, even with the same relative paths
    assert other.read == other.stored == 105


def test_cli_ingest_json_strict_and_exit_codes(tmp_path, demo_images):
    src = tmp_path / "images"
    shutil.copytree(demo_images, src)
    (src / "Tripos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    store = tmp_path / "s"
    proc = plankton("ingest", str(src), "--store", str(store), "--json", "--strict")
    assert proc.returncode == 65, proc.stderr
    import json

    data = json.loads(proc.stdout)
    assert data["read"] == data["stored"] + data["skipped_duplicate"] + data["rejected"] == 106
    assert "broken.png" in proc.stderr  # the rejection is logged with its file
    assert plankton("ingest", str(src), "--store", str(store), "--format", "nope").returncode == 2


def test_cli_lock_timeout_exits_75(tmp_path, demo_images):
    store = tmp_path / "s"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from plankton_cli.store import Store\n"
        f"with Store({str(store)!r}).locked():\n    print('locked', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = plankton("ingest", str(demo_images), "--store", str(store), "--lock-timeout", "0.5")
        assert proc.returncode == 75
        assert "locked by another writer" in proc.stderr
    finally:
        holder.kill()
        holder.wait()


def test_store_reads_back_in_pyarrow_pandas_duckdb_and_hf_datasets(tmp_path, demo_images):
    store = Store(tmp_path / "s")
    ingest(store, [demo_images], options=ReadOptions(instrument="FlowCam"))
    table = ds.dataset(store.root / "objects", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 105 and set(table["instrument"].to_pylist()) == {"FlowCam"}

    import pandas as pd

    df = pd.read_parquet(store.root / "objects")
    assert len(df) == 105 and df["label"].nunique() == 6

    import duckdb

    n, labels = duckdb.sql(
        f"select count(*), count(distinct label) from read_parquet('{store.root}/objects/**/*.parquet', "
        "hive_partitioning=true) where instrument = 'FlowCam'").fetchall()[0]
    assert (n, labels) == (105, 6)

    datasets = pytest.importorskip("datasets")
    hf = datasets.load_dataset("parquet", data_files=f"{store.root}/objects/**/*.parquet", split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert isinstance(hf.features["image"], datasets.Image)
    first = hf[0]
    assert first["image"].size == (first["width"], first["height"])


def test_parquet_layout_follows_the_measured_settings(tmp_path, uvp6):
    store = Store(tmp_path / "s")
    ingest(store, [uvp6], options=ReadOptions(instrument="UVP6"))
    (path,) = store.files("objects")
    assert path.parent.name == "instrument=UVP6"
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 5  # 1,250 rows in groups of 256
    columns = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i) for i in
               range(meta.num_columns)}
    assert columns["image.bytes"].compression == "UNCOMPRESSED"
    assert columns["object_id"].compression == "ZSTD"
    assert "RLE_DICTIONARY" in columns["label"].encodings
    assert "RLE_DICTIONARY" not in columns["image.bytes"].encodings


@pytest.mark.parametrize("seed", range(12))
def test_kill_minus_nine_at_a_random_moment_then_rerun_equals_a_clean_run(tmp_path, uvp6, seed):
    # One clean reference run, shared by all seeds through a cache file.
    reference = tmp_path.parent / "clean-reference.txt"
    if not reference.exists():
        clean = Store(tmp_path / "clean")
        ingest(clean, [uvp6], options=ReadOptions(instrument="UVP6"))
        reference.write_text(repr(snapshot(clean.root)))
    store = tmp_path / "s"
    args = [sys.executable, "-m", "plankton_cli", "-q", "ingest", str(uvp6), "--instrument", "UVP6",
            "--store", str(store), "--commit-every", "97"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.Random(seed).uniform(0.3, 3.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(args, check=True, capture_output=True)
    assert repr(snapshot(store)) == reference.read_text()
    assert not (store / ".staging").exists() and not list((store / ".journal").glob("*.json"))
