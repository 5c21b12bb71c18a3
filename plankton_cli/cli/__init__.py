"""The `plankton` command: a lazy Click group, global options, config file, logging and exit codes.

Commands are imported only when run (or when their help is shown), so `plankton --help` and `plankton info` never
import torch. Each command module is small: parse options, call one library function, print a summary.
"""

from __future__ import annotations

import importlib
import signal
import threading
import tomllib
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from plankton_cli import __version__
from plankton_cli.cli.output import setup_logging
from plankton_cli.core.errors import ConfigError, PlanktonError, StoreIOError

# name -> "module:attribute"; commands appear in `--help` in this order.
COMMANDS = {
    "ingest": "plankton_cli.cli.ingest:ingest",
    "info": "plankton_cli.cli.info:info",
    "check": "plankton_cli.cli.check:check",
    "pad": "plankton_cli.cli.pad:pad",
    "features": "plankton_cli.cli.features:features",
    "stats": "plankton_cli.cli.stats:stats",
    "finetune": "plankton_cli.cli.finetune:finetune",
    "distill": "plankton_cli.cli.distill:distill",
    "predict": "plankton_cli.cli.predict:predict",
    "select": "plankton_cli.cli.select:select",
    "export": "plankton_cli.cli.export:export",
    "evaluate": "plankton_cli.cli.evaluate:evaluate",
    "summarize": "plankton_cli.cli.summarize:summarize",
    "taxa": "plankton_cli.cli.taxa:taxa",
    "report": "plankton_cli.cli.report:report",
    "plugins": "plankton_cli.cli.plugins:plugins_command",
    "pretrain": "plankton_cli.cli.pretrain:pretrain",
    "jobs": "plankton_cli.cli.jobs:jobs",
}

class PlanktonFailure(click.ClickException):
    """A `PlanktonError` (or an exception standing for one) on its way out: Click prints `Error: <one line>` on
    stderr and exits with its status, both from the `plankton` script and from `jobs.run_plankton`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(" ".join(message.splitlines()))  # one line, whatever the library said
        self.exit_code = exit_code  # type: ignore[misc]  # Click declares it on the class; ours varies


def _in_store(store: Path | None, error: PlanktonError, exc: Exception) -> PlanktonError:
    """Name the file for errors that do not: pyarrow's scan errors (find the store file whose footer is unreadable)
    and its write errors (name the store being written)."""
    if store is None or error.path is not None or not isinstance(error, StoreIOError) or not store.is_dir():
        return error
    if not isinstance(exc, OSError):  # ArrowInvalid & co: a corrupt file somewhere in the store
        import pyarrow.parquet as pq

        files = (p for p in store.rglob("*.parquet") if not any(s.startswith(".") for s in p.relative_to(store).parts))
        for file in sorted(files):
            try:
                pq.read_metadata(file)
            except Exception as unreadable:  # noqa: BLE001 - whatever pyarrow raises, this is the file to name
                return StoreIOError(f"{file}: unreadable Parquet file ({unreadable})", path=file)
    return StoreIOError(f"store {store}: {error}", path=store)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. A KeyboardInterrupt, because that is what Lightning, DataLoader workers and the
    store's transactions already unwind cleanly from (a plain SIGTERM would kill the process mid-write)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _interrupt_on_signals(received: list[int]) -> Iterator[None]:
    """While the command runs, SIGINT and SIGTERM raise `Interrupted` (and are noted in `received`)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) == 1:  # a second Ctrl-C must not cut short the rollback the first one started
            raise Interrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        """Run the command; a SIGINT or SIGTERM ends it with one line and exit 130 or 143 (128 + the signal),
        whatever exception the interrupted code turned it into (DataLoader: a RuntimeError; Lightning: exit 1)."""
        received: list[int] = []
        try:
            with _interrupt_on_signals(received):
                result = self._invoke(ctx)
        except BaseException as exc:
            if not received:
                raise
            raise PlanktonFailure(_interrupted(received[0], ctx.invoked_subcommand), 128 + received[0]) from exc
        if received:  # the command caught the interruption itself and returned: it may have stopped early
            raise PlanktonFailure(_interrupted(received[0], ctx.invoked_subcommand), 128 + received[0])
        return result

    def _invoke(self, ctx: click.Context) -> object:
        """The ONE place where exceptions become exit statuses (see `plankton_cli.core.errors`).

        A known failure prints one line naming the file; anything else (a bug) one line too, unless `-v`
        was given, which shows the traceback of either."""
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if ctx.params.get("verbose") and exc.__cause__ is not None:  # a command translated a library error
                click.echo("".join(traceback.format_exception(exc.__cause__)), err=True, nl=False)
            if isinstance(exc, click.BadParameter):  # a bad value from the config file names the file and key
                from plankton_cli.cli.config_errors import bad_config_value

                config_error = bad_config_value(exc, ctx.params.get("config"))
                if config_error is not None:
                    raise PlanktonFailure(str(config_error), config_error.exit_code) from exc
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            from plankton_cli.core.errors import as_plankton_error

            error = as_plankton_error(exc)
            if error is not None:
                error = _in_store(ctx.meta.get("plankton.store"), error, exc)
            if ctx.params.get("verbose"):
                click.echo(traceback.format_exc(), err=True, nl=False)
            if error is None:
                raise PlanktonFailure(f"{type(exc).__name__}: {exc} (a bug: run with -v for the traceback and "
                                      f"report it)", 1) from exc
            raise PlanktonFailure(str(error), error.exit_code) from exc

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


def _interrupted(signum: int, command: str | None) -> str:
    again = ("run it again with --resume to continue from its last checkpoint" if command == "pretrain"
             else "run the same command again to finish")
    return (f"interrupted by {signal.Signals(signum).name}: store commits that finished are kept, the unfinished "
            f"one is rolled back; {again}")


_SUMMARIES = {
    "ingest": "Read IFCB bins, EcoTaxa exports or image folders into the store.",
    "info": "Show what the store holds: counts by dataset, instrument, label and source.",
    "check": "Verify the store's files, manifest and ids; --repair makes it whole again.",
    "pad": "Crop instrument legends and pad every image to a square with its own background.",
    "features": "Measure every object's morphometrics (scikit-image) into the store's features dataset.",
    "stats": "Compute (or read the cached) pixel mean and std of a dataset, for normalisation.",
    "finetune": "Fine-tune a ViT with few labels and test it by cross-validation.",
    "distill": "Distil a fine-tuned teacher into a small student for fast CPU prediction.",
    "predict": "Classify objects with a fine-tuned model and write the results.",
    "select": "Pick the objects experts should validate next (active learning), as a list and EcoTaxa files.",
    "export": "Write a model as ONNX, or as a Hugging Face Hub folder with its model card.",
    "evaluate": "Metrics, tables and plots from fine-tune runs or from predictions.",
    "summarize": "Counts and concentrations (per mL) per class and bin, sample or day, from a model's predictions.",
    "taxa": "Build an EcoTaxa taxon map (label -> taxon name and category id) from an EcoTaxa export or taxonomy.",
    "report": "Write one HTML page about a night's classification: counts, new bins, rejections, drift.",
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
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {config}: {exc}", path=config) from exc
    shared = {k: v for k, v in data.items() if not isinstance(v, dict)}
    misplaced = sorted(k for k, v in shared.items() if k in COMMANDS)
    if misplaced:  # `ingest = 5`: almost certainly meant as a [ingest] table
        raise ConfigError(f"config {config}: {', '.join(misplaced)} must be a table ([{misplaced[0]}]), "
                          f"not a value", path=config)
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
    ctx.default_map = _default_map(cli, ctx, config)
    setup_logging(verbose=verbose, quiet=quiet, log_file=log_file)
    ctx.obj = {"quiet": quiet}


def main(args: list[str] | None = None) -> None:
    cli.main(args=args, prog_name="plankton")


__all__ = ["cli", "main", "COMMANDS"]
