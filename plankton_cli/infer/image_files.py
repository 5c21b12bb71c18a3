"""Image files → a model's answers, exactly as `plankton predict --format folders FILE...` gives them.

The files are read by the image-folder reader (so an object's id is `<its folder's name>/<file name>`, which seeds
its padding noise) and scored by `plankton_cli.infer.predict.Scorer` (the model's recorded preprocessing): the same file
in a folder of the same name gets the same probabilities here and from `plankton predict`. The model is loaded once
per process and kept (`scorer`), which is what a server's warm-up needs.

Imports torch (through the scorer) only when a model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from plankton_cli.core.errors import UsageError
from plankton_cli.core.records import ReadOptions, Rejection

if TYPE_CHECKING:
    from plankton_cli.infer.predict import Scorer


@dataclass
class Answer:
    """What the model says about one file; `probabilities` is None (and `error` says why) for an unreadable one."""

    path: str
    object_id: str
    probabilities: np.ndarray | None
    label: str  # after the model's thresholds: `unclassified` below its class's threshold; "" when unreadable
    label_auto: str  # the top class, whatever the thresholds
    error: str | None = None

    def top(self, classes: list[str], k: int) -> list[tuple[str, float]]:
        """The k most probable classes and their probabilities, most probable first."""
        if self.probabilities is None:
            return []
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(classes[i], float(self.probabilities[i])) for i in order]


def model_from_env(variable: str) -> Path:
    """The model file named by environment variable `variable` (how DEEPaaS and CytoProcess, which load us by
    name, are told which model to serve); one clear line when it is unset or names nothing."""
    value = os.environ.get(variable)
    if not value:
        raise UsageError(f"${variable} is not set: point it at a fine-tuned model (model.safetensors or its folder)")
    path = Path(value).expanduser()
    if not path.exists():
        raise UsageError(f"{path}: no such model file (from ${variable})", path=path)
    return path


@lru_cache(maxsize=2)
def scorer(model_path: Path) -> Scorer:
    """The model at `model_path`, loaded on first use and kept for the process (a server's every request)."""
    from plankton_cli.infer.predict import Scorer

    return Scorer(model_path)


def classify_files(model: Scorer, paths: list[Path], *, folder: Path | None = None, instrument: str | None = None,
                   metadata: list[dict[str, str]] | None = None, batch_size: int = 64) -> list[Answer]:
    """One answer per path, in the order given (an unreadable image gets an answer with its error). With `folder`
    (which holds every path), the folder is read as `plankton predict FOLDER` reads it: ids relative to it.
    `metadata` (one mapping per path) joins what the reader found, as a source's columns would (a model trained
    with `object_*` features reads them there)."""
    from plankton_cli.infer.predict import _batches, _source_items

    errors: dict[str, Rejection] = {}

    def rejected(rejection: Rejection) -> None:
        errors[rejection.source_file] = rejection

    options = ReadOptions(instrument=instrument, label_from="none")
    sources = [Path(folder)] if folder is not None else [Path(p) for p in paths]
    items = _source_items(sources, "folders", options, rejected)
    given = {str(Path(p).absolute()): m for p, m in zip(paths, metadata or [])}
    answers: dict[str, Answer] = {}
    for batch in _batches(items, batch_size):
        for item in batch:
            item.metadata.update(given.get(str(item.source_file), {}))
        probabilities, _ = model.score(batch)
        for item, p in zip(batch, probabilities):
            answers[str(item.source_file)] = Answer(str(item.source_file), item.object_id, p, model.label(p),
                                                    model.classes[int(p.argmax())])
    out = []
    for path in paths:
        key = str(Path(path).absolute())
        if key in answers:
            out.append(answers[key])
        else:
            rejection = errors.get(key)
            reason = rejection.reason if rejection else ("not an image file" if Path(path).exists() else "no such file")
            out.append(Answer(str(path), f"{Path(path).parent.name}/{Path(path).name}", None, "", "", reason))
    return out
