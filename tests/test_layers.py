"""The package by stage (issue #25): the import-linter contracts in pyproject.toml hold, and they catch what they
are there for: an import from a lower stage up to a higher one, and two modules side by side importing each other."""

import shutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

from conftest import REPO


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    env = None if pythonpath is None else {"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_every_stage_imports_only_stages_below_it_and_nothing_imports_round():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("module, line, says", [
    # the store reaching up to ingest (check --repair did, until it was handed ingest)
    ("store/check.py", "from plankton_cli.ingest import ingest", "plankton_cli.store is not allowed to import plankton_cli.ingest"),
    # the cycle model_info <-> models.checkpoints, inside the train stage
    ("train/model_info.py", "from plankton_cli.train.models.checkpoints import load_model",
     "No cycles are allowed in plankton_cli.train"),
])
def test_the_contracts_refuse_an_upward_import_and_a_cycle(tmp_path, module, line, says):
    shutil.copytree(REPO / "plankton_cli", tmp_path / "plankton_cli", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "plankton_cli" / module, "a", encoding="utf-8") as f:
        f.write(f"\n{line}  # noqa: E402\n")
    proc = lint_imports(tmp_path, pythonpath=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert says in " ".join(proc.stdout.split()), proc.stdout


def test_the_plugin_api_keeps_its_old_paths():
    """Third-party readers and writers import the plugin API at its old top-level paths (examples/ does)."""
    # by name, so that a rewrite of imports to the new paths cannot turn this into comparing a module with itself
    pairs = [(import_module(f"plankton_cli.{name}"), import_module(f"plankton_cli.core.{name}"))
             for name in ("records", "writers", "plugins")]
    for old, new in pairs:
        assert old.__all__ and all(getattr(old, name) is getattr(new, name) for name in old.__all__)
        public = {name for name in vars(new) if not name.startswith("_") and getattr(vars(new)[name], "__module__", "") == new.__name__}
        assert public <= set(old.__all__), f"{old.__name__} lacks {public - set(old.__all__)}"
