"""The local backend runs a real `plankton` command line in this process and reports its exit status."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from plankton_cli.jobs import JOBS_FILE, Backend, Job, JobHandle, LocalBackend, list_jobs, record

DEMO_IMAGES = Path(__file__).resolve().parents[1] / "data" / "planktonclass-demo" / "demo-images"


# Commands that fail the ways a real one can, which the plankton CLI has no reason to offer on purpose.
@click.group()
def failing() -> None:
    pass


@failing.command()
def crash() -> None:
    raise ValueError("a bug in the command")


@failing.command("exit-code")
@click.argument("code", type=int, required=False)
def exit_code(code: int | None) -> None:
    raise SystemExit(code)


@failing.command("exit-with")
@click.argument("message")
def exit_with(message: str) -> None:
    raise SystemExit(message)


def test_backend_follows_the_protocol():
    backend = LocalBackend()
    assert isinstance(backend, Backend)
    assert backend.name == "local"
    assert isinstance(backend.submit(Job(["--version"])), JobHandle)


def test_ingest_runs_in_process(tmp_path, capsys):
    store = tmp_path / "store"
    job = Job(["ingest", str(DEMO_IMAGES), "--store", str(store), "--json"], run_dir=tmp_path)

    handle = LocalBackend().submit(job)

    assert handle.wait() == 0
    assert handle.state() == "COMPLETED"
    assert handle.log_paths == []  # output went to this terminal
    summary = json.loads(capsys.readouterr().out)
    assert summary["stored"] == summary["read"] > 0
    assert (store / "store.json").exists()


def test_usage_error_returns_clicks_exit_status(capsys):
    handle = LocalBackend().submit(Job(["no-such-command"]))
    assert handle.wait() == 2
    assert handle.state() == "FAILED"
    assert "No such command" in capsys.readouterr().err


def test_exception_in_command_is_exit_status_1_with_traceback(capsys):
    handle = LocalBackend(cli=f"{__name__}:failing").submit(Job(["crash"]))
    assert handle.wait() == 1
    assert "ValueError: a bug in the command" in capsys.readouterr().err


def test_sys_exit_with_message_is_exit_status_1(capsys):
    handle = LocalBackend(cli=f"{__name__}:failing").submit(Job(["exit-with", "disk full"]))
    assert handle.wait() == 1
    assert "disk full" in capsys.readouterr().err


def test_dry_run_names_the_command_and_runs_nothing(tmp_path):
    store = tmp_path / "store"
    text = LocalBackend().dry_run(Job(["ingest", str(DEMO_IMAGES), "--store", str(store)]))
    assert text == f"would run in this process: plankton ingest {DEMO_IMAGES} --store {store}"
    assert not store.exists()


def test_registry_keeps_local_exit_status(tmp_path, capsys):
    backend = LocalBackend()
    ok = Job(["plugins", "--json"], run_dir=tmp_path, name="list-plugins")
    bad = Job(["no-such-command"], run_dir=tmp_path)
    ok_entry = record(tmp_path, ok, backend.submit(ok), backend.name)
    record(tmp_path, bad, backend.submit(bad), backend.name)

    lines = [json.loads(line) for line in (tmp_path / JOBS_FILE).read_text().splitlines()]
    assert [(line["argv"], line["exit_code"], line["state"]) for line in lines] == [
        (["plugins", "--json"], 0, "COMPLETED"),
        (["no-such-command"], 2, "FAILED"),
    ]
    assert lines[0]["job_id"] == ok_entry.job_id and lines[0]["name"] == "list-plugins"
    assert lines[0]["backend"] == "local" and lines[0]["run_dir"] == str(tmp_path.resolve())

    # Finished jobs are listed from the record alone: no backend is asked.
    listed = list_jobs(tmp_path, backends={})
    assert [(job.job_id, job.state, job.exit_code) for job in listed] == [
        (ok_entry.job_id, "COMPLETED", 0),
        (lines[1]["job_id"], "FAILED", 2),
    ]


def test_list_jobs_without_a_record_is_empty(tmp_path):
    assert list_jobs(tmp_path) == []


@pytest.mark.parametrize("argv, status", [(["exit-code"], 0), (["exit-code", "0"], 0), (["exit-code", "3"], 3)])
def test_sys_exit_codes(argv, status):
    assert LocalBackend(cli=f"{__name__}:failing").submit(Job(argv)).wait() == status
