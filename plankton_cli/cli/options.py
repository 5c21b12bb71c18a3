"""Options every command shares."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click


def default_workers(minimum: int = 0) -> int:
    """Worker processes by default: one CPU left for the main process, at most 8 (more rarely helps)."""
    return max(minimum, min(8, (os.cpu_count() or 1) - 1))


WORKERS_DEFAULT_TEXT = "min(8, CPUs - 1)"


@contextmanager
def usage_errors(*kinds: type[Exception]) -> Iterator[None]:
    """A ValueError (or one of `kinds`) a command's run raises about its arguments is a usage error (exit 2). Not
    pyarrow's (its ArrowInvalid is a ValueError): that is a corrupt store file, for the error model to name (exit 74)."""
    caught: tuple[type[Exception], ...] = (ValueError, *kinds)
    try:
        yield
    except caught as exc:
        import pyarrow as pa

        if isinstance(exc, pa.ArrowException):
            raise
        raise click.UsageError(str(exc)) from exc


class Command(click.Command):
    """A command that reports every missing required option in one run (Click stops at the first)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # Click's parser consumes the list
        try:
            return super().parse_args(ctx, args)
        except click.MissingParameter as first:
            try:
                opts, _, _ = self.make_parser(ctx).parse_args(args=list(given))
            except click.UsageError:
                raise first from None
            missing = [p.get_error_hint(ctx) for p in self.get_params(ctx)
                       if p.required and p.value_is_missing(p.consume_value(ctx, opts)[0])]
            if len(missing) < 2:
                raise
            raise click.UsageError(f"Missing options {', '.join(missing)}.", ctx) from None


def missing_store(store: Path) -> str:
    """The one message for a store that is not there, from every command that needs one."""
    return (f"no store at {store}: give your store with --store DIR or $PLANKTON_STORE, "
            f"or create one with `plankton ingest SOURCE --store {store}`")


def require_store(store: Path) -> None:
    """Exit 2 with `missing_store` unless `store` is a plankton store (it has store.json)."""
    from plankton_cli.core.errors import UsageError
    from plankton_cli.store import Store

    if not Store(store).exists:
        raise UsageError(missing_store(store), path=store)


def _remember_store(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    # ctx.meta is shared by the whole command chain: the CLI edge looks here to name a corrupt store file.
    ctx.meta["plankton.store"] = value
    return value


store_option = click.option(
    "--store",
    callback=_remember_store,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PLANKTON_STORE",
    default="plankton-store",
    show_default="$PLANKTON_STORE, else ./plankton-store",
    help="The store directory.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
lock_timeout_option = click.option(
    "--lock-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for another writer to release the store; then exit 75.",
)


class CheckpointEvery(click.ParamType):
    """``--checkpoint-every``: optimizer steps (``100``, kept as an int) or training time (``10min``, kept as the
    text, which ``config.json`` records as given); ``plankton_cli.core.cadence`` reads both."""

    name = "steps|time"

    def convert(self, value, param, ctx):
        from plankton_cli.core.cadence import parse_every

        try:
            every = parse_every(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)
        return every if isinstance(every, int) else str(value).strip()


def checkpoint_every_option(what: str) -> Any:
    return click.option(
        "--checkpoint-every", type=CheckpointEvery(), default="10min", show_default=True, metavar="STEPS|TIME",
        help=f"Write checkpoints/last.ckpt every STEPS optimizer steps and at each epoch end (e.g. 100), or every "
             f"TIME of training (90s, 10min, 2h: checked at each step and epoch end), and when {what} ends. Time "
             "suits a GPU, where writing a large model's checkpoint can take as long as tens of its steps.")


class InitSource(click.ParamType):
    """``--init``: a local file or folder (which must exist), or a hub name (``hf-hub:ORG/NAME[@REV]``,
    ``timm:NAME``) left as text: it is resolved where the command runs (``plankton_cli.train.hub``), so a SLURM job
    fetches it on its node, from its cache. ``extra`` names other accepted words (finetune's ``scratch``)."""

    name = "init"

    def __init__(self, extra: tuple[str, ...] = ()):
        self.extra = extra

    def convert(self, value, param, ctx):
        from plankton_cli.train.hub import HF_HUB, TIMM

        value = str(value)
        if value in self.extra or value.startswith((HF_HUB, TIMM)):
            return value
        if not Path(value).exists():
            self.fail(f"{value} does not exist: give a local encoder or checkpoint file, hf-hub:ORG/NAME[@REV] or "
                      f"timm:NAME{''.join(f' or {word!r}' for word in self.extra)}", param, ctx)
        return Path(value)


def hub_architecture(ctx: click.Context, init, option: str) -> tuple[str, dict[str, int]] | None:
    """The architecture a hub ``--init`` names when the user did not give ``option`` (``--model``, ``--student``):
    a hub encoder then builds its own architecture, where a command's default would not fit its weights."""
    from click.core import ParameterSource

    if ctx.get_parameter_source(option) not in (ParameterSource.DEFAULT, None):
        return None
    from plankton_cli.train.hub import architecture_of

    return architecture_of(init)


def _installed_logger(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from plankton_cli.train.trackers import require

    return require(value)  # a tracker whose package is missing: one line naming the pip install, exit 2


def tracker_options(command):
    """`--logger` and `--logger-uri` (pretrain, finetune, distill): where the run is tracked besides metrics.csv."""
    command = click.option(
        "--logger-uri", metavar="URI",
        help="MLflow tracking URI: a server (http://...) or a local folder [default: $MLFLOW_TRACKING_URI, else "
             "./mlruns].")(command)
    return click.option(
        "--logger", type=click.Choice(["csv", "tensorboard", "mlflow"]), default="csv", show_default=True,
        callback=_installed_logger,
        help="Also track the run's recipe, per-epoch metrics and results in TensorBoard (RUN/tensorboard/) or "
             "MLflow; RUN/metrics.csv is always written. Needs pip install 'plankton-cli[tensorboard]' or "
             "'plankton-cli[mlflow]'.")(command)
