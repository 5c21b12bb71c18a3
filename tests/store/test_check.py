"""`plankton check [--repair]` on real stores with real damage: deleted data file, deleted manifest, flipped
bytes, a stray copy of a data file."""

import json
import shutil

import pytest

from conftest import plankton
from plankton_cli.ingest import ingest
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store


def objects(store: Store) -> list[tuple]:
    table = store.dataset("objects").to_table(columns=["object_id", "content_hash", "source_key", "instrument"])
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


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_unreadable_committed_list_stops_every_command_in_one_line_and_repair_rebuilds_it(store, damage):
    before = objects(store)
    listed = (store.root / "committed.json").read_bytes()
    (store.root / "committed.json").write_bytes(b"\x00\xffnot json" if damage == "garbage" else listed[:len(listed) // 2])
    for args in (["info"], ["ingest", str(store.root.parent / "images" / "Tripos")], ["check"]):
        proc = plankton(*args, "--store", str(store.root))
        assert proc.returncode == 74, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "committed.json" in lines[0] and "check --repair" in lines[0], (args, lines)
        assert "Traceback" not in proc.stderr and "a bug" not in proc.stderr
    proc, report = check(store, "--repair")
    assert proc.returncode == 0, proc.stderr
    assert any("rebuilt committed.json" in line for line in report["repaired"])
    assert objects(store) == before
    assert check(store)[0].returncode == 0


def test_file_names_stay_short_however_often_a_source_is_superseded(tmp_path, demo_images):
    """The probe's case: one image changed and ingested again 12 times. Names grew by `-r<run id>` with each
    rewrite of the file holding the other images' rows, passed 255 bytes at the 8th, and every later ingest
    failed."""
    src = tmp_path / "images"
    shutil.copytree(demo_images / "Tripos", src / "Tripos")
    store = Store(tmp_path / "s")
    first = ingest(store, [src])
    changing = sorted((src / "Tripos").iterdir())[0]
    for n in range(12):
        data = bytearray(changing.read_bytes())
        data[-3] ^= 0xFF  # inside the JPEG's last entropy-coded bytes: still an image, other content
        changing.write_bytes(bytes(data))
        summary = ingest(store, [src])
        assert summary.sources["changed"] == 1, summary.sources
        names = [p.name for p in store.root.rglob("*.parquet")]
        assert max(len(n.encode()) for n in names) <= 50, names
    assert objects(store) and len(objects(store)) == first.stored
    proc, report = check(store)
    assert proc.returncode == 0 and report["ok"], proc.stderr


def test_over_long_names_of_an_older_store_are_flagged_and_repair_renames_them(store, monkeypatch):
    """A store written before names were bounded: its long names are still read; check flags them, repair gives
    them short names and the store stays whole."""
    from plankton_cli.store.transaction import Transaction

    real = Transaction.new_name

    def long_name(self, folder):  # the old scheme: each rewrite's name carries the name it replaces
        return real(self, folder).replace(".parquet", f"-r{self.id}" * 4 + ".parquet")

    before = objects(store)
    src = store.root.parent / "images"
    changed = sorted((src / "Tripos").iterdir())[0]
    data = bytearray(changed.read_bytes())
    data[-3] ^= 0xFF
    changed.write_bytes(bytes(data))
    with monkeypatch.context() as m:
        m.setattr(Transaction, "new_name", long_name)
        ingest(store, [src], options=ReadOptions(instrument="FlowCam"))
    long = [p for p in store.files("objects") if len(p.name) > 100]
    assert long and len(objects(store)) == len(before)  # read as any other file
    proc, report = check(store)
    assert proc.returncode == 65
    assert {p["path"] for p in report["problems"] if p["kind"] == "long-name"} == \
        {str(p.relative_to(store.root)) for p in long}
    rows = objects(store)
    proc, report = check(store, "--repair")
    assert proc.returncode == 0, proc.stderr
    assert objects(store) == rows and all(len(p.name) <= 100 for p in store.root.rglob("*.parquet"))
    again = ingest(store, [src], options=ReadOptions(instrument="FlowCam"))
    assert again.stored == 0 and again.sources == {"unchanged": 105}


@pytest.mark.parametrize("target", ["predictions", "objects", "manifest.parquet", "manifest", ".staging",
                                    "committed.json", "../escaped", "/tmp/abs", "a/b", "Padded"])
def test_pad_refuses_a_target_that_is_not_its_own_dataset_before_writing_anything(store, target):
    def everything():
        return sorted((str(p.relative_to(store.root.parent)), p.stat().st_mtime_ns)
                      for p in store.root.parent.rglob("*") if p.is_file() and p.name != ".lock")

    before = everything()
    proc = plankton("pad", "--store", str(store.root), "--target", target)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]  # after Click's usage line
    assert len(errors) == 1 and repr(target) in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert everything() == before


def test_dataset_names_are_checked_where_the_store_reads_them(store):
    from plankton_cli.core.errors import UsageError
    from plankton_cli.store.layout import dataset_name

    assert dataset_name("padded-224") == "padded-224" and dataset_name("padded", written_by="pad") == "padded"
    for bad in ("../escaped", "journal", "_stats", "", "x" * 101):
        with pytest.raises(UsageError):
            store.files(bad)
    proc = plankton("stats", "--store", str(store.root), "--dataset", "../objects")
    assert proc.returncode == 2 and "'../objects'" in proc.stderr and "Traceback" not in proc.stderr
    # a dataset an older store holds under a name no longer allowed is still read
    with store.locked():
        txn = store.transaction()
        shutil.copyfile(store.files("objects")[0], txn.stage("Old_Padded/part-old.parquet"))
        txn.commit()
    assert [p.name for p in store.files("Old_Padded")] == ["part-old.parquet"]
    assert plankton("info", "--store", str(store.root)).returncode == 0


def test_a_garbage_journal_stops_writers_in_one_line_and_repair_sets_it_aside(store):
    before = objects(store)
    (store.root / ".journal").mkdir(exist_ok=True)
    (store.root / ".journal" / "t0.json").write_text('{"adds": [["x"')  # truncated
    proc = plankton("ingest", str(store.root.parent / "images" / "Tripos"), "--store", str(store.root))
    assert proc.returncode == 74 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "t0.json" in proc.stderr and "check --repair" in proc.stderr
    proc, report = check(store)
    assert proc.returncode == 74 and report["problems"][0]["kind"] == "journal"
    proc, report = check(store, "--repair")
    assert proc.returncode == 0, proc.stderr
    assert any("unreadable journal: t0.json" in line for line in report["repaired"])
    assert (store.root / ".quarantine" / "t0" / "t0.json").exists() and objects(store) == before
