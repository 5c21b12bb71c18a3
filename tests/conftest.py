"""Shared test fixtures: where the real data lives, and a way to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "tests" / "data"  # MIT / Apache data shipped with the repository
SHARED = Path(os.environ.get("PLANKTON_SHARED_DATA", REPO.parent / "shared" / "data"))  # GPL data, not shipped


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


def plankton(*args: str, env: dict | None = None, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run the real `plankton` command in a subprocess (exit codes, stdout/stderr separation, no shared state)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "plankton_cli", *args], capture_output=True, text=True,
                          env=full_env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"plankton {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc
