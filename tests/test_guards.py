"""Guardrails against silent mistakes (issue 21): one missing-store message, all missing options at once, and
warnings for what a user did not mean to do."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from plankton_cli.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("command", [
    ["check"], ["pad"], ["features"], ["stats"], ["summarize", "--model", "{file}", "--out", "{tmp}/s"],
    ["report", "--model", "{file}", "--out", "{tmp}/r"], ["predict", "--model", "{file}"],
    ["evaluate", "--predictions", "{file}"], ["pretrain", "--out", "{tmp}/r"],
    ["finetune", "--init", "{file}", "--labels", "5%", "--out", "{tmp}/r"],
    ["distill", "--teacher", "{file}", "--out", "{tmp}/r"],
])
def test_every_command_that_needs_a_store_says_the_same_about_a_missing_one(tmp_path, command):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    args = [a.format(file=file, tmp=tmp_path) for a in command]
    result = run(*args, "--store", str(tmp_path / "nope"))
    assert result.exit_code == 2, result.output
    [line] = result.output.splitlines()
    assert line.startswith(f"Error: no store at {tmp_path / 'nope'}: ") and "--store" in line
    assert "$PLANKTON_STORE" in line


def test_finetune_reports_all_its_missing_options_at_once():
    result = run("finetune", "--labels", "5%")
    assert result.exit_code == 2
    assert "Missing options '--init', '--out'." in result.output
