"""Lightning's own log levels, kept apart from the CLI so the training code below it can reset them."""

from __future__ import annotations

import logging

LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric", "lightning")
_lightning_level = logging.WARNING


def set_lightning_level(level: int) -> None:
    """The level `plankton -v` asks for (INFO) or the default (WARNING); applied now and by `quiet_lightning`."""
    global _lightning_level
    _lightning_level = level
    quiet_lightning()


def quiet_lightning() -> None:
    """Lightning's banners (accelerator, litlogger/litmodels tips) are noise next to our own summaries: only with -v.

    Importing pytorch_lightning or lightning_fabric sets their loggers to INFO, after `setup_logging` ran (commands
    import them lazily), so the module that imports them calls this again."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(_lightning_level)
