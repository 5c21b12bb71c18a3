"""Morphometric features: how fast, and how informative, against references measured in the same run.

(a) Speed on one core: ``morphometrics.measure`` per image against ``pad.pad_to_square`` (what every image already
    costs in ``plankton pad``), on the same decoded images; the ratio is measure time / pad time.
(b) Information: 5-fold stratified macro-F1 of a random forest on our ``features.*`` alone against a logistic
    regression on 32-px pixels (issue 9's reference baseline), on the same images and folds.

Images: the UVP6 vignettes in ../shared/data (1,250, 10 classes) when present, else the bundled planktonclass demo.

    python bench/features.py [--limit 1250]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
UVP6 = Path(os.environ.get("PLANKTON_SHARED_DATA", REPO.parent / "shared" / "data")) / "images" / "uvp6-vignettes"
DEMO = REPO / "tests/data/planktonclass-demo/demo-images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1250, help="at most this many images")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    from plankton_cli.prepare.features.morphometrics import PIXEL_FEATURES, NoObject, measure
    from plankton_cli.prepare.square_pad import pad_to_square

    root = UVP6 if UVP6.is_dir() else DEMO
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[: args.limit]
    images = [np.asarray(Image.open(p).convert("L")) for p in paths]
    labels = np.array([p.parent.name for p in paths])
    print(f"{len(images)} images from {root}, {len(set(labels))} classes")

    t0 = time.perf_counter()
    for i, img in enumerate(images):
        pad_to_square(img, str(i))
    pad_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows, failed = [], 0
    for img in images:
        try:
            values = measure(img)
            rows.append([values[name] if values[name] is not None else np.nan for name in PIXEL_FEATURES])
        except (NoObject, ValueError):
            failed += 1
            rows.append([np.nan] * len(PIXEL_FEATURES))
    measure_s = time.perf_counter() - t0
    n = len(images)
    print(f"(a) one core: measure {n / measure_s:.0f} img/s ({1000 * measure_s / n:.2f} ms), pad_to_square "
          f"{n / pad_s:.0f} img/s ({1000 * pad_s / n:.2f} ms); measure/pad time ratio {measure_s / pad_s:.2f}; "
          f"no object found in {failed}")

    features = np.nan_to_num(np.array(rows, np.float64))
    pixels = np.stack([np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BILINEAR), np.float32)
                       .ravel() / 255 for img in images])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    scores: dict[str, list[float]] = {"random forest on features.*": [], "logistic regression on 32-px pixels": []}
    for train, test in folds.split(features, labels):
        forest = RandomForestClassifier(300, random_state=0, n_jobs=1).fit(features[train], labels[train])
        scores["random forest on features.*"].append(f1_score(labels[test], forest.predict(features[test]),
                                                              average="macro"))
        scaler = StandardScaler().fit(pixels[train])
        logistic = LogisticRegression(max_iter=2000).fit(scaler.transform(pixels[train]), labels[train])
        scores["logistic regression on 32-px pixels"].append(
            f1_score(labels[test], logistic.predict(scaler.transform(pixels[test])), average="macro"))
    for name, values in scores.items():
        print(f"(b) {name}: macro-F1 {np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} (5 folds)")
    forest, reference = (np.mean(v) for v in scores.values())
    print(f"(b) features / pixels macro-F1 ratio {forest / reference:.2f}")


if __name__ == "__main__":
    main()
