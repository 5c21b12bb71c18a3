"""Logging, progress and summaries: rich on a terminal, plain lines under cron, JSON with --json."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from plankton_cli.core.lightning_logs import set_lightning_level

log = logging.getLogger("plankton")


def is_interactive() -> bool:
    return sys.stderr.isatty()


def setup_logging(verbose: int = 0, quiet: bool = False, log_file: Path | None = None) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    root = logging.getLogger("plankton")
    root.setLevel(logging.DEBUG)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    if is_interactive():
        from rich.logging import RichHandler

        console_handler: logging.Handler = RichHandler(show_path=False, show_time=verbose > 0, markup=False)
    else:  # cron, pipes, CI: one timestamped line per event
        console_handler = logging.StreamHandler(sys.stderr)
        console_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console_handler.setLevel(level)
    root.addHandler(console_handler)
    set_lightning_level(logging.INFO if verbose else logging.WARNING)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # WatchedFileHandler reopens the file after logrotate moves it.
        fh = logging.handlers.WatchedFileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh.setLevel(logging.DEBUG if verbose else logging.INFO)
        root.addHandler(fh)


def describe(name: str, info: dict[str, Any]) -> list[str]:
    """A writer's (or any) summary dict as short readable lines: `name: key value, ...`, lists of files as their
    count and folder, nested counts inline, empty values left out, notes on lines of their own."""
    parts: list[str] = []
    notes: list[str] = []
    for key, value in info.items():
        if key in ("writer", "notes") or value in (None, "", [], {}):
            notes += info.get("notes", []) if key == "notes" else []
            continue
        label = key.replace("_", " ")
        if isinstance(value, list):
            folders = sorted({str(Path(str(v)).parent) for v in value})
            where = f" in {folders[0]}" if len(folders) == 1 else ""
            parts.append(f"{len(value)} {label}{where}")
        elif isinstance(value, dict):
            parts.append(f"{label}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
        else:
            parts.append(f"{label} {value}")
    return [f"{name}: " + ", ".join(parts)] + [f"  note: {note}" for note in notes]


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


@contextmanager
def progress(description: str, total: int | None = None, unit: str = "objects"):
    """Yields `advance(n=1)`. A rich bar on a terminal (unless -q); nothing extra otherwise (logs say enough)."""
    ctx = click.get_current_context(silent=True)
    quiet = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))
    if quiet or not is_interactive():
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            bar.advance(task, n)
            t = bar.tasks[0]
            if t.speed:
                bar.update(task, rate=f"{t.speed:,.0f} {unit}/s")

        yield advance
