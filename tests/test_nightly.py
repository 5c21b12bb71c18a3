"""examples/nightly: the station's cron job runs twice and the second run does nothing."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from conftest import BUNDLED, REPO
from test_predict import PADDING, tiny_model

SCRIPT = REPO / "examples" / "nightly" / "nightly.sh"


def plankton_executable() -> str:
    venv = REPO / ".venv" / "bin" / "plankton"
    return str(venv) if venv.exists() else shutil.which("plankton") or str(Path(sys.executable).parent / "plankton")


def run_nightly(tmp_path, ifcb, model, out, plankton=None):
    """nightly.sh with a test config: the store in tmp_path/store, a short lock timeout."""
    config = tmp_path / "plankton.toml"
    config.write_text(f'store = "{tmp_path / "store"}"\nlock_timeout = 5\n[ingest]\nformat = "ifcb"\n')
    env = {**os.environ, "PLANKTON_CONFIG": str(config), "PLANKTON": str(plankton or plankton_executable())}
    return subprocess.run(["bash", str(SCRIPT), str(ifcb), str(model), str(out)], env=env, capture_output=True,
                          text=True)


def run_as_shipped(station, ifcb, model, out):
    """examples/nightly as a station gets it: a fresh copy with its own plankton.toml, nothing edited; stdout and
    stderr appended to nightly.log, as the crontab line does."""
    if not (station / "nightly").exists():
        shutil.copytree(REPO / "examples" / "nightly", station / "nightly")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANKTON")}  # the shipped settings only
    env["PLANKTON"] = plankton_executable()  # the crontab line names the venv's plankton the same way
    with open(station / "nightly.log", "a") as log:
        return subprocess.run(["bash", str(station / "nightly" / "nightly.sh"), str(ifcb), str(model), str(out)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, cwd=station)


def snapshot(out):
    """The outputs' modification times; the store's files (in OUT when the example runs as shipped) by content."""
    return {p.relative_to(out): p.read_bytes() if "plankton-store" in p.parts else p.stat().st_mtime_ns
            for p in out.rglob("*") if p.is_file() and not any(part.startswith((".", "last-")) for part in p.parts)}


def step_lines(log):
    """The job's own lines in the log ("<time> nightly: <step>: ..."), as {step: rest} per run."""
    runs = []
    for line in log.read_text().splitlines():
        if " nightly: " in line:
            step, _, rest = line.split(" nightly: ", 1)[1].partition(": ")
            if step == "start":
                runs.append({})
            runs[-1][step] = rest
    return runs


def test_the_shipped_example_runs_twice_unedited_and_the_second_run_does_nothing(tmp_path):
    ifcb = tmp_path / "ifcb"
    shutil.copytree(BUNDLED / "ifcb/pyifcb-testdata", ifcb)
    model = tiny_model(tmp_path / "model" / "fold-0", ["a", "b", "c"], PADDING)
    out = tmp_path / "out"

    first = run_as_shipped(tmp_path, ifcb, model, out)
    log = tmp_path / "nightly.log"
    assert first.returncode == 65, log.read_text()  # the partial/ bin has no .roi: its ROIs are rejected
    assert (out / "plankton-store" / "objects").is_dir()  # no store named anywhere: OUT/plankton-store
    ingest = json.loads((out / "last-ingest.json").read_text())
    predict = json.loads((out / "last-predict.json").read_text())
    assert ingest["stored"] == 19 + 5 and predict["predicted"] == 24  # the V2 bin + the stitched V1 bin
    h5_files = sorted(p.name for p in out.rglob("*_class.h5"))
    assert h5_files == ["D20130526T095207_IFCB013_class.h5", "IFCB5_2012_028_081515_class.h5"]
    with h5py.File(next(out.rglob("IFCB5_*_class.h5"))) as f:
        assert list(f["roi_numbers"][:]) == [1, 2, 3, 5, 6]
    assert len(list(out.rglob("*.zip"))) == 2
    summary = json.loads((out / "last-summarize.json").read_text())
    assert summary["new_samples"] == 2 and summary["objects"] == 24
    reports = list((out / "reports").glob("night-*.html"))
    assert len(reports) == 1
    report = json.loads((out / "last-report.json").read_text())
    assert report["written"] and report["objects"] == 24 and report["rejected"] > 0
    assert report["samples"] == 2 and report["ifcb_bins"]
    page = reports[0].read_text()
    assert "New bins" in page and "D20130526T095207_IFCB013" in page and "Rejected objects" in page
    assert "<img src='data:image/png;base64," in page  # the summary plot travels with the page
    (night,) = step_lines(log)
    assert list(night) == ["start", "ingest", "predict", "summarize", "report", "done"]  # one line per step
    assert "24 stored, 0 already stored, 6 rejected, 6 missing .roi file" in night["ingest"]
    assert night["predict"].startswith("24 objects classified") and "2 EcoTaxa zips, 2 class files" in night["predict"]
    assert night["summarize"].startswith("2 new bins (24 objects)")
    assert night["report"].endswith("written: 24 objects in 2 bins, 6 rejected")
    assert night["done"].startswith("exit 65")
    files = snapshot(out)

    second = run_as_shipped(tmp_path, ifcb, model, out)
    assert second.returncode == 0, log.read_text()  # nothing read, so nothing rejected
    assert snapshot(out) == files  # nothing new: no output rewritten, summary and report included
    _, again = step_lines(log)
    assert again["ingest"].startswith("0 objects read from the bins (sources: 6 unchanged): 0 stored")
    assert again["predict"].startswith("0 objects classified (24 classified before)")
    assert again["summarize"].startswith("0 new bins (0 objects)")
    assert "unchanged: 24 objects in 2 bins" in again["report"] and again["done"] == ""

    with open(out / ".nightly.lock", "a") as lock:  # a run still going: the next one backs off with 75
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert run_as_shipped(tmp_path, ifcb, model, out).returncode == 75


# -- issue 19: a night whose predict dies or fails is finished by the next night, without predicting again ---------

KILLER = """\
import os, sys
from plankton_cli.infer.predictions import StoreSession

def killed_after(method):
    real = getattr(StoreSession, method)
    def run(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        os._exit(137)  # kill -9 right here: no cleanup, no finally
    setattr(StoreSession, method, run)

killed_after(sys.argv.pop(1))
from plankton_cli.cli import main
main()
"""


def outputs(out):
    """The night's EcoTaxa zips and class files, by path, as bytes (written deterministically)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.suffix in (".zip", ".h5") and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """The IFCB bins, the model and the outputs of a night that nothing interrupted."""
    tmp_path = tmp_path_factory.mktemp("clean-night")
    ifcb = tmp_path / "ifcb"
    shutil.copytree(BUNDLED / "ifcb/pyifcb-testdata", ifcb)
    model = tiny_model(tmp_path / "model" / "fold-0", ["a", "b", "c"], PADDING)
    assert run_nightly(tmp_path, ifcb, model, tmp_path / "out").returncode == 65
    expected = outputs(tmp_path / "out")
    assert len(expected) == 4  # two bins: a zip and a class file each
    return ifcb, model, expected


@pytest.mark.parametrize("moment", ["finish", "commit"])
def test_a_night_killed_in_predict_is_finished_by_the_next_without_predicting(tmp_path, night, moment):
    """Killed once the predictions are spooled for good (`finish`), or just after the store commit: the next
    night predicts nothing and the night's zips and class files are all there, once, as a clean night's."""
    ifcb, model, expected = night
    killer = tmp_path / "plankton-killed"
    (tmp_path / "killer.py").write_text(KILLER)
    killer.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "killer.py"} {moment} "$@"\n')
    killer.chmod(0o755)
    out = tmp_path / "out"
    proc = run_nightly(tmp_path, ifcb, model, out, plankton=killer)  # ingest, then the predict that dies
    assert proc.returncode == 137, proc.stderr
    if moment == "finish":
        assert outputs(out) == {}  # killed before any output was written

    again = run_nightly(tmp_path, ifcb, model, out)
    assert again.returncode == 0, again.stderr
    predict = json.loads((out / "last-predict.json").read_text())
    assert predict["predicted"] == 0 and predict["skipped_already_predicted"] == 24
    assert outputs(out) == expected
    assert not list(out.glob(".spool-*")) and not list((tmp_path / "store" / ".spool").rglob("*.parquet"))


def test_a_night_whose_ecotaxa_writer_failed_writes_its_zips_once_fixed(tmp_path, night):
    """OUT/ecotaxa is a file: predict fails (the store commit waits for every output); once it is removed, the
    next night predicts nothing and writes the zips."""
    ifcb, model, expected = night
    out = tmp_path / "out"
    out.mkdir()
    (out / "ecotaxa").write_text("in the way\n")
    failed = run_nightly(tmp_path, ifcb, model, out)
    assert failed.returncode == 73, failed.stderr
    (line,) = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]  # ingest warns too
    assert f"{out / 'ecotaxa'}: File exists; the predictions are kept" in line and "Traceback" not in failed.stderr
    store = tmp_path / "store"
    assert not list((store / "predictions").rglob("*.parquet")) if (store / "predictions").exists() else True

    (out / "ecotaxa").unlink()
    again = run_nightly(tmp_path, ifcb, model, out)
    assert again.returncode == 0, again.stderr
    predict = json.loads((out / "last-predict.json").read_text())
    assert predict["predicted"] == 0 and predict["writers"]["store"]["from_earlier_runs"] == 24
    assert outputs(out) == expected
