"""The running totals on the first line of `committed.json` (`layout.fold_totals`, issue #22): every commit keeps
them equal to adding up the whole list, and `plankton info` answers from them what it answers from the files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import BUNDLED, plankton
from plankton_cli.core.records import ReadOptions
from plankton_cli.ingest import ingest
from plankton_cli.store import Store
from plankton_cli.store import info as info_module
from plankton_cli.store.info import store_info
from plankton_cli.store.layout import COMMITTED, committed_bytes, read_committed, read_totals, totals_of

IFCB_DAY = Path(__file__).parents[1] / "data/ifcb/pyifcb-testdata/white/D2013/D201305/D20130526"


def _images(tmp: Path, changed: bool) -> Path:
    """9 labelled FlowCam-like images of 3 classes; `changed` flips one, so a re-ingest rewrites its source's file."""
    folder = tmp / "images"
    shutil.rmtree(folder, ignore_errors=True)
    for cls in ("Ciliophora", "Tripos", "Noctilucales"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((BUNDLED / "planktonclass-demo" / "demo-images" / cls).iterdir())[:3]:
            shutil.copy(f, folder / cls / f.name)
    if changed:
        first = sorted((folder / "Tripos").iterdir())[0]
        Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first)
    return folder


def _info_from_the_files(store: Store, monkeypatch) -> dict:
    with monkeypatch.context() as m:
        m.setattr(info_module, "read_totals", lambda root: None)
        return store_info(store)


def _assert_totals_exact(store: Store, monkeypatch) -> dict:
    totals = read_totals(store.root)
    assert totals == totals_of(read_committed(store.root)), "the running totals drifted from the list"
    info = store_info(store)
    assert info == _info_from_the_files(store, monkeypatch)
    return info


def test_every_commit_keeps_the_totals_exact_and_info_answers_from_them(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    ingest(store, [_images(tmp_path, False)], options=ReadOptions(instrument="FlowCam"), lock_timeout=5)
    first = _assert_totals_exact(store, monkeypatch)
    assert first["datasets"]["objects"]["rows"] == 9 and first["datasets"]["objects"]["labels"] == 3

    ingest(store, [_images(tmp_path, True)], options=ReadOptions(instrument="FlowCam"), lock_timeout=5)
    changed = _assert_totals_exact(store, monkeypatch)  # the replaced source's old file left the totals
    assert changed["datasets"]["objects"]["rows"] == 9
    assert len(changed["datasets"]["objects"]["ingest_runs"]) == 2

    ingest(store, [IFCB_DAY], lock_timeout=5)  # another instrument, another partition, another reader
    both = _assert_totals_exact(store, monkeypatch)
    assert set(both["datasets"]["objects"]["by_instrument"]) == {"FlowCam", "IFCB"}
    assert set(both["sources_by_reader"]) == {"folders", "ifcb"}

    # `info` did not read the list: it answers the same with every data file's entry gone from it
    (store.root / COMMITTED).write_bytes(committed_bytes({}, read_totals(store.root)))
    assert store_info(store)["datasets"] == both["datasets"]


def test_a_list_from_before_the_totals_is_read_whole_and_its_next_commit_adds_them(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    ingest(store, [_images(tmp_path, False)], options=ReadOptions(instrument="FlowCam"), lock_timeout=5)
    files = read_committed(store.root)
    (store.root / COMMITTED).write_text(json.dumps({"files": files}))  # as plankton-cli wrote it before
    assert read_totals(store.root) is None
    before = store_info(store)
    assert before["datasets"]["objects"]["rows"] == 9

    ingest(store, [IFCB_DAY], lock_timeout=5)
    info = _assert_totals_exact(store, monkeypatch)
    objects = info["datasets"]["objects"]
    assert objects["by_instrument"]["FlowCam"] == 9 and objects["rows"] == 9 + objects["by_instrument"]["IFCB"] > 9


@pytest.mark.parametrize("damage", ["truncated", "stale totals"])
def test_totals_are_never_taken_from_a_list_that_is_not_whole(tmp_path, damage):
    store = Store(tmp_path / "store")
    ingest(store, [_images(tmp_path, False)], options=ReadOptions(instrument="FlowCam"), lock_timeout=5)
    listed = (store.root / COMMITTED).read_bytes()
    (store.root / COMMITTED).write_bytes(listed[:-10] if damage == "truncated" else listed + b" ")
    assert read_totals(store.root) is None
    proc = plankton("info", "--store", str(store.root))
    if damage == "truncated":
        assert proc.returncode == 74 and "check --repair" in proc.stderr
    else:  # still a whole JSON list (a space more): read whole, the same answer
        assert proc.returncode == 0, proc.stderr


def test_check_repair_rebuilds_the_totals_with_the_list(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    ingest(store, [_images(tmp_path, False)], options=ReadOptions(instrument="FlowCam"), lock_timeout=5)
    before = store_info(store)
    (store.root / COMMITTED).write_bytes(b"garbage")
    proc = plankton("check", "--repair", "--store", str(store.root))
    assert proc.returncode == 0, proc.stderr
    assert _assert_totals_exact(store, monkeypatch)["datasets"] == before["datasets"]


def test_check_finds_totals_that_disagree_with_the_list_and_repair_adds_them_up(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    ingest(store, [_images(tmp_path, False)], options=ReadOptions(instrument="FlowCam"), lock_timeout=5)
    listed = (store.root / COMMITTED).read_bytes()
    (store.root / COMMITTED).write_bytes(listed.replace(b'"rows": 9,', b'"rows": 8,', 1))
    assert store_info(store)["datasets"]["objects"]["rows"] == 8
    proc = plankton("check", "--json", "--store", str(store.root))
    assert proc.returncode == 65 and [p["kind"] for p in json.loads(proc.stdout)["problems"]] == ["totals"]
    proc = plankton("check", "--repair", "--store", str(store.root))
    assert proc.returncode == 0, proc.stderr
    assert _assert_totals_exact(store, monkeypatch)["datasets"]["objects"]["rows"] == 9
