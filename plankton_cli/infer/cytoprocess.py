"""A plankton model as CytoProcess's classifier (`cytoprocess predict --model SPEC`).

CytoProcess (CytoSense `.cyz` → EcoTaxa) loads `SPEC` = `path/to/model.py::func` or `module.func` and calls
`func(image_paths, features_df)` once per sample: one row per image, the cytometric and image features beside them.
It wants a frame with as many rows, in the same order, with an `annotation_category` column; it prefixes every
column with `object_` and sets `annotation_status` to `predicted` where the frame does not set it.

`classify` answers with the model named by `$PLANKTON_CYTOPROCESS_MODEL`, preprocessing each image exactly as
`plankton predict` does (instrument `CytoSense`, or `$PLANKTON_CYTOPROCESS_INSTRUMENT`), and writes the columns our
EcoTaxa writer writes: `annotation_category` and `annotation_status` = `predicted`, or neither for an object below
its class's threshold (it stays unclassified in EcoTaxa), `score` (the top probability) and `label_auto` (the top
class). CytoProcess's features reach a model trained with EcoTaxa features under their EcoTaxa names
(`object_<column>`), as in a CytoProcess project exported from EcoTaxa.

    export PLANKTON_CYTOPROCESS_MODEL=runs/ft/fold-0/model.safetensors
    cytoprocess predict --model plankton_cli.infer.cytoprocess.classify PROJECT

`write_model_py(model, out)` writes a stand-alone `model.py` naming the model itself, for `--model model.py::classify`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from plankton_cli.core.atomic import atomic_write_bytes
from plankton_cli.core.errors import DataError
from plankton_cli.core.writers import UNCLASSIFIED

MODEL_VARIABLE = "PLANKTON_CYTOPROCESS_MODEL"
INSTRUMENT_VARIABLE = "PLANKTON_CYTOPROCESS_INSTRUMENT"
INSTRUMENT = "CytoSense"  # CytoProcess reads CytoSense files only


def classify(paths: list[str], features: Any = None) -> Any:
    """CytoProcess's predict function: one row per image of `paths`, in order (see the module docstring)."""
    from plankton_cli.infer.image_files import model_from_env

    return classify_with(model_from_env(MODEL_VARIABLE), paths, features)


def classify_with(model_path: str | Path, paths: list[str], features: Any = None) -> Any:
    """`classify` with the model named here rather than by the environment (what a generated model.py calls)."""
    import pandas as pd

    from plankton_cli.infer.image_files import classify_files, scorer

    model = scorer(Path(model_path).expanduser())
    instrument = os.environ.get(INSTRUMENT_VARIABLE) or INSTRUMENT
    columns = [] if features is None else [{f"object_{k}": str(v) for k, v in row.items() if pd.notna(v)}
                                           for row in features.to_dict("records")]
    answers = classify_files(model, [Path(p) for p in paths], instrument=instrument, metadata=columns or None)
    failed = [a for a in answers if a.error]
    if failed:  # CytoProcess reports this for the sample and goes on with the next one
        raise DataError(f"{len(failed)} image(s) unreadable, e.g. {failed[0].path}: {failed[0].error}",
                        path=failed[0].path)
    classified = [a.label != UNCLASSIFIED for a in answers]
    return pd.DataFrame({
        "annotation_category": [a.label if ok else "" for a, ok in zip(answers, classified)],
        "annotation_status": ["predicted" if ok else "" for ok in classified],
        "score": [float(a.probabilities.max()) for a in answers],
        "label_auto": [a.label_auto for a in answers],
    })


MODEL_PY = '''"""CytoProcess classifier: {model}.

    cytoprocess predict --model {out}::classify PROJECT

Needs plankton-cli installed (pip install 'plankton-cli[train]') in CytoProcess's environment.
"""

from plankton_cli.infer.cytoprocess import classify_with

MODEL = {model_repr}


def classify(paths, features):
    return classify_with(MODEL, paths, features)
'''


def write_model_py(model_path: str | Path, out: str | Path) -> Path:
    """Write `out`, a `model.py` CytoProcess loads with `--model out::classify`, serving the model at `model_path`
    (made absolute: CytoProcess runs from anywhere)."""
    model = Path(model_path).expanduser().absolute()
    out = Path(out)
    text = MODEL_PY.format(model=model.name, out=out, model_repr=repr(str(model)))
    atomic_write_bytes(out, text.encode())
    return out
