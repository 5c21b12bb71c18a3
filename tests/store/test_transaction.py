import json
import multiprocessing
import time

import pytest

from plankton_cli.store import LockTimeout, Store
from plankton_cli.store.lock import StoreLock
from plankton_cli.core.atomic import atomic_write_bytes
from plankton_cli.store.transaction import Transaction, recover


def test_commit_moves_staged_files_into_place(tmp_path):
    txn = Transaction(tmp_path, "t1")
    txn.stage("objects/a.parquet").write_bytes(b"A")
    assert not (tmp_path / "objects/a.parquet").exists()
    txn.commit()
    assert (tmp_path / "objects/a.parquet").read_bytes() == b"A"
    assert not (tmp_path / ".staging" / "t1").exists()
    assert not list((tmp_path / ".journal").glob("*.json"))


def test_a_commit_that_only_removes_bookkeeping_files_leaves_the_list_as_it_is(tmp_path):
    """Issue 22: a predict with nothing new consumes its empty spool; the committed list (one entry per file of
    the store) is not rewritten for that."""
    txn = Transaction(tmp_path, "t1")
    txn.stage("objects/a.parquet").write_bytes(b"A")
    txn.commit()
    listed = tmp_path / "committed.json"
    before = (listed.read_bytes(), listed.stat().st_mtime_ns)
    (tmp_path / ".spool").mkdir()
    (tmp_path / ".spool" / "empty.parquet").write_bytes(b"")
    txn = Transaction(tmp_path, "t2")
    txn.delete(".spool/empty.parquet")
    txn.commit()
    assert not (tmp_path / ".spool" / "empty.parquet").exists()
    assert (listed.read_bytes(), listed.stat().st_mtime_ns) == before
    assert not (tmp_path / ".staging").exists() and not list((tmp_path / ".journal").glob("*.json"))


def test_crash_before_journal_leaves_store_untouched(tmp_path):
    (tmp_path / "objects").mkdir()
    (tmp_path / "objects/old.parquet").write_bytes(b"old")
    txn = Transaction(tmp_path, "t1")
    txn.stage("objects/new.parquet").write_bytes(b"new")
    txn.delete("objects/old.parquet")
    # the process dies here: no journal was written
    assert recover(tmp_path) == 0
    assert (tmp_path / "objects/old.parquet").read_bytes() == b"old"
    assert not (tmp_path / "objects/new.parquet").exists()
    assert not (tmp_path / ".staging").exists()


def test_crash_after_journal_is_finished_by_recover(tmp_path):
    (tmp_path / "objects").mkdir()
    (tmp_path / "objects/old.parquet").write_bytes(b"old")
    staged = tmp_path / ".staging/t1/objects/new.parquet"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"new")
    plan = {"adds": [[".staging/t1/objects/new.parquet", "objects/new.parquet"]], "deletes": ["objects/old.parquet"]}
    atomic_write_bytes(tmp_path / ".journal/t1.json", json.dumps(plan).encode())
    # the process dies before applying; a half-applied journal is the same case, since applying is idempotent
    assert recover(tmp_path) == 1
    assert (tmp_path / "objects/new.parquet").read_bytes() == b"new"
    assert not (tmp_path / "objects/old.parquet").exists()
    assert recover(tmp_path) == 0


def test_a_journal_holds_the_change_to_the_list_and_applying_it_twice_changes_nothing(tmp_path, monkeypatch):
    """Issue 22: a commit's journal holds its own entries, not the store's whole list (which grows with the
    store's age); finishing it again after a crash that came after the list was written gives the same list."""
    import plankton_cli.store.transaction as transaction
    from plankton_cli.store.layout import read_committed, read_totals

    for i in range(20):
        txn = Transaction(tmp_path, f"t{i:02d}")
        txn.stage(f"objects/{i:02d}.parquet").write_bytes(b"x" * i)
        txn.commit()
    txn = Transaction(tmp_path, "t99")
    txn.stage("objects/new.parquet").write_bytes(b"new")
    txn.delete("objects/00.parquet")
    monkeypatch.setattr(transaction, "_apply", lambda root, journal: None)  # killed right after the commit point
    txn.commit()
    monkeypatch.undo()
    journal = tmp_path / ".journal" / "t99.json"
    plan = json.loads(journal.read_bytes())
    assert "files" not in plan and list(plan["set"]) == ["objects/new.parquet"]
    assert plan["deletes"] == ["objects/00.parquet"]

    assert recover(tmp_path) == 1
    after = read_committed(tmp_path), read_totals(tmp_path)
    assert sorted(after[0]) == sorted({f"objects/{i:02d}.parquet" for i in range(1, 20)} | {"objects/new.parquet"})
    assert after[1]["objects"]["files"] == 20
    atomic_write_bytes(journal, json.dumps(plan).encode())  # the same journal again: its files are in place
    assert recover(tmp_path) == 1
    assert (read_committed(tmp_path), read_totals(tmp_path)) == after


def _hold_lock(root, seconds, ready):
    with StoreLock(root, timeout=5):
        ready.set()
        time.sleep(seconds)


def test_second_writer_times_out_while_first_holds_the_lock(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(tmp_path, 3, ready))
    holder.start()
    try:
        assert ready.wait(10)
        t0 = time.monotonic()
        with pytest.raises(LockTimeout, match="locked by another writer"):
            with Store(tmp_path).locked(timeout=0.5):
                pass
        assert time.monotonic() - t0 >= 0.5
    finally:
        holder.join()
    with Store(tmp_path).locked(timeout=1):  # released when the holder exits
        pass


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(tmp_path, 60, ready))
    holder.start()
    assert ready.wait(10)
    holder.kill()
    holder.join()
    with Store(tmp_path).locked(timeout=2):
        pass
