"""Warnings when things compared or combined do not belong together: a model predicting images of an instrument it
never saw (a UVP6 model on IFCB ROIs), or evaluation runs from different stores, class sets or instruments drawn
on one curve. Each returns plain sentences; the commands log them and put them in their `--json` summaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def model_instruments(info: Mapping) -> set[str] | None:
    """The instruments a model was fine-tuned on (`instruments`; models from before it: the instruments of its
    per-instrument padding rules, `pad_settings` entries `<instrument>: pad-v1 ...`, which name every instrument
    padded in the store, trained on or not); None when the model does not say."""
    if info.get("instruments"):
        return set(info["instruments"])
    rules = info.get("pad_settings") or []
    names = {str(rule).split(":", 1)[0].strip() for rule in rules if ":" in str(rule)}
    return names or None


def instrument_warnings(info: Mapping, instruments: Mapping[str, int], model_id: str) -> list[str]:
    """One sentence per instrument of the objects to predict that the model never saw; `instruments` maps each
    to its number of objects."""
    known = model_instruments(info)
    if known is None:
        return []
    return [f"model {model_id} was fine-tuned on {', '.join(sorted(known))} images, not {instrument}: "
            f"its {count:,} {instrument} objects are predicted with another "
            f"instrument's look (expect poor results; fine-tune with {instrument} labels for them)"
            for instrument, count in sorted(instruments.items()) if instrument and instrument not in known]


def run_warnings(runs: Sequence[Mapping]) -> list[str]:
    """Differences between evaluation runs that make their numbers incomparable: store, classes, instruments.
    Each run is a mapping with `run` and, when known, `store`, `classes` and `instruments`."""
    warnings = []
    for key, what in (("store", "stores"), ("classes", "class sets"), ("instruments", "instrument selections")):
        values: dict[str, list[str]] = {}
        for run in runs:
            value = run.get(key)
            if value is not None:
                values.setdefault(repr(sorted(value) if isinstance(value, list) else value), []).append(run["run"])
        if len(values) > 1:
            groups = "; ".join(", ".join(names) for names in values.values())
            warnings.append(f"the runs come from different {what} ({groups}): their numbers are not comparable")
    return warnings
