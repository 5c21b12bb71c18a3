"""The `plankton` command: a lazy Click group, global options, config file, logging and exit codes.

Commands are imported only when run (or when their help is shown), so `plankton --help` and `plankton info` never
import torch. Each command module is small: parse options, call one library function, print a summary.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import click

from plankton_cli import __version__
from plankton_cli.cli.output import setup_logging

# name -> "module:attribute"; commands appear in `--help` in this order.
COMMANDS = {
    "ingest": "plankton_cli.cli.ingest:ingest",
    "info": "plankton_cli.cli.info:info",
    "pad": "plankton_cli.cli.pad:pad",
    "stats": "plankton_cli.cli.stats:stats",
    "finetune": "plankton_cli.cli.finetune:finetune",
    "distill": "plankton_cli.cli.distill:distill",
    "predict": "plankton_cli.cli.predict:predict",
    "evaluate": "plankton_cli.cli.evaluate:evaluate",
    "plugins": "plankton_cli.cli.plugins:plugins_command",
    "pretrain": "plankton_cli.cli.pretrain:pretrain",
    "jobs": "plankton_cli.cli.jobs:jobs",
}

EXIT_OK = 0
EXIT_USAGE = 2  # Click's own code for usage errors
EXIT_DATAERR = 65  # --strict and something was rejected
EXIT_TEMPFAIL = 75  # the store lock is held by another writer: try again later
EXIT_CONFIG = 78  # unreadable config file


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing short help would import every command module; read each module's one-line summary instead.
        rows = [(name, _SUMMARIES.get(name, "")) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


_SUMMARIES = {
    "ingest": "Read IFCB bins, EcoTaxa exports or image folders into the store.",
    "info": "Show what the store holds: counts by dataset, instrument, label and source.",
    "pad": "Crop instrument legends and pad every image to a square with its own background.",
    "stats": "Compute (or read the cached) pixel mean and std of a dataset, for normalisation.",
    "finetune": "Fine-tune a ViT with few labels and test it by cross-validation (the paper's protocol).",
    "distill": "Distil a fine-tuned teacher into a small student for fast CPU prediction.",
    "predict": "Classify objects with a fine-tuned model and write the results.",
    "evaluate": "Metrics, tables and plots from fine-tune runs or from predictions.",
    "plugins": "List installed reader, writer and backend plugins (and broken ones).",
    "pretrain": "Pretrain a ViT encoder as a masked autoencoder on the store's images.",
    "jobs": "Show the state of runs submitted to a compute backend (SLURM, ...).",
}


def _default_map(group: LazyGroup, ctx: click.Context, config: Path | None) -> dict:
    """TOML config → Click default_map: top-level keys apply to every command, `[command]` tables to one.

    Keys are spelled as on the command line (`format`, `lock-timeout` or `lock_timeout`) and translated to Click's
    parameter names (`fmt`, `lock_timeout`); keys a command does not have are ignored for it.
    """
    if config is None:
        candidate = Path("plankton.toml")
        if not candidate.is_file():
            return {}
        config = candidate
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"cannot read config {config}: {exc}") from exc
    shared = {k: v for k, v in data.items() if not isinstance(v, dict)}
    out = {}
    for name in COMMANDS:
        command = group.get_command(ctx, name)
        spelling = {}
        for param in command.params:
            spelling[param.name] = param.name
            for opt in getattr(param, "opts", []):
                spelling[opt.lstrip("-").replace("-", "_")] = param.name
        values = shared | data.get(name, {})
        out[name] = {spelling[k.replace("-", "_")]: v for k, v in values.items() if k.replace("-", "_") in spelling}
    return out


@click.group(cls=LazyGroup, context_settings={"auto_envvar_prefix": "PLANKTON", "help_option_names": ["-h", "--help"]},
             epilog="""\b
Examples:
  plankton ingest ifcb-data/ --store /data/plankton-store
  plankton info --json
  PLANKTON_STORE=/data/store plankton ingest exports/*.zip --format ecotaxa

Every option can also come from plankton.toml (or --config FILE): top-level keys for
all commands, [ingest] etc. for one; or from PLANKTON_<COMMAND>_<OPTION> variables.""")
@click.version_option(__version__, "-V", "--version", package_name="plankton-cli")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bar.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also append log lines to this file (safe with logrotate).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML config file [default: ./plankton.toml if present].")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, log_file: Path | None, config: Path | None) -> None:
    """plankton: self-supervised plankton recognition from ingest to EcoTaxa.

    Ingest images from IFCB, EcoTaxa and image folders into one Parquet store, pretrain a ViT
    as a masked autoencoder on unlabelled images, fine-tune it with a few labels, and send
    predictions back to EcoTaxa and IFCB Dashboard.
    """
    try:
        ctx.default_map = _default_map(cli, ctx, config)
    except click.ClickException as exc:
        exc.exit_code = EXIT_CONFIG
        raise
    setup_logging(verbose=verbose, quiet=quiet, log_file=log_file)
    ctx.obj = {"quiet": quiet}


def main(args: list[str] | None = None) -> None:
    cli.main(args=args, prog_name="plankton")


__all__ = ["cli", "main", "COMMANDS"]
