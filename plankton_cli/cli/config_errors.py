"""A bad value from the config file, reported as the file and key it came from.

Config values reach Click as defaults (`default_map`, see `plankton_cli.cli._default_map`), so Click blames the
option (`Invalid value for '--taxon-map'`): an option the user never typed. This turns such an error into one
naming `plankton.toml: [predict] taxon_map = "..."`, where the user can fix it.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import click
from click.core import ParameterSource

from plankton_cli.core.errors import ConfigError


def bad_config_value(exc: click.BadParameter, config: Path | None) -> ConfigError | None:
    """The `ConfigError` for `exc` when the bad value came from the config file (`config`, else ./plankton.toml);
    None when the user gave it some other way (command line, environment), where Click's message is right."""
    ctx, param = exc.ctx, exc.param
    if ctx is None or not isinstance(param, click.Option) or param.name is None or ctx.command.name is None:
        return None
    if ctx.get_parameter_source(param.name) is not ParameterSource.DEFAULT_MAP:
        return None
    config = config or Path("plankton.toml")
    data = tomllib.loads(config.read_text())  # read fine moments ago, when it became the defaults
    names = {name.lstrip("-").replace("-", "_") for name in [param.name, *getattr(param, "opts", [])]}
    command = ctx.command.name
    table = data.get(command, {})
    # The key as spelled in the file; a [command] table's key wins over a top-level one, as in `_default_map`.
    in_table = [k for k in table if k.replace("-", "_") in names]
    top_level = [k for k in data if k.replace("-", "_") in names and not isinstance(data[k], dict)]
    if in_table:
        where, value = f"[{command}] {in_table[0]}", table[in_table[0]]
    elif top_level:
        where, value = top_level[0], data[top_level[0]]
    else:  # not found in the file after all: Click's own message is the better one
        return None
    reason = exc.message.rstrip(".")
    if isinstance(param.type, click.Path) and isinstance(value, str) and not os.path.exists(value):
        reason = "not found" if os.path.isabs(value) else f"not found (relative to the current folder, {Path.cwd()})"
    option = max(param.opts, key=len)  # --taxon-map, not a short alias
    return ConfigError(f"{config}: {where} = {json.dumps(value, ensure_ascii=False, default=str)}: {reason}; "
                       f"fix or remove it there, or give {option} on the command line", path=config)
