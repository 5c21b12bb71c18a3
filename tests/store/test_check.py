"""`plankton check [--repair]` on real stores with real damage: deleted data file, deleted manifest, flipped
bytes, a stray copy of a data file."""

import json
import shutil

import pytest

from conftest import plankton
from plankton_cli.ingest import ingest
from plankton_cli.records import ReadOptions
from plankton_cli.store import Store


def objects(store: Store) -> list[tuple]:
    table = store.dataset("objects").to_table(columns=["object_id", "content_hash", "source_key"])
    return sorted(zip(*(table[c].to_pylist() for c in table.column_names)))


@pytest.fixture
def store(tmp_path, demo_images):
    """A store of 6 classes ingested as 3 runs, so objects live in several data files."""
    src = tmp_path / "images"
    shutil.copytree(demo_images, src)
    store = Store(tmp_path / "s")
    for group in (["Actinoptychus", "Bacillariophyceae"], ["Ciliophora", "Dinoflagellata"],
                  ["Noctilucales", "Tripos"]):
        for cls in group:
            ingest(store, [src / cls], options=ReadOptions(instrument="FlowCam"))
    return store


def check(store: Store, *args: str):
    proc = plankton("check", "--store", str(store.root), "--json", *args)
    return proc, json.loads(proc.stdout)


def test_an_intact_store_passes(store):
    proc, report = check(store)
    assert proc.returncode == 0, proc.stderr
    assert report["ok"] and report["files"] == len(store.files("objects")) + 1  # + manifest


def test_a_deleted_data_file_is_named_and_repair_reads_its_sources_again(store):
    before = objects(store)
    lost = store.files("objects")[1]
    lost.unlink()
    proc, report = check(store)
    assert proc.returncode == 74
    assert {"kind": "missing", "path": str(lost.relative_to(store.root)),
            "detail": "committed but not on disk"} in report["problems"]
    assert str(lost.relative_to(store.root)) in proc.stderr
    assert "manifest" in {p["kind"] for p in report["problems"]}  # its sources' rows are gone too
    proc, report = check(store, "--repair")
    assert proc.returncode == 0, proc.stderr
    assert report["ok"] and any("again" in line for line in report["repaired"])
    assert objects(store) == before
    again = ingest(store, [store.root.parent / "images"], options=ReadOptions(instrument="FlowCam"))
    assert again.stored == 0 and again.sources == {"unchanged": 105}


def test_a_deleted_manifest_is_rebuilt_from_the_data(store):
    before = objects(store)
    (store.root / "manifest.parquet").unlink()
    proc, report = check(store)
    assert proc.returncode == 74  # a committed file is missing
    proc, report = check(store, "--repair")
    assert proc.returncode == 0, proc.stderr
    assert any("rebuilt the manifest" in line for line in report["repaired"])
    # the rebuilt manifest knows every source: nothing is read again, nothing is stored twice
    again = ingest(store, [store.root.parent / "images"], options=ReadOptions(instrument="FlowCam"))
    assert again.stored == 0 and again.read == 0 and again.sources == {"unchanged": 105}
    assert objects(store) == before


def test_flipped_bytes_are_found_by_the_checksum(store):
    path = store.files("objects")[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    proc, report = check(store)
    assert proc.returncode == 74
    assert [p["kind"] for p in report["problems"] if p["path"] == str(path.relative_to(store.root))] == ["damaged"]


def test_a_stray_copy_of_a_data_file_is_reported_and_removed(store):
    path = store.files("objects")[0]
    copy = path.with_name("part-copied.parquet")
    shutil.copy(path, copy)
    assert objects(store) == objects(Store(store.root))  # readers of the committed list do not see it
    proc, report = check(store)
    assert proc.returncode == 65
    assert [p["kind"] for p in report["problems"]] == ["uncommitted"]
    proc, report = check(store, "--repair")
    assert proc.returncode == 0 and not copy.exists()


def test_a_commit_whose_staged_files_are_gone_is_refused_then_dropped_by_repair(store):
    before = objects(store)
    plan = {"adds": [[".staging/t9/objects/instrument=FlowCam/part-t9-0001.parquet",
                      "objects/instrument=FlowCam/part-t9-0001.parquet"]],
            "deletes": [str(store.files("objects")[0].relative_to(store.root))], "files": {}}
    (store.root / ".journal").mkdir(exist_ok=True)
    (store.root / ".journal" / "t9.json").write_text(json.dumps(plan))
    proc, report = check(store)
    assert proc.returncode == 74
    assert report["problems"][0]["kind"] == "journal" and "nothing was deleted" in report["problems"][0]["detail"]
    assert objects(store) == before  # the journal's delete was not applied
    proc, report = check(store, "--repair")
    assert proc.returncode == 0, proc.stderr
    assert objects(store) == before and not list((store.root / ".journal").glob("*.json"))
