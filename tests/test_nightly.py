"""examples/nightly: the station's cron job runs twice and the second run does nothing."""

import fcntl
import json
import os
import shutil
import subprocess
import sys

import h5py

from conftest import BUNDLED, REPO
from test_predict import PADDING, tiny_model

SCRIPT = REPO / "examples" / "nightly" / "nightly.sh"


def run_nightly(tmp_path, ifcb, model, out):
    config = tmp_path / "plankton.toml"
    config.write_text(f'store = "{tmp_path / "store"}"\nlock_timeout = 5\n[ingest]\nformat = "ifcb"\n')
    env = {**os.environ, "PLANKTON_CONFIG": str(config), "PLANKTON": str(REPO / ".venv/bin/plankton")}
    if not (REPO / ".venv/bin/plankton").exists():
        env["PLANKTON"] = shutil.which("plankton") or f"{sys.executable} -m plankton_cli"
    return subprocess.run(["bash", str(SCRIPT), str(ifcb), str(model), str(out)], env=env, capture_output=True,
                          text=True)


def snapshot(out):
    return {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and
            not p.name.startswith(("last-", "."))}


def test_nightly_twice_then_nothing_new(tmp_path):
    ifcb = tmp_path / "ifcb"
    shutil.copytree(BUNDLED / "ifcb/pyifcb-testdata", ifcb)
    model = tiny_model(tmp_path / "model" / "fold-0", ["a", "b", "c"], PADDING)
    out = tmp_path / "out"

    first = run_nightly(tmp_path, ifcb, model, out)
    assert first.returncode == 65, first.stderr  # the partial/ bin has no .roi: its ROIs are rejected
    ingest = json.loads((out / "last-ingest.json").read_text())
    predict = json.loads((out / "last-predict.json").read_text())
    assert ingest["stored"] == 19 + 5 and predict["predicted"] == 24  # the V2 bin + the stitched V1 bin
    h5_files = sorted(p.name for p in out.rglob("*_class.h5"))
    assert h5_files == ["D20130526T095207_IFCB013_class.h5", "IFCB5_2012_028_081515_class.h5"]
    with h5py.File(next(out.rglob("IFCB5_*_class.h5"))) as f:
        assert list(f["roi_numbers"][:]) == [1, 2, 3, 5, 6]
    assert len(list(out.rglob("*.zip"))) == 2
    summary = json.loads((out / "last-summary.json").read_text())
    assert summary["new_samples"] == 2 and summary["objects"] == 24
    reports = list((out / "reports").glob("night-*.html"))
    assert len(reports) == 1
    report = json.loads((out / "last-report.json").read_text())
    assert report["written"] and report["objects"] == 24 and report["bins"] == 2 and report["rejected"] > 0
    page = reports[0].read_text()
    assert "New bins" in page and "D20130526T095207_IFCB013" in page and "Rejected objects" in page
    files = snapshot(out)

    second = run_nightly(tmp_path, ifcb, model, out)
    assert second.returncode == 0, second.stderr  # nothing read, so nothing rejected
    assert json.loads((out / "last-ingest.json").read_text())["read"] == 0
    assert json.loads((out / "last-predict.json").read_text())["predicted"] == 0
    assert snapshot(out) == files  # no file rewritten: summary and report included
    assert json.loads((out / "last-summary.json").read_text())["new_samples"] == 0
    assert not json.loads((out / "last-report.json").read_text())["written"]

    with open(out / ".nightly.lock", "a") as lock:  # a run still going: the next one backs off with 75
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert run_nightly(tmp_path, ifcb, model, out).returncode == 75
