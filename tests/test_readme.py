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


def test_the_readme_is_a_page_for_users_and_points_to_files_that_exist():
    """One screen of what it is and how to run it (issue 25); the rest is in the manual, which it links to."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 120
    links = re.findall(r"\]\(((?!https?://)[^)#]+)", readme)
    assert "docs/index.md" in links
    assert [link for link in links if not (REPO / link).exists()] == []


def test_the_manual_gives_the_readme_s_commands_verbatim():
    readme = (REPO / "README.md").read_text()
    getting_started = (REPO / "docs" / "getting-started.md").read_text()
    for command in re.findall(r"^    (python3 -m venv .*|\.venv/bin/pip install torch .*)$", readme, flags=re.M):
        assert f"\n{command}\n" in getting_started, command
