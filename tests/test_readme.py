"""The README's promises stay true."""

import re

from conftest import REPO


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^    (python3 -m venv .*)$", readme, flags=re.M)
    assert len(commands) == 2, "the README opens with exactly two commands: the demo and the tests"
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def test_every_schema_is_documented():
    doc = (REPO / "schemas" / "README.md").read_text()
    for path in (REPO / "schemas").glob("*.json"):
        assert path.name in doc, f"schemas/README.md does not mention {path.name}"


def test_the_readme_gives_the_cpu_only_install_pytorch_documents():
    """A station or laptop without an NVIDIA GPU skips ~6 GB of CUDA wheels (issue 21)."""
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^    \.venv/bin/pip install torch torchvision --index-url https://download\.pytorch\.org/whl/cpu$",
                     readme, flags=re.M)
