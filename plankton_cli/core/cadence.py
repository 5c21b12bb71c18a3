"""``--checkpoint-every``: a number of optimizer steps, or a span of training time.

Steps suit small runs and tests; time suits the GPU, where one checkpoint of a ViT-L with its AdamW state (3.9 GB)
took 7.9 s on an H200 machine, as long as 66 of its training steps, so a checkpoint every 100 steps would cost ~40 %
of the run (``bench/pretrain_gpu.py``, docs/benchmarks.md). Time bounds the work a kill loses whatever the model.
"""

from __future__ import annotations

import re
from datetime import timedelta

UNITS = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
_EVERY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|min|m|h)?\s*", re.IGNORECASE)


def parse_every(value: int | str) -> int | timedelta:
    """``100`` → 100 optimizer steps; ``90s``, ``10min``, ``2h`` → that much training time."""
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"expected at least 1 step, got {value}")
        return value
    found = _EVERY.fullmatch(value)
    if not found:
        raise ValueError(f"expected optimizer steps (100) or a time (90s, 10min, 2h), got {value!r}")
    number, unit = found.group(1), found.group(2)
    if unit is None:
        if "." in number or int(number) < 1:
            raise ValueError(f"expected a whole number of steps, at least 1, got {value!r}")
        return int(number)
    seconds = float(number) * UNITS[unit.lower()]
    if seconds <= 0:
        raise ValueError(f"expected a time above zero, got {value!r}")
    return timedelta(seconds=seconds)
