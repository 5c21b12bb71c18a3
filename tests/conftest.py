"""Shared test fixtures: where the real data lives, and a way to run the CLI."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "tests" / "data"  # MIT / Apache data shipped with the repository
SHARED = Path(os.environ.get("PLANKTON_SHARED_DATA", REPO.parent / "shared" / "data"))  # GPL data, not shipped


def load_test_module(path: str):
    """A test module by its path under tests/ (`store/test_faults.py`), for its helpers: only tests/ itself is on
    sys.path, so the modules of its sub-folders cannot be imported by name."""
    spec = importlib.util.spec_from_file_location(f"_tests_{path.replace('/', '_')[:-3]}", REPO / "tests" / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_bench(name: str):
    """A benchmark of bench/ by its name (`scale`), for its helpers (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when that data set is absent on this machine."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the GPL-licensed data set {path} (not shipped with the repository)")
    return path


@pytest.fixture
def uvp6() -> Path:
    return shared_data("images", "uvp6-vignettes")


@pytest.fixture
def demo_images() -> Path:
    return BUNDLED / "planktonclass-demo" / "demo-images"


@pytest.fixture
def ifcb_bins() -> Path:
    return BUNDLED / "ifcb" / "pyifcb-testdata"


def slurm_problem() -> str | None:
    """Why the local SLURM cluster cannot run jobs (see .ci/slurm-up.sh), or None when it can."""
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (no sinfo); run .ci/slurm-up.sh"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s; run .ci/slurm-up.sh"
    if out.returncode != 0 or not {"idle", "mixed", "allocated"} & set(out.stdout.split()):
        return f"no usable SLURM node (sinfo: {out.stdout.strip() or out.stderr.strip()}); run .ci/slurm-up.sh"
    return None


def plankton(*args: str, env: dict | None = None, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run the real `plankton` command in a subprocess (exit codes, stdout/stderr separation, no shared state)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "plankton_cli", *args], capture_output=True, text=True,
                          env=full_env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"plankton {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def predict_files(model: Path, folder: Path, out: Path, *options: str):
    """`plankton predict` on the image files under `folder` (the folders reader), as a frame indexed by object id
    (`<folder name>/<path>`): label, label_auto, probabilities and the top probability `score`. What the
    integrations (DEEPaaS, CytoProcess) are compared against."""
    import pyarrow.parquet as pq

    plankton("predict", "--model", str(model), "--format", "folders", *options, str(folder), "--to", "parquet",
             "--out", str(out), check=True)
    table = pq.read_table(out / "predictions.parquet").to_pandas()
    return table.assign(score=[max(p) for p in table["probabilities"]]).set_index("object_id")
