"""The manual cannot rot: every shell command in docs/ runs, in order, on the bundled data.

Each page's ```bash blocks (and the `$ ` lines of its ```console blocks) run as one shell script in a fresh folder
that holds the repository's `tests/data`, `examples`, `bench` and `scripts` (linked read-only), with the test's
`plankton` first on PATH: what a reader sees after `source .venv/bin/activate` in a checkout. A block that exits
non-zero fails the page, naming the block and showing its output. Markers, an HTML comment on the line before a
block (blank lines between allowed):

    <!-- not-run: REASON -->       illustrative only (a cron line, a download, a command for another machine)
    <!-- run-if: CONDITION -->     run only when CONDITION holds here (see CONDITIONS), skipped otherwise

and anywhere in a page, `<!-- needs-data: PATH -->`: the page needs the GPL-licensed data set PATH under
../shared/data (`$PLANKTON_SHARED_DATA`), and is skipped with that reason where it is absent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, SHARED, shared_data, slurm_problem

DOCS = REPO / "docs"
LINKED = ("tests/data", "examples", "bench", "scripts")  # what the pages' commands read, relative to a checkout
RUNNABLE = {"bash", "sh", "console"}
MARKER = re.compile(r"<!--\s*(not-run|run-if|needs-data)\s*:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[\w-]*)")
BLOCK_START = "@@docs-block {}@@"



CONDITIONS: dict[str, Callable[[], str | None]] = {"slurm": slurm_problem}
"""run-if names -> a function saying why the condition does not hold here (None: it holds)."""


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    commands: str  # what runs: the block's text, or a console block's `$ ` lines
    not_run: str | None = None  # the reason, for an illustrative block
    run_if: str | None = None  # a CONDITIONS name


def _console_commands(text: str) -> str:
    """The commands of a console block: lines after a `$ ` prompt, with their `\\` continuation lines."""
    commands, continued = [], False
    for line in text.splitlines():
        if continued or line.startswith("$ "):
            commands.append(line if continued else line[2:])
            continued = line.endswith("\\")
    return "\n".join(commands)


def extract_blocks(markdown: str) -> list[Block]:
    """Every fenced bash/sh/console block of a page, with the marker that precedes it."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    marker: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        opening = FENCE.match(line)
        if opening is None:
            found = MARKER.search(line)
            if found and found.group(1) != "needs-data":
                if not found.group(2):
                    raise ValueError(f"line {i + 1}: `{found.group(1)}:` needs a reason or a condition")
                marker = (found.group(1), found.group(2))
            elif line.strip():
                marker = None  # a marker applies to the very next block only
            i += 1
            continue
        indent, fence, lang = opening.group("indent"), opening.group("fence"), opening.group("lang")
        end = i + 1
        while end < len(lines) and not lines[end].startswith(indent + fence):
            end += 1
        body = "\n".join(text[len(indent):] for text in lines[i + 1:end])
        if lang in RUNNABLE:
            kind, value = marker or (None, None)
            if kind == "run-if" and value not in CONDITIONS:
                raise ValueError(f"line {i + 1}: unknown run-if condition {value!r} (known: {', '.join(CONDITIONS)})")
            blocks.append(Block(line=i + 1, lang=lang,
                                commands=_console_commands(body) if lang == "console" else body,
                                not_run=value if kind == "not-run" else None,
                                run_if=value if kind == "run-if" else None))
        marker = None
        i = end + 1
    return blocks


def needed_data(markdown: str) -> list[str]:
    return [m.group(2) for m in MARKER.finditer(markdown) if m.group(1) == "needs-data"]


def page_script(blocks: list[Block], skipped_conditions: set[str]) -> str:
    """One shell script running the page's blocks in order, announcing each one (so a failure names its block)."""
    parts = ["set -eo pipefail"]
    for number, block in enumerate(blocks):
        if block.not_run or block.run_if in skipped_conditions:
            continue
        parts += [f"echo '{BLOCK_START.format(number)}'", block.commands]
    return "\n".join(parts) + "\n"


def run_page(blocks: list[Block], workdir: Path, env: dict[str, str], name: str, timeout: float = 600) -> str:
    """Run a page's runnable blocks in `workdir`; raise AssertionError naming the block that failed."""
    skipped = {name for name, problem in CONDITIONS.items() if any(b.run_if == name for b in blocks) and problem()}
    proc = subprocess.run(["bash", "-c", page_script(blocks, skipped)], cwd=workdir, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if proc.returncode == 0:
        return proc.stdout
    started = re.findall(r"^@@docs-block (\d+)@@$", proc.stdout, flags=re.M)
    if not started:
        raise AssertionError(f"{name}: the page's script failed before its first block (exit {proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}")
    block = blocks[int(started[-1])]
    output = proc.stdout[proc.stdout.rindex(BLOCK_START.format(started[-1])):]
    raise AssertionError(f"{name}:{block.line}: this block exited {proc.returncode}:\n{block.commands}\n"
                         f"--- its output (last 4000 characters) ---\n{output[-4000:]}")


def checkout_like(workdir: Path) -> dict[str, str]:
    """Make `workdir` look like a checkout to the pages' commands; return their environment."""
    for relative in LINKED:
        (workdir / relative).parent.mkdir(parents=True, exist_ok=True)
        (workdir / relative).symlink_to(REPO / relative)
    outside = {k: v for k, v in os.environ.items() if not k.startswith("PLANKTON_")}  # pages name their store
    return {
        **outside,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PLANKTON_SHARED_DATA": str(SHARED),
        # `pip install` in a page goes to a throwaway folder, not into the venv running the tests.
        "PIP_TARGET": str(workdir / ".site"), "PYTHONPATH": str(workdir / ".site"), "PIP_NO_DEPS": "1",
        "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_QUIET": "1",
    }


PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(not b.not_run for b in extract_blocks((DOCS / p).read_text()))])
def test_the_page_s_commands_run(page: str, tmp_path: Path) -> None:
    markdown = (DOCS / page).read_text()
    for data in needed_data(markdown):
        shared_data(data)
    run_page(extract_blocks(markdown), tmp_path, checkout_like(tmp_path), f"docs/{page}")


def test_every_tutorial_runs_most_of_its_commands() -> None:
    """Illustrative blocks stay the exception: a tutorial is mostly commands the test runs."""
    for page in (DOCS / "tutorials").glob("*.md"):
        blocks = extract_blocks(page.read_text())
        not_run = [b for b in blocks if b.not_run]
        assert len(not_run) * 3 <= len(blocks), f"{page.name}: {len(not_run)} of {len(blocks)} blocks are not run"


def test_every_page_is_in_the_navigation() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    assert [page for page in PAGES if f" {page}" not in nav] == []


def test_the_command_reference_documents_every_command() -> None:
    """docs/reference.md is generated by mkdocs-click from the root group, whose commands load lazily: it must still
    find every one (through list_commands/get_command), with its options."""
    docs = pytest.importorskip("mkdocs_click._docs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    from plankton_cli.cli import COMMANDS, cli

    assert ":module: plankton_cli.cli\n    :command: cli" in (DOCS / "reference.md").read_text()
    page = "\n".join(docs.make_command_docs("plankton", cli, depth=1, style="table"))
    for name in COMMANDS:
        assert f"### {name}\n" in page and f"plankton {name} [OPTIONS]" in page, name
    assert "--cpu-path" in page and "--label-status" in page  # the options too, not just the names


# The extractor and runner themselves: a test that could not fail would guard nothing.

PAGE = """\
# A page

```bash
echo one > one.txt
```

<!-- not-run: needs a cluster -->

```bash
exit 3
```

- in a list:

    ```console
    $ cat one.txt \\
        two.txt
    one
    $ echo three
    three
    ```

<!-- run-if: slurm -->
```bash
sinfo
```

```python
raise SystemExit(1)
```
"""


def test_the_extractor_finds_shell_blocks_markers_and_console_commands() -> None:
    blocks = extract_blocks(PAGE)
    assert [(b.line, b.lang) for b in blocks] == [(3, "bash"), (9, "bash"), (15, "console"), (24, "bash")]
    assert [b.not_run for b in blocks] == [None, "needs a cluster", None, None]
    assert blocks[2].commands == "cat one.txt \\\n    two.txt\necho three"
    assert blocks[3].run_if == "slurm"


def test_a_marker_applies_to_the_next_block_only_and_must_say_why() -> None:
    blocks = extract_blocks("<!-- not-run: illustrative -->\n\nSome text.\n\n```bash\ntrue\n```\n")
    assert blocks[0].not_run is None
    with pytest.raises(ValueError, match="needs a reason"):
        extract_blocks("<!-- not-run: -->\n```bash\ntrue\n```\n")
    with pytest.raises(ValueError, match="unknown run-if condition"):
        extract_blocks("<!-- run-if: gpu-someday -->\n```bash\ntrue\n```\n")


def test_a_failing_block_fails_the_page_and_is_named(tmp_path: Path) -> None:
    page = "```bash\necho fine\n```\n\n```bash\necho before; false; echo after\n```\n\n```bash\necho never\n```\n"
    with pytest.raises(AssertionError) as failure:
        run_page(extract_blocks(page), tmp_path, dict(os.environ), "page.md")
    message = str(failure.value)
    assert "page.md:5: this block exited 1" in message and "before" in message
    assert "after" not in message.split("---")[-1] and "never" not in message.split("---")[-1]


def test_blocks_run_in_order_in_one_shell_and_skip_what_is_marked(tmp_path: Path) -> None:
    page = ("```bash\nSTATION=week1\n```\n\n<!-- not-run: illustrative -->\n```bash\nexit 9\n```\n\n"
            "```console\n$ echo \"$STATION\" > out.txt\n```\n")
    run_page(extract_blocks(page), tmp_path, dict(os.environ), "page.md")
    assert (tmp_path / "out.txt").read_text() == "week1\n"
