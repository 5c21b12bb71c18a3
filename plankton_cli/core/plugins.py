"""The plugin registry: readers, writers and compute backends, discovered through entry points.

Built-in plugins (in `plankton_plugins`) register through the same `pyproject.toml` entry points a third party
uses; nothing here knows their names. A plugin that fails to import becomes a `BrokenPlugin`: `plankton plugins`
lists it with its error, and only a command that asks for it by name fails.

A third-party package adds, e.g.::

    [project.entry-points."plankton.readers"]
    cytosense = "plankton_cytosense:CytoSenseReader"

The object an entry point names is a class (instantiated with no arguments) or an instance that follows the
matching protocol below.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from plankton_cli.core.records import ReadOptions, Record, Rejection, Source

GROUPS = {
    "reader": "plankton.readers",
    "writer": "plankton.writers",
    "backend": "plankton.backends",
}


@runtime_checkable
class Reader(Protocol):
    """Turns sources on disk into records. Streams: never holds a whole source in memory.

    - `name`: what `plankton ingest --format NAME` calls it (the entry-point name).
    - `sniff(path)`: True when `path` (a file or folder given on the command line) looks like this format.
    - `discover(path, options)`: the sources under `path`, in a stable order.
    - `read(source, options)`: every object of one source, as `Record`s, or `Rejection`s for the ones that are
      malformed. Never raises for bad input; an unreadable source yields one `Rejection` per object it would hold
      (or one with `source_row=None` when it cannot even tell).
    """

    name: str
    description: str
    # optional: sniff_priority: int = 0  (higher is asked first by --format auto)

    def sniff(self, path: Path) -> bool: ...

    def discover(self, path: Path, options: ReadOptions) -> Iterable[Source]: ...

    def read(self, source: Source, options: ReadOptions) -> Iterator[Record | Rejection]: ...


@dataclass(frozen=True)
class BrokenPlugin:
    """Stands in for a plugin whose entry point failed to load."""

    name: str
    kind: str
    package: str
    error: str


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str
    package: str
    version: str
    target: str  # "module:attr"
    broken: str | None = None  # the load error, if any
    description: str = ""  # the plugin's own `description`


class PluginError(LookupError):
    """Asked for a plugin that is not installed or failed to load."""


def _entry_points(kind: str) -> list[metadata.EntryPoint]:
    eps = metadata.entry_points(group=GROUPS[kind])
    return sorted(eps, key=lambda ep: ep.name)


def _package(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


_cache: dict[tuple[str, str], Any] = {}


def load(kind: str, name: str) -> Any:
    """The plugin object `name` of `kind`, loaded on first use. Raises `PluginError` with the cause."""
    key = (kind, name)
    if key in _cache:
        return _cache[key]
    matches = [ep for ep in _entry_points(kind) if ep.name == name]
    if not matches:
        known = ", ".join(ep.name for ep in _entry_points(kind)) or "none"
        raise PluginError(f"no {kind} plugin named {name!r} (installed: {known})")
    ep = matches[0]
    try:
        obj = ep.load()
        plugin = obj() if isinstance(obj, type) else obj
    except Exception as exc:  # a plugin's bug must never take the CLI down with it
        raise PluginError(f"{kind} plugin {name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from exc
    _cache[key] = plugin
    return plugin


def names(kind: str) -> list[str]:
    """Names of the installed plugins of `kind`, without importing them."""
    return [ep.name for ep in _entry_points(kind)]


def load_all(kind: str) -> dict[str, Any]:
    """Every loadable plugin of `kind`; broken ones are left out (see `describe`)."""
    out = {}
    for name in names(kind):
        try:
            out[name] = load(kind, name)
        except PluginError:
            pass
    return out


def describe() -> list[PluginInfo]:
    """Every installed plugin of every kind, loading each to find out whether it works."""
    infos = []
    for kind in GROUPS:
        for ep in _entry_points(kind):
            package, version = _package(ep)
            try:
                description, broken = str(getattr(load(kind, ep.name), "description", "") or ""), None
            except PluginError as exc:
                description, broken = "", str(exc.__cause__ or exc)
            infos.append(PluginInfo(ep.name, kind, package, version, ep.value, broken, description))
    return infos


def sniff_reader(path: Path) -> str | None:
    """The name of the first reader whose `sniff` accepts `path`, or None.

    Readers are asked in order of their optional `sniff_priority` (higher first, default 0), so specific formats
    (IFCB, EcoTaxa) win over generic ones (a folder of images).
    """
    readers = sorted(load_all("reader").items(), key=lambda kv: -getattr(kv[1], "sniff_priority", 0))
    for name, reader in readers:
        try:
            if reader.sniff(path):
                return name
        except Exception:  # a broken sniff is that plugin's problem, not the user's
            continue
    return None
