"""Kept at this path for third-party plugins and scripts, which import it; the module lives in plankton_cli/core/."""

from plankton_cli.core.plugins import (GROUPS, BrokenPlugin, PluginError, PluginInfo, Reader, describe, load,
                                       load_all, names, sniff_reader)

__all__ = ["GROUPS", "BrokenPlugin", "PluginError", "PluginInfo", "Reader", "describe", "load", "load_all", "names",
           "sniff_reader"]
