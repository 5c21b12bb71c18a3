"""`plankton predict --to store` on a locked store keeps its work, and a killed predict leaves nothing behind."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import plankton
from plankton_cli.ingest import ingest
from plankton_cli.infer.predict import predict
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store
from test_predict import CLASSES, PADDING, tiny_model


@pytest.fixture
def setup(tmp_path, demo_images):
    store = Store(tmp_path / "store")
    ingest(store, [demo_images], options=ReadOptions(instrument="FlowCam"))
    model = tiny_model(tmp_path / "model" / "fold-0", CLASSES, PADDING)
    tmp = tmp_path / "tmpdir"  # the process's TMPDIR: nothing of the store writer may land there
    tmp.mkdir()
    return store, model, {"TMPDIR": str(tmp)}, tmp


def _spools(store: Store) -> list:
    folder = store.root / ".spool"
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_locked_store_exits_75_in_one_line_and_the_next_run_stores_without_recomputing(setup):
    store, model, env, tmp = setup
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from plankton_cli.store import Store\n"
        f"with Store({str(store.root)!r}).locked():\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = plankton("predict", "--model", str(model), "--store", str(store.root), "--to", "store",
                        "--lock-timeout", "0.5", "--json", env=env)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 75, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]  # the CLI edge's one line
    assert len(errors) == 1 and "locked by another writer" in errors[0] and "105 predictions" in errors[0]
    assert len(_spools(store)) == 1 and not list(tmp.iterdir())
    assert not store.files("predictions")

    summary = predict(model, store=store, to=["store"])  # the next run, once the store is free
    assert summary.predicted == 0 and summary.skipped_already_predicted == 105  # nothing recomputed
    assert summary.writers["store"]["from_earlier_runs"] == 105 and summary.writers["store"]["rows"] == 105
    assert store.dataset("predictions").count_rows() == 105
    assert _spools(store) == []


def test_a_killed_predict_leaves_no_spool(setup):
    store, model, env, tmp = setup
    args = [sys.executable, "-m", "plankton_cli", "-q", "predict", "--model", str(model), "--store",
            str(store.root), "--to", "store", "--batch-size", "1"]
    proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(name.endswith(".part") for name in _spools(store)) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [name for name in _spools(store) if name.endswith(".part")], "killed before it spooled"
    assert not list(tmp.iterdir())
    assert predict(model, store=store, to=["store"]).predicted == 105  # the next run
    assert _spools(store) == []  # the killed run's unfinished spool is gone
    assert store.dataset("predictions").count_rows() == 105
