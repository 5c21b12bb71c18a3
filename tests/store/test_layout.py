"""The store's layout: partition names that every reader decodes alike, and the committed file list."""

import shutil
from pathlib import Path

import pyarrow.dataset as ds

from plankton_cli.prepare.data.dataset import list_row_groups
from plankton_cli.train.finetune import labelled_pool
from plankton_cli.ingest import ingest
from plankton_cli.prepare.pad_store import pad_dataset, padding_rules
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store
from plankton_cli.store.layout import partition_dir, partition_values

ODD = "FlowCam macro/2% = x"


def test_partition_values_round_trip_through_the_folder_name():
    folder = partition_dir(["instrument"], {"instrument": ODD})
    assert "/" not in folder and " " not in folder
    assert partition_values(Path("/s/objects") / folder / "part-1.parquet", Path("/s/objects")) == {"instrument": ODD}


def test_an_instrument_with_a_space_is_selected_by_training_and_pad(tmp_path, demo_images):
    """Regression: the writer URL-encodes partition values and data/ did not decode them, so
    `finetune --instrument "FlowCam macro"` selected nothing."""
    store = Store(tmp_path / "s")
    ingest(store, [demo_images], options=ReadOptions(instrument="FlowCam macro"))
    (path,) = store.files("objects")
    assert path.parent.name == "instrument=FlowCam%20macro"
    groups = list_row_groups(store.root / "objects", instruments=["FlowCam macro"])
    assert sum(g.n_rows for g in groups) == 105
    pool = labelled_pool(store.root / "objects", ["FlowCam macro"], None)
    assert len(pool.object_ids) == 105 and set(pool.instruments) == {"FlowCam macro"}
    pad_dataset(store, size=32)
    assert padding_rules(store.root / "padded") == ["FlowCam macro: pad-v1 crop=0,0,0,0 size=32"]
    table = ds.dataset(store.root / "padded", format="parquet", partitioning="hive").to_table(columns=["instrument"])
    assert set(table["instrument"].to_pylist()) == {"FlowCam macro"}  # pyarrow decodes the same way


def test_readers_of_the_store_see_only_committed_files(tmp_path, demo_images):
    store = Store(tmp_path / "s")
    ingest(store, [demo_images / "Tripos"], options=ReadOptions(instrument="FlowCam"))
    (path,) = store.files("objects")
    n = store.dataset("objects").count_rows()
    # what a crash between renaming a commit's files into place and updating the list leaves behind
    shutil.copy(path, path.with_name("part-not-yet-committed.parquet"))
    assert store.files("objects") == [path]
    assert store.dataset("objects").count_rows() == n
    assert sum(g.n_rows for g in list_row_groups(store.root / "objects")) == n
