"""The error model at the CLI edge: each bad input gives one line naming the file and its exit status; a traceback
only with -v (plankton_cli/core/errors.py, plankton_cli/cli/__init__.py)."""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import plankton
from plankton_cli.core.errors import CantCreate, ConfigError, DataError, StoreIOError, StoreLocked, UsageError
from plankton_cli.ingest import ingest
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import LockTimeout, Store


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory, demo_images) -> Path:
    store = Store(tmp_path_factory.mktemp("clean") / "store")
    ingest(store, [demo_images], options=ReadOptions(instrument="FlowCam"))
    return store.root


@pytest.fixture(scope="module")
def demo_images() -> Path:  # module scope for clean_store; the same folder as conftest's fixture
    return Path(__file__).parent / "data" / "planktonclass-demo" / "demo-images"


def _immutable(path: Path, on: bool) -> None:
    """`chattr +i`: read-only even for root (chmod is not, and CI runs as root)."""
    proc = subprocess.run(["chattr", "-R", "+i" if on else "-i", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot make {path} read-only here: {proc.stderr.strip()}")


def _small_disk() -> None:
    """In the child: files may not grow past 64 KiB, so writes fail with EFBIG as on a full disk (SIGXFSZ ignored
    so the write returns the error instead of killing the process)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


# name -> (setup(tmp, clean_store) -> (argv, text the error line must contain), exit status, run the child with)
def _read_only_store(tmp, store):
    shutil.copytree(store, tmp / "s")
    _immutable(tmp / "s", True)
    return ["pad", "--store", str(tmp / "s")], str(tmp / "s")


def _disk_full(tmp, store):
    return ["ingest", str(Path(__file__).parent / "data" / "planktonclass-demo" / "demo-images"),
            "--store", str(tmp / "s")], str(tmp / "s")


def _corrupt_parquet(tmp, store):
    shutil.copytree(store, tmp / "s")
    victim = sorted((tmp / "s" / "objects").rglob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a truncated copy
    # pad reads the objects' data (`info` answers from the committed list's stats and opens no data file)
    return ["pad", "--store", str(tmp / "s")], victim.name


def _invalid_journal(tmp, store):
    shutil.copytree(store, tmp / "s")
    (tmp / "s" / ".journal").mkdir(exist_ok=True)
    (tmp / "s" / ".journal" / "20260101T000000Z-abcdef.json").write_text('{"adds": [')
    return ["pad", "--store", str(tmp / "s")], "20260101T000000Z-abcdef.json"


def _bad_model_file(tmp, store):
    (tmp / "m").mkdir()
    (tmp / "m" / "model.safetensors").write_bytes(b"\x00" * 100)
    (tmp / "m" / "model.json").write_text('{"format": "plankton-cli/model"')
    return ["predict", "--model", str(tmp / "m" / "model.safetensors"), "--store", str(store), "--to", "csv",
            "--out", str(tmp / "out")], "model.json"


def _bad_init(tmp, store):
    (tmp / "encoder.safetensors").write_bytes(b"not safetensors")
    return ["finetune", "--init", str(tmp / "encoder.safetensors"), "--labels", "all", "--folds", "2",
            "--out", str(tmp / "run"), "--store", str(store), "--accelerator", "cpu"], "encoder.safetensors"


def _non_utf8_config(tmp, store):
    (tmp / "plankton.toml").write_bytes("store = 'caf\xe9'\n".encode("latin-1"))
    return ["--config", str(tmp / "plankton.toml"), "info", "--store", str(store)], "plankton.toml"


def _command_name_as_value(tmp, store):
    (tmp / "plankton.toml").write_text("ingest = 5\n")
    return ["--config", str(tmp / "plankton.toml"), "info", "--store", str(store)], "plankton.toml"


def _evaluate_not_a_run(tmp, store):
    (tmp / "notes").mkdir()
    return ["evaluate", str(tmp / "notes"), "--out", str(tmp / "eval")], "notes"


BAD_INPUTS = {
    "read-only store": (_read_only_store, 74, None),
    "disk full": (_disk_full, 74, _small_disk),
    "corrupt Parquet": (_corrupt_parquet, 74, None),
    "invalid journal": (_invalid_journal, 74, None),
    "bad model files": (_bad_model_file, 2, None),
    "bad --init": (_bad_init, 2, None),
    "non-UTF-8 config": (_non_utf8_config, 78, None),
    "ingest = 5 at the top level": (_command_name_as_value, 78, None),
    "evaluate on a folder that is not a run": (_evaluate_not_a_run, 2, None),
}


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "-v"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_and_its_exit_status(case, verbose, tmp_path, clean_store):
    setup, status, preexec = BAD_INPUTS[case]
    argv, names = setup(tmp_path, clean_store)
    try:
        proc = plankton(*(["-v"] if verbose else []), *argv, cwd=tmp_path, preexec_fn=preexec)
    finally:
        if case == "read-only store":
            _immutable(tmp_path / "s", False)  # so pytest can delete it
    assert proc.returncode == status, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1 and names in error_lines[0], proc.stderr
    assert ("Traceback (most recent call last)" in proc.stderr) == verbose, proc.stderr


def test_exit_statuses_are_the_documented_ones():
    assert [e.exit_code for e in (UsageError, DataError, CantCreate, StoreIOError, StoreLocked, ConfigError)] == [
        2, 65, 73, 74, 75, 78]
    assert issubclass(LockTimeout, StoreLocked)



@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--top-k", "-1"), ("--top-k", "0")])
def test_nonsense_numbers_are_usage_errors(option, value, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")  # --model must exist; Click refuses before reading it
    proc = plankton("predict", "--model", str(tmp_path / "model.safetensors"), option, value, cwd=tmp_path)
    assert proc.returncode == 2 and f"Invalid value for '{option}'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
