"""SQLite-style fault injection: ingest, pad, features and `predict --to store` with the k-th store operation failing.

For every k, the k-th write / fsync / rename / unlink of a run fails with EIO, ENOSPC or EPERM, or the process
"dies" there (that operation and every later one fails, so no cleanup reaches the disk: what a kill -9 leaves).
Right after the fault, readers must see a consistent store (no object twice); after the next clean run, the store
must equal one that never saw a fault. The real kill -9 of a whole process is tests/test_ingest.py's.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import BUNDLED
from plankton_cli.prepare.features.dataset import compute_features
from plankton_cli.ingest import ingest
from plankton_cli.prepare.pad_store import pad_dataset
from plankton_cli.infer.predict import predict
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store
from plankton_cli.store.layout import COMMITTED, MANIFEST_FILES, file_stats, read_committed
from test_predict import CLASSES, PADDING, tiny_model

ERRNOS = (errno.EIO, errno.ENOSPC, errno.EPERM)

# A "killed" run leaves its ParquetWriter open; garbage collection closes it while the fault is still installed, so
# its close raises Killed inside __del__. That is the simulated kill doing its job, not a leak worth a warning.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class Killed(BaseException):
    """The process died at this operation (a BaseException, so no `except Exception` handles it)."""


class Faults:
    """Counts the store's file-system operations while installed; fails the k-th (or, `kill`, the k-th and all
    after it)."""

    def __init__(self, monkeypatch, root: Path, k: int, mode: int | str | None):
        self.root, self.k, self.mode, self.n = str(root), k, mode, 0
        self.fired = False

        def guard(fn, path_arg: bool = True):
            def wrapper(*args, **kwargs):
                if not path_arg or kwargs.get("dir_fd") is not None or str(args[0]).startswith(self.root):
                    self.hit(fn.__name__)
                return fn(*args, **kwargs)
            wrapper.__name__ = fn.__name__
            return wrapper

        for name in ("replace", "rename", "unlink", "remove", "rmdir"):
            monkeypatch.setattr(os, name, guard(getattr(os, name)))
        monkeypatch.setattr(os, "fsync", guard(os.fsync, path_arg=False))
        monkeypatch.setattr(Path, "write_bytes", guard(Path.write_bytes, path_arg=False))
        for name in ("write_table", "write_batch", "close"):
            monkeypatch.setattr(pq.ParquetWriter, name, guard(getattr(pq.ParquetWriter, name), path_arg=False))

    def hit(self, op: str) -> None:
        if self.mode is None:
            self.n += 1
            return
        self.n += 1
        if self.mode == "kill" and self.n >= self.k:
            self.fired = True
            raise Killed(op)
        if self.n == self.k:
            self.fired = True
            raise OSError(self.mode, f"injected {errno.errorcode[self.mode]} at {op} #{self.k}")


def faulted(monkeypatch, template: Store, work: Path, mode: int | str, run) -> Iterator[tuple[int, Store, bool]]:
    """For k = 1, 2, ...: (k, a copy of `template` on which `run(store)` met `mode` at its k-th store operation,
    whether the fault fired). The last copy is the one where `run` made fewer than k operations (fired is False).
    Each copy is removed once the caller is done with it."""
    expected = Killed if mode == "kill" else (OSError, Killed)
    k = 0
    while True:
        k += 1
        store = Store(shutil.copytree(template.root, work / f"{mode}-{k}"))
        with monkeypatch.context() as m:
            faults = Faults(m, store.root, k, mode)
            try:
                run(store)
            except expected:
                pass
        yield k, store, faults.fired
        shutil.rmtree(store.root)
        if not faults.fired:
            return


def _images(tmp: Path, changed: bool) -> Path:
    """12 real images of 3 classes; `changed` alters one image's pixels and adds one, so a re-ingest supersedes
    a source (rewriting a data file that holds other sources' rows) and adds rows."""
    folder = tmp / "images"
    shutil.rmtree(folder, ignore_errors=True)
    demo = BUNDLED / "planktonclass-demo" / "demo-images"
    for cls in ("Actinoptychus", "Ciliophora", "Tripos"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((demo / cls).iterdir())[:4]:
            shutil.copy(f, folder / cls / f.name)
    if changed:
        first = sorted((folder / "Tripos").iterdir())[0]
        img = Image.open(first).convert("L").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img.save(first.with_suffix(".png"))
        first.unlink()
        shutil.copy(sorted((demo / "Tripos").iterdir())[5], folder / "Tripos" / "extra.jpg")
    return folder


def _ingest(store: Store, folder: Path) -> None:
    ingest(store, [folder], options=ReadOptions(instrument="FlowCam macro"), commit_every=5, lock_timeout=5)


def _pad(store: Store, folder: Path) -> None:
    pad_dataset(store, size=32, lock_timeout=5)


def _features(store: Store, folder: Path) -> None:
    compute_features(store, lock_timeout=5)


def _predict(store: Store, folder: Path, model: Path) -> None:
    predict(model, store=store, to=["store"], force=True, batch_size=4, lock_timeout=5)


def content(root: Path) -> dict:
    """What the store holds, independent of file names, run ids and times."""
    store = Store(root)
    here = str(root.parent)  # source paths differ between cases only by the case's folder

    def same_anywhere(row) -> tuple:
        return tuple(v.replace(here, "") if isinstance(v, str) else v for v in row)

    out = {}
    keys = {"objects": ["object_id", "content_hash", "label", "instrument", "source_key"],
            "padded": ["object_id", "content_hash", "pad_settings", "height"],
            "features": ["object_id", "content_hash", "features_settings", "area", "perimeter"],
            "predictions": ["object_id", "model_hash", "label", "instrument"]}
    for name, columns in keys.items():
        rows = store.dataset(name).to_table(columns=columns).to_pylist() if store.files(name) else []
        out[name] = sorted(same_anywhere(r.values()) for r in rows)
    rejections = store.dataset("rejections").to_table().to_pylist() if store.files("rejections") else []
    out["rejections"] = sorted(Counter(same_anywhere((r["command"], r["object_id"], r["reason"]))
                                       for r in rejections).items())
    manifest = [m for name in MANIFEST_FILES if (root / name).exists() for m in pq.read_table(root / name).to_pylist()]
    out["manifest"] = sorted(same_anywhere((m["source_key"], m["checksum"], m["n_read"], m["n_stored"],
                                            m["n_rejected"])) for m in manifest)
    return out


def assert_stats_match(root: Path) -> None:
    """Every committed data file's stats in the list (what nightly steps select files by) are the file's own."""
    for rel, entry in (read_committed(root) or {}).items():
        if rel not in MANIFEST_FILES:  # replaced under their own names; only writers read them, after recover()
            assert entry["stats"] == file_stats(root / rel), rel


def assert_consistent(root: Path) -> None:
    """What readers of the committed file list see right after a fault: every listed file there with its stats,
    nothing twice."""
    store = Store(root)
    files = read_committed(root) or {}
    for rel, entry in files.items():
        if rel not in MANIFEST_FILES:  # replaced under their own names; only writers read them, after recover()
            assert (root / rel).stat().st_size == entry["size"], rel
    assert_stats_match(root)
    for name, key in (("objects", ["object_id"]), ("padded", ["object_id"]), ("features", ["object_id"]),
                      ("predictions", ["object_id", "model_hash"])):
        if store.files(name):
            rows = store.dataset(name).to_table(columns=key).to_pylist()
            assert len(rows) == len({tuple(r.values()) for r in rows}), f"{name}: a row twice"


def assert_clean(root: Path) -> None:
    """After a successful run: no staging, journal or spool left; the file list is exactly the files on disk."""
    assert not (root / ".staging").exists()
    assert not list((root / ".journal").glob("*")) if (root / ".journal").exists() else True
    assert not [p for p in (root / ".spool").rglob("*") if p.is_file()] if (root / ".spool").exists() else True
    listed = set(json.loads((root / COMMITTED).read_text())["files"])
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*.parquet") if not p.relative_to(root).parts[0]
               .startswith(".")}
    assert listed == on_disk
    assert_stats_match(root)


@pytest.fixture(autouse=True)
def no_flush(monkeypatch):
    """fsync is counted and fails like any operation, but not performed: without a power cut nothing a test can
    see depends on it, and on a busy disk it is most of this test's time."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's forward pass is 10x faster on one thread than on a busy machine's oversubscribed pool."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "fold-0", CLASSES, PADDING)


def _scenario(command: str, model: Path):
    """(setup steps on the original images, the step under test on the changed images) for `command`."""
    predict_step = lambda store, folder: _predict(store, folder, model)  # noqa: E731
    if command == "ingest":
        return [_ingest], _ingest
    if command == "pad":
        return [_ingest, _pad, lambda store, folder: _ingest(store, _images(folder.parent, True))], _pad
    if command == "features":  # the changed image's old row is dropped, the added image's row is new
        return [_ingest, _features, lambda store, folder: _ingest(store, _images(folder.parent, True))], _features
    return [_ingest, predict_step], predict_step


@pytest.mark.parametrize("command", ["ingest", "pad", "features", "predict"])
def test_every_fault_at_every_operation_then_a_clean_run_equals_a_clean_store(tmp_path, monkeypatch, model,
                                                                               command):
    setup, step = _scenario(command, model)
    template = Store(tmp_path / "template")
    folder = _images(tmp_path, False)
    for before in setup:
        before(template, folder)
    folder = _images(tmp_path, True)  # every case starts from a copy of the template and runs on these images
    reference = Store(shutil.copytree(template.root, tmp_path / "reference"))
    step(reference, folder)
    expected = content(reference.root)
    assert expected[{"ingest": "objects", "pad": "padded", "features": "features", "predict": "predictions"}[command]]

    for mode in (*ERRNOS, "kill"):
        for k, store, fired in faulted(monkeypatch, template, tmp_path, mode, lambda store: step(store, folder)):
            if fired:
                assert_consistent(store.root)
                step(store, folder)  # the next, clean run
            assert content(store.root) == expected, f"{command}: fault {mode} at operation {k}"
            assert_clean(store.root)
        assert k > 10, f"{command} made only {k - 1} store operations: is the fault injection still installed?"


def test_io_error_after_the_journal_loses_no_rows(tmp_path, monkeypatch):
    """The issue's repro: a changed source is superseded, renaming into `objects/` fails after the journal is
    durable (chattr +i, disk full); the run fails; two more runs must end with every row, not 8 of 11."""
    store = Store(tmp_path / "store")
    _ingest(store, _images(tmp_path, False))
    folder = _images(tmp_path, True)
    real_replace = os.replace

    def immutable_objects(src, dst, *a, **kw):
        if "/objects/" in str(dst) and "/.staging/" in str(src):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(dst))
        return real_replace(src, dst, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", immutable_objects)
        with pytest.raises(PermissionError):
            ingest(store, [folder], options=ReadOptions(instrument="FlowCam macro"), lock_timeout=5)
        assert list((store.root / ".journal").glob("*.json")), "the commit point was passed"
        with pytest.raises(PermissionError):  # still immutable: recover refuses again, deleting nothing
            ingest(store, [folder], options=ReadOptions(instrument="FlowCam macro"), lock_timeout=5)
    assert_consistent(store.root)
    _ingest(store, folder)
    _ingest(store, folder)
    reference = Store(tmp_path / "reference")
    _ingest(reference, _images(tmp_path, False))
    _ingest(reference, _images(tmp_path, True))
    assert content(store.root) == content(reference.root)
    assert Store(store.root).dataset("objects").count_rows() == 14  # 12, one changed (new name), one added


def test_the_issue_repro_on_ecotaxa_import_test(tmp_path, monkeypatch):
    """Verbatim from issue 10: ingest `import_test`, change one category in one TSV, make `objects/` refuse
    renames (chattr +i), ingest (fails), allow them again, ingest twice: every row must still be there."""
    from conftest import shared_data

    bundle = tmp_path / "import_test"
    shutil.copytree(shared_data("ecotaxa", "ecotaxa-back-qa", "import_test"), bundle)
    store = Store(tmp_path / "store")
    first = ingest(store, [bundle], fmt="ecotaxa")
    tsv = bundle / "m106_mn01_n1_sml" / "ecotaxa_m106_mn01_n1_sml.tsv"
    tsv.write_text(tsv.read_text().replace("\tOncaeidae\t", "\tCopepoda\t", 1))
    real_replace = os.replace

    def immutable_objects(src, dst, *a, **kw):
        if f"{os.sep}objects{os.sep}" in str(dst):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(dst))
        return real_replace(src, dst, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", immutable_objects)
        with pytest.raises(PermissionError):
            ingest(store, [bundle], fmt="ecotaxa")
        assert list((store.root / ".journal").glob("*.json")), "the failure came after the commit point"
    ingest(store, [bundle], fmt="ecotaxa")
    again = ingest(store, [bundle], fmt="ecotaxa")
    table = store.dataset("objects").to_table(columns=["object_id", "label"])
    assert table.num_rows == first.stored == 11  # the issue saw 8
    assert again.sources == {"unchanged": sum(first.sources.values())}
    assert "Copepoda" in table["label"].to_pylist()


# --- check --repair under faults (issue 19) ------------------------------------------------------------------------


def _ingest_plain(store: Store, folder: Path) -> None:
    """Ingest without read options: what `check --repair` uses when it reads a source again."""
    ingest(store, [folder], commit_every=5, lock_timeout=5)


def test_a_garbage_journal_beside_a_committed_one_loses_no_commit(tmp_path, monkeypatch):
    """The probe's case: ingest killed after its commit point (every k where a journal is left), then a garbage
    journal beside it. Repair must finish the real commit (store as a plain recover leaves it), set the garbage
    aside and report it; the next ingest then ends with every row. Before, repair "dropped an unfinishable
    commit" and the store lost the journaled commit's rows."""
    from plankton_cli.store.check import repair

    template = Store(tmp_path / "template")
    _ingest(template, _images(tmp_path, False))
    folder = _images(tmp_path, True)
    reference = Store(shutil.copytree(template.root, tmp_path / "reference"))
    _ingest(reference, folder)
    expected = content(reference.root)
    garbage = "00000000T000000Z-garbage"  # sorts before every real journal: the one recover meets first
    journaled = 0
    for k, store, fired in faulted(monkeypatch, template, tmp_path, "kill", lambda store: _ingest(store, folder)):
        if fired and list((store.root / ".journal").glob("*.json")):
            journaled += 1
            twin = Store(shutil.copytree(store.root, tmp_path / f"twin-{k}"))
            with twin.locked():  # what the committed journal alone comes to
                pass
            (store.root / ".journal" / f"{garbage}.json").write_bytes(b"\x00{not a journal")
            report = repair(store, ingest)
            assert report.exit_code == 0, [str(p) for p in report.problems]
            assert any("unreadable journal" in line and garbage in line for line in report.repaired)
            assert "finished 1 interrupted commit" in report.repaired
            assert (store.root / ".quarantine" / garbage / f"{garbage}.json").read_bytes() == b"\x00{not a journal"
            assert content(store.root) == content(twin.root), f"repair lost the journaled commit (kill at {k})"
            _ingest(store, folder)
            assert content(store.root) == expected, f"kill at {k}"
            shutil.rmtree(twin.root)
    assert journaled >= 2, f"only {journaled} kills left a journal: is the fault injection still installed?"


def test_garbage_committed_list_after_a_kill_at_every_operation_is_rebuilt_from_data_and_journals(tmp_path,
                                                                                                  monkeypatch):
    """Ingest killed at the k-th operation, for every k, then `committed.json` overwritten with garbage: repair
    lists the data files on disk, then finishes the journal left (which holds the change to the list, applied to the
    rebuilt one); either way the store holds what a plain recover of the undamaged store holds."""
    from plankton_cli.store.check import repair

    template = Store(tmp_path / "template")
    _ingest(template, _images(tmp_path, False))
    folder = _images(tmp_path, True)
    journaled = 0
    for k, store, fired in faulted(monkeypatch, template, tmp_path, "kill", lambda store: _ingest(store, folder)):
        if not fired:
            continue
        twin = Store(shutil.copytree(store.root, tmp_path / f"twin-{k}"))
        with twin.locked():
            pass
        (store.root / COMMITTED).write_bytes(b'{"files": {"objects/')
        report = repair(store, ingest)
        assert report.exit_code == 0, [str(p) for p in report.problems]
        assert any("rebuilt committed.json" in line for line in report.repaired)
        journaled += "finished 1 interrupted commit" in report.repaired
        assert content(store.root) == content(twin.root), f"kill at {k}"
        assert_clean(store.root)
        shutil.rmtree(twin.root)
    assert journaled >= 2 and journaled < k - 1, "both cases (a journal left, none) were met"


@pytest.mark.parametrize("mode", ["kill", errno.EIO], ids=["kill", "EIO"])
def test_a_repair_killed_at_every_operation_ends_with_every_row_when_run_again(tmp_path, monkeypatch, mode):
    """The probe's case: a data file deleted, `check --repair` killed (or failed with EIO) at the k-th store
    operation (while it drops the file, rewrites what is left of its sources, or reads them again), for every k; a
    second repair must end with every row the sources hold (the probe saw 1,224 of 1,274), as a store that never
    lost the file."""
    from plankton_cli.store.check import check, repair

    folder = _images(tmp_path, False)
    clean = Store(tmp_path / "clean")
    _ingest_plain(clean, folder)
    expected = content(clean.root)
    template = Store(tmp_path / "template")
    _ingest_plain(template, folder)
    lost = template.files("objects")[0]
    assert pq.read_metadata(lost).num_rows > 0
    lost.unlink()

    for k, store, fired in faulted(monkeypatch, template, tmp_path, mode, lambda store: repair(store, ingest, lock_timeout=5)):
        if fired:
            assert check(store).exit_code != 0 or content(store.root) == expected, \
                f"kill at {k}: rows are missing and check calls the store whole"
            report = repair(store, ingest, lock_timeout=5)
            assert report.exit_code == 0, [str(p) for p in report.problems]
        assert content(store.root) == expected, f"repair killed at operation {k}, then run again"
        assert_clean(store.root)
    assert k > 10, f"repair made only {k - 1} store operations: is the fault injection still installed?"
