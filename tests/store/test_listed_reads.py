"""Readers that took the committed file list just before a writer committed and deleted a file of it (issue 10):
they read the new state (`layout.read_listed` / `iter_listed`); a file the list names that is gone from disk is
exit 74 naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import BUNDLED, plankton
from plankton_cli.prepare.data.dataset import list_row_groups
from plankton_cli.core.errors import StoreIOError
from plankton_cli.store import info as info_module
from plankton_cli.store.info import store_info
from plankton_cli.ingest import ingest
from plankton_cli.infer.predict import _store_items
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store, layout


def _images(tmp: Path, changed: bool) -> Path:
    """6 images of 2 classes; `changed` flips one in place, so a re-ingest supersedes its source and rewrites the
    file holding the other rows (deleting the old file)."""
    folder = tmp / "images"
    shutil.rmtree(folder, ignore_errors=True)
    demo = BUNDLED / "planktonclass-demo" / "demo-images"
    for cls in ("Ciliophora", "Tripos"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((demo / cls).iterdir())[:3]:
            shutil.copy(f, folder / cls / f.name)
    if changed:
        first = sorted((folder / "Tripos").iterdir())[0]
        Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first)
    return folder


def _ingest(store: Store, folder: Path) -> None:
    ingest(store, [folder], options=ReadOptions(instrument="FlowCam"), lock_timeout=5)


@pytest.fixture
def raced(tmp_path, monkeypatch) -> tuple[Store, list[Path]]:
    """A store and the `objects` list a reader took before the last commit, which deleted a file of it."""
    store = Store(tmp_path / "store")
    _ingest(store, _images(tmp_path, False))
    stale = layout.dataset_files(store.root / "objects")
    _ingest(store, _images(tmp_path, True))
    assert any(not f.exists() for f in stale), "the second commit deleted a file the first list names"
    return store, stale


def _list_before_the_commit(monkeypatch, stale: list[Path]) -> None:
    """The next listing of `objects` is the one taken before the commit (the race, made certain)."""
    real = layout.dataset_files
    calls = {"objects": 0}

    def listing(dataset_dir):
        if Path(dataset_dir).name == "objects" and calls["objects"] == 0:
            calls["objects"] += 1
            return list(stale)
        return real(dataset_dir)

    monkeypatch.setattr(layout, "dataset_files", listing)


def _groups(store: Store) -> list[tuple[str, int, list[int]]]:
    return [(g.path, g.index, g.rows.tolist()) for g in list_row_groups(store.root / "objects")]


def test_readers_with_a_list_from_before_a_commit_read_the_new_state(raced, monkeypatch):
    store, stale = raced
    ids = sorted(store.dataset("objects").to_table(columns=["object_id"])["object_id"].to_pylist())
    assert len(ids) == 6
    groups = _groups(store)
    info = store_info(store)["datasets"]["objects"]

    _list_before_the_commit(monkeypatch, stale)
    assert _groups(store) == groups
    # info answers from the totals on the committed list's first line, listing nothing; without them it lists
    monkeypatch.setattr(info_module, "read_totals", lambda root: None)
    _list_before_the_commit(monkeypatch, stale)
    assert store_info(store)["datasets"]["objects"] == info
    monkeypatch.undo()
    _list_before_the_commit(monkeypatch, stale)
    items = [item.object_id for item in _store_items(store, instrument=None, since=None, exclude=set())]
    assert sorted(items) == ids, "each object once, from the new files"
    _list_before_the_commit(monkeypatch, stale)
    table = store.read("objects", lambda d: d.to_table(columns=["object_id"]))
    assert sorted(table["object_id"].to_pylist()) == ids


def test_a_listed_file_missing_from_disk_is_exit_74_naming_it(tmp_path):
    store = Store(tmp_path / "store")
    _ingest(store, _images(tmp_path, False))
    lost = layout.dataset_files(store.root / "objects")[0]
    lost.unlink()
    with pytest.raises(StoreIOError, match=lost.name) as caught:
        list_row_groups(store.root / "objects")
    assert caught.value.exit_code == 74 and "plankton check --repair" in str(caught.value)
    with pytest.raises(StoreIOError, match=lost.name):
        list(_store_items(store, instrument=None, since=None, exclude=set()))
    # `info` answers from the committed list's stats without opening data files (a nightly step: issue #22);
    # `check` is the command that reads every file, and names the lost one
    proc = plankton("check", "--store", str(store.root))
    assert proc.returncode == 74, proc.stderr
    assert lost.name in proc.stdout + proc.stderr


def test_a_missing_file_outside_the_list_is_not_blamed_on_the_store(tmp_path):
    store = Store(tmp_path / "store")
    _ingest(store, _images(tmp_path, False))
    with pytest.raises(FileNotFoundError):
        layout.read_listed(store.root / "objects", lambda files: pq.read_table(tmp_path / "elsewhere.parquet"))
