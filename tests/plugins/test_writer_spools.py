"""Writers that collect predictions until `close()` spool beside their output, never in /tmp (issue 10: "a killed
predict leaves its spool in /tmp"): a run that is killed leaves a hidden spool in OUT that the next run removes;
a run that fails or finishes removes its own."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from conftest import load_test_module
from plankton_cli.core.spool import Spool, remove_stale
from plankton_plugins.ecotaxa.writer import EcoTaxaWriter
from plankton_plugins.ifcb.class_scores import IFCBClassScoresWriter

ecotaxa, ifcb = load_test_module("plugins/test_ecotaxa_writer.py"), load_test_module("plugins/test_ifcb_class_scores.py")
WRITERS = {
    "ecotaxa": (EcoTaxaWriter, ecotaxa.make_run, ecotaxa.ifcb_predictions),
    "ifcb-h5": (IFCBClassScoresWriter, ifcb.make_run, ifcb.ifcb_predictions),
}


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch) -> Path:
    """A /tmp of this test's own, to see that the writers put nothing there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def spools(out: Path) -> list[Path]:
    return sorted(out.glob(".spool-*"))


def outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _killed_run(out: Path, name: str) -> None:
    """A predict killed mid-way: a forked process opens the writer, writes some rows and dies without cleanup."""
    writer, make_run, predictions = WRITERS[name]
    pid = os.fork()
    if pid == 0:  # the child: no finalizer, no atexit, no `finally` runs past os._exit
        try:
            session = writer().open(out, make_run())
            session.write(predictions()[:10])
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0


@pytest.mark.parametrize("name", WRITERS)
def test_a_killed_runs_spool_is_in_out_and_the_next_run_removes_it(tmp_path, private_tmp, name):
    writer, make_run, predictions = WRITERS[name]
    out = tmp_path / "out"
    _killed_run(out, name)
    assert len(spools(out)) == 1, "the killed run spooled beside its output"
    assert not list(private_tmp.iterdir()), "nothing in /tmp"

    session = writer().open(out, make_run())
    assert len(spools(out)) == 1 and spools(out)[0].name.split("-")[-2] == str(os.getpid()), "the stale one went"
    session.write(predictions())
    summary = session.close()
    assert summary["files"]
    assert not spools(out) and not list(private_tmp.iterdir())

    clean = tmp_path / "clean"
    session = writer().open(clean, make_run())
    session.write(predictions())
    session.close()
    assert outputs(out) == outputs(clean), "the killed run changed no output"


@pytest.mark.parametrize("name", WRITERS)
def test_abort_removes_the_spool(tmp_path, private_tmp, name):
    writer, make_run, predictions = WRITERS[name]
    session = writer().open(tmp_path / "out", make_run())
    session.write(predictions()[:10])
    session.abort()
    assert not spools(tmp_path / "out") and not list(private_tmp.iterdir())


def test_a_running_writers_spool_is_left_alone(tmp_path):
    running = Spool(tmp_path, "ifcb-h5")
    (running.path / "rows").write_text("x")
    other = Spool(tmp_path, "ifcb")  # a writer whose name is a prefix of another's never touches the other's
    assert remove_stale(tmp_path, "ifcb-h5") == [] and remove_stale(tmp_path, "ifcb") == []
    assert (running.path / "rows").is_file() and other.path.is_dir()
    dead = tmp_path / ".spool-ifcb-h5-999999999-abcdef12"  # no lock file, and its process is gone
    dead.mkdir()
    assert remove_stale(tmp_path, "ifcb-h5") == [dead]
    running.remove()
    other.remove()
    assert not spools(tmp_path)
