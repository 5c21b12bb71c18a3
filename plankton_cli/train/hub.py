"""Encoders from the Hugging Face Hub: ``--init hf-hub:ORG/NAME[@REV]`` and ``--init timm:NAME`` as local files.

A hub name is resolved where the command runs (a SLURM job resolves it on its node) by ``huggingface_hub``, through
its cache (``HF_HOME`` / ``HF_HUB_CACHE``): a file already there is not downloaded again, and with
``HF_HUB_OFFLINE=1`` nothing is downloaded at all. What comes back is the cached ``model.safetensors`` (or an older
repository's ``pytorch_model.bin``), which ``--init`` then loads exactly as a local file (``load_vit_weights``), and
the architecture the repository's timm ``config.json`` names (``architecture`` + ``model_args``), so that a command
given no ``--model`` builds the encoder those weights belong to.

- ``hf-hub:ORG/NAME@REV``: a repository, at a branch, tag or commit (default ``main``); timm's spelling.
- ``timm:NAME``: timm's pretrained tag, e.g. ``timm:vit_base_patch16_224.mae``; the repository is the one timm's
  pretrained config names (``timm/vit_base_patch16_224.mae``).

A repository written by ``plankton export --format hf`` carries its encoder info (mean, std, padding) in the
safetensors header, so it loads as our own encoder export does.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plankton_cli.core.errors import UsageError

HF_HUB = "hf-hub:"
TIMM = "timm:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm pushes, newest first


def is_hub_name(init: str | Path | None) -> bool:
    """True for ``hf-hub:...`` and ``timm:...``: a name to resolve, not a local path."""
    return isinstance(init, str) and init.startswith((HF_HUB, TIMM))


@dataclass
class HubEncoder:
    """A hub encoder in the local cache."""

    name: str  # as given: hf-hub:ORG/NAME[@REV] or timm:NAME
    repo: str
    revision: str | None
    path: Path  # the cached weights file
    architecture: str | None = None  # from config.json, or timm's pretrained config
    model_args: dict[str, Any] = field(default_factory=dict)  # the architecture's overrides (our exports' shapes)


def parse(name: str) -> tuple[str, str | None, str | None]:
    """``(repo, revision, architecture)`` a hub name stands for; the architecture only for ``timm:``."""
    if name.startswith(HF_HUB):
        repo, _, revision = name[len(HF_HUB):].partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise UsageError(f"--init {name}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
        return repo, revision or None, None
    from timm.models import get_pretrained_cfg

    tag = name[len(TIMM):]
    cfg = get_pretrained_cfg(tag)
    if cfg is None:
        raise UsageError(f"--init {name}: timm has no pretrained weights called {tag!r} (e.g. timm:vit_base_patch16_224.mae)")
    if not cfg.hf_hub_id:
        raise UsageError(f"--init {name}: timm's {tag} weights are not on the Hugging Face Hub ({cfg.url or cfg.file})")
    return cfg.hf_hub_id, None, cfg.architecture


@functools.cache  # a command asks twice (architecture, then weights): one look-up
def resolve(name: str) -> HubEncoder:
    """The cached weights and architecture of a hub name, downloading them unless ``HF_HUB_OFFLINE`` is set.

    Every failure is one `UsageError` naming the repository; one that is not in the cache says how to fetch it."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision, architecture = parse(name)
    where = f"{repo}{f'@{revision}' if revision else ''}"

    def fetch(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision))
        except LocalEntryNotFoundError as error:
            # Not cached, and offline or unreachable: say which, and how to get it here.
            why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else
                   f"the Hub could not be reached ({error.__cause__ or error})")
            fetch_it = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
            raise UsageError(f"--init {name}: {where} is not in the Hugging Face cache {constants.HF_HUB_CACHE} and "
                             f"{why}; download it first where there is network (`{fetch_it}`, with the same HF_HOME "
                             "or HF_HUB_CACHE) or unset HF_HUB_OFFLINE") from error
        except GatedRepoError as error:
            raise UsageError(f"--init {name}: {repo} is gated: accept its terms on huggingface.co and log in "
                             "(`hf auth login`)") from error
        except RepositoryNotFoundError as error:
            raise UsageError(f"--init {name}: no repository {repo} on the Hub (or it is private)") from error
        except RevisionNotFoundError as error:
            raise UsageError(f"--init {name}: {repo} has no revision {revision!r}") from error
        except EntryNotFoundError:
            return None

    config_file = fetch("config.json")
    weights = next((path for path in map(fetch, WEIGHT_FILES) if path is not None), None)
    if weights is None:
        raise UsageError(f"--init {name}: {where} holds none of {', '.join(WEIGHT_FILES)}")
    model_args: dict[str, Any] = {}
    if config_file is not None:
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UsageError(f"--init {name}: {config_file} is not readable JSON ({error})") from error
        architecture = architecture or config.get("architecture")
        model_args = dict(config.get("model_args") or {})
    return HubEncoder(name, repo, revision, weights, architecture, model_args)


def local_init(init: str | Path) -> Path:
    """The local file an ``--init`` value stands for: a hub name's cached weights, else the path itself."""
    return resolve(str(init)).path if is_hub_name(init) else Path(init)


ARCH_ARGS = ("patch_size", "depth", "embed_dim", "num_heads")


def architecture_of(init: str | Path) -> tuple[str, dict[str, int]] | None:
    """``(timm name, ViT overrides)`` a hub encoder's config names; None for a local file or a repository that says
    nothing (the command's ``--model`` is then needed, as for any foreign checkpoint)."""
    if not is_hub_name(init):
        return None
    encoder = resolve(str(init))
    if encoder.architecture is None:
        return None
    return encoder.architecture, {k: int(v) for k, v in encoder.model_args.items() if k in ARCH_ARGS}
