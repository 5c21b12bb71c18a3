"""Warnings when things compared or combined do not belong together: a model predicting images of an instrument it
never saw (a UVP6 model on IFCB ROIs), or evaluation runs from different stores, class sets or instruments drawn
on one curve. Each returns plain sentences; the commands log them and put them in their `--json` summaries."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence


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


_ECOTAXA_ID = re.compile(r"^(?P<name>.*?)__(?P<id>\d+)$")  # a class folder `Copepoda__6666` (uvpec, EcoTaxa DOI)


def _one_edit_apart(a: str, b: str) -> bool:
    """At most one character inserted, deleted or replaced (Levenshtein distance <= 1), in linear time."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    return a[i + (len(a) == len(b)):] == b[i + 1:]


def label_twins(labels: Iterable[str], new: Iterable[str]) -> list[str]:
    """One sentence per pair of labels that look like one class spelled twice, of which at least one is in `new`
    (the labels the user just added: an old pair was warned about when it came in).

    The rule, cheap and predictable rather than clever: two labels are twins when they carry the same EcoTaxa id
    (`Copepda__6666` and `Copepoda__6666`), or when their names without the id, compared without case, spaces,
    `_` and `-`, are equal or, for names of 5 characters or more, one edit apart (`Copepda` / `Copepoda`)."""
    def key(label: str) -> tuple[str, str | None]:
        match = _ECOTAXA_ID.match(label)
        name, taxon = (match["name"], match["id"]) if match else (label, None)
        return re.sub(r"[\s_\-]+", "", name).casefold(), taxon

    new = set(new)
    every = sorted(set(labels) | new)
    keys = {label: key(label) for label in every}
    sentences = []
    for i, a in enumerate(every):
        for b in every[i + 1:]:
            if a not in new and b not in new:
                continue
            (name_a, id_a), (name_b, id_b) = keys[a], keys[b]
            if id_a is not None and id_a == id_b:
                why = f"the same EcoTaxa id {id_a}"
            elif id_a is not None and id_b is not None:  # two EcoTaxa ids: two taxa, however alike the names
                continue
            elif name_a == name_b or (min(len(name_a), len(name_b)) >= 5 and _one_edit_apart(name_a, name_b)):
                why = "names one letter apart" if name_a != name_b else "the same name written differently"
            else:
                continue
            sentences.append(f"labels {a!r} and {b!r} look like one class spelled twice ({why}): if they are, "
                             f"fix the spelling in the source and ingest it again; else give one a distinct name")
    return sentences
