"""The few-label evaluation protocol: cross-validation folds, a validation part and nested labelled subsets.

Kareinen et al. 2025 (§4.3, Table 4): 5-fold stratified cross-validation, each fold 20 % test and 80 % train, of
which 15 % is validation; fine-tuning then sees 1 %, 5 % or 10 % of the training part, with at least one image per
class. The paper's code is not public, so the details here are ours, chosen so that:

- nothing depends on input order, Python's hash seed or the machine: items are sorted by id, and every random
  choice is a rank drawn from a BLAKE2 hash of (purpose, seed, id);
- labelled subsets are nested (1 % ⊂ 5 % ⊂ 10 % ⊂ all): each item keeps the same rank whatever the fraction, and a
  subset is the first n_c items of each class by rank;
- no class vanishes silently: scikit-learn drops or raises on tiny classes (method-recipe.md §5), so classes
  smaller than the number of folds are spread over the folds here, and every such case is a warning naming it.

Per class n_c = max(1, floor(p · N_c)). Floor, not round: with the DAPlankton class sizes, floor on the 68 % train
pool reproduces the paper's Table 4 (LAB IFCB 1 %: 6–9 per class, 104 in total; rounding gives 7–9 and 111).

Two protocols (``PROTOCOLS``) draw the labelled objects of a fold:

- ``budget`` (the default): the labels are a budget, drawn from everything that is not test. Validation comes out of
  that budget (``restrict_budget``), so a fold uses exactly p of its pool's labels, all counted. This is what a
  station with p of its images labelled has.
- ``paper``: the paper's. 15 % of the non-test part is a validation set at full size, whatever p, and p is drawn
  from the rest (``restrict_train``). At 5 % the fold then uses four times more validation labels than training
  labels; its tables are reproduced this way, but a comparison must count the validation labels too.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from plankton_cli.core.atomic import atomic_write_json

SPLIT_FORMAT = "plankton-split/1"
"""Written into every split file, so a later reader can tell which layout it is reading."""

PROTOCOLS = ("budget", "paper")
"""How a fold's labelled objects are drawn: see the module docstring."""

TEST_FRACTION_SINGLE_SPLIT = Fraction(1, 5)
"""`n_folds=1` is the first fold of a 5-fold split: one stratified 20 % test part."""


# --- label fractions -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """How many labelled images per class fine-tuning may use: a fraction of each class, k per class, or all.

    At most one of `fraction` (0 < p ≤ 1) and `per_class` (k ≥ 1) is set; neither, or a fraction of 1, means all.
    """

    fraction: Fraction | None = None
    per_class: int | None = None

    def __post_init__(self) -> None:
        if self.fraction is not None and self.per_class is not None:
            raise ValueError("LabelSpec takes a fraction or a count per class, not both")
        if self.fraction is not None:
            if not 0 < self.fraction <= 1:
                raise ValueError(f"label fraction must be in (0, 1], got {self.fraction}")
            # Exact, and one spelling of "all", so that equal specs compare equal.
            fraction = Fraction(self.fraction)
            object.__setattr__(self, "fraction", None if fraction == 1 else fraction)
        if self.per_class is not None and self.per_class < 1:
            raise ValueError(f"labels per class must be at least 1, got {self.per_class}")

    @property
    def is_all(self) -> bool:
        return self.fraction is None and self.per_class is None

    def count(self, class_size: int) -> int:
        """How many of a class of `class_size` items to label: at least one, never more than there are."""
        if class_size <= 0:
            return 0
        if self.per_class is not None:
            return min(self.per_class, class_size)
        if self.fraction is None:
            return class_size
        # Fraction arithmetic: floor(0.29 * 100) must be 29, not the 28 that floats give.
        return min(class_size, max(1, math.floor(self.fraction * class_size)))

    def sort_key(self) -> tuple[int, Fraction]:
        """Orders specs from fewest to most labels: k/class by k, then fractions, `all` last."""
        if self.per_class is not None:
            return (0, Fraction(self.per_class))
        return (2, Fraction(1)) if self.is_all else (1, self.fraction)

    def __str__(self) -> str:
        if self.per_class is not None:
            return f"{self.per_class}/class"
        if self.is_all:
            return "all"
        percent = self.fraction * 100
        text = str(percent.numerator) if percent.denominator == 1 else f"{float(percent):g}"
        return f"{text}%"


def parse_label_fraction(text: str | LabelSpec) -> LabelSpec:
    """Parse `1%`, `5%`, `0.05`, `all` or `10/class` into a `LabelSpec`.

    A bare number must be a fraction below 1: `1` is refused because it could mean 1 % or all of the labels.
    """
    if isinstance(text, LabelSpec):
        return text
    raw = str(text)
    value = raw.strip().lower().replace(" ", "")
    hint = "expected e.g. '1%', '5%', '0.05', '10/class' or 'all'"
    if value in ("all", "100%", "full"):
        return LabelSpec()
    try:
        if value.endswith("/class"):
            k = int(value.removesuffix("/class"))
            if k < 1:
                raise ValueError(f"labels per class must be at least 1 in {raw!r}")
            return LabelSpec(per_class=k)
        if value.endswith("%"):
            percent = Fraction(value.removesuffix("%"))
            if not 0 < percent <= 100:
                raise ValueError(f"label percentage must be in (0, 100], got {raw!r}")
            return LabelSpec(fraction=percent / 100)
        fraction = Fraction(value)
    except (ValueError, ZeroDivisionError) as error:
        if "must be" in str(error):
            raise
        raise ValueError(f"cannot read label fraction {raw!r}: {hint}") from None
    if not 0 < fraction < 1:
        raise ValueError(
            f"label fraction {raw!r} is ambiguous or out of range: write a fraction below 1 (0.05), "
            f"a percentage (5%), 'k/class' or 'all'"
        )
    return LabelSpec(fraction=fraction)


# --- seeded ranks --------------------------------------------------------------------------------------------------


def _rank(item_id: str, seed: int | str, purpose: str) -> int:
    """A pseudo-random 64-bit rank for one item: the same on every machine, run and input order."""
    digest = hashlib.blake2b(f"{purpose}\0{seed}\0{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _by_class(ids: Sequence[str], labels: Sequence[str]) -> dict[str, list[str]]:
    """Ids grouped by label, each group sorted by id; checks lengths, missing labels and duplicate ids."""
    if len(ids) != len(labels):
        raise ValueError(f"got {len(ids)} ids but {len(labels)} labels")
    if len(set(ids)) != len(ids):
        duplicates = sorted(str(i) for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"duplicate ids: {', '.join(duplicates[:5])}")
    groups: dict[str, list[str]] = defaultdict(list)
    for item_id, label in sorted(zip(ids, labels), key=lambda pair: pair[0]):  # type: ignore[arg-type, return-value]
        if label is None:
            raise ValueError(f"item {item_id!r} has no label: keep only labelled items for the protocol")
        groups[label].append(item_id)
    return dict(sorted(groups.items(), key=lambda pair: str(pair[0])))


def _ranked(members: list[str], seed: int | str, purpose: str) -> list[str]:
    return sorted(members, key=lambda item_id: (_rank(item_id, seed, purpose), str(item_id)))


# --- few-label subsets ---------------------------------------------------------------------------------------------


def few_label_subset(
    ids: Sequence[str], labels: Sequence[str], spec: LabelSpec | str, seed: int | str
) -> list[str]:
    """The labelled subset fine-tuning may use: per class the `spec.count(N_c)` items with the lowest seeded rank.

    Ranks do not depend on the fraction, so subsets for the same ids and seed are nested. Returned sorted by id.
    """
    spec = parse_label_fraction(spec)
    chosen: list[str] = []
    for members in _by_class(ids, labels).values():
        chosen.extend(_ranked(members, seed, "labels")[: spec.count(len(members))])
    return sorted(chosen)  # type: ignore[type-var]  # ids are str or int, never mixed


def subset_counts(labels_all: Iterable[str], labels_subset: Iterable[str]) -> list[dict[str, Any]]:
    """Realised per-class counts of a labelled subset, one row per class plus a `total` row (as Table 4)."""
    available = Counter(labels_all)
    selected = Counter(labels_subset)
    if unknown := set(selected) - set(available):
        raise ValueError(f"subset holds classes missing from the pool: {sorted(map(str, unknown))}")
    rows = [
        {"class": str(label), "available": n, "selected": selected[label], "percent": 100 * selected[label] / n}
        for label, n in sorted(available.items(), key=lambda pair: str(pair[0]))
    ]
    n_all, n_selected = sum(available.values()), sum(selected.values())
    rows.append({"class": "total", "available": n_all, "selected": n_selected,
                 "percent": 100 * n_selected / n_all if n_all else 0.0})
    return rows


def describe_counts(rows: list[dict[str, Any]]) -> str:
    """One line in the paper's Table 4 terms, e.g. `15 classes, 6–9 per class, 104 in total`."""
    per_class = [row["selected"] for row in rows if row["class"] != "total"]
    if not per_class:
        return "no classes"
    return f"{len(per_class)} classes, {min(per_class)}–{max(per_class)} per class, {sum(per_class)} in total"


def label_accounting(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Labelled objects per fold used for training, for validation and in total (min, max and mean over folds):
    what every result states beside its scores, since validation labels are labels too."""
    def spread(key: str) -> dict[str, float]:
        values = [row[key] for row in rows]
        return {"min": min(values), "max": max(values), "mean": sum(values) / len(values)} if values else {}

    return {"train": spread("n_train"), "val": spread("n_val"), "total": spread("n_labelled")}


def describe_labelled(labelled: dict[str, Any], protocol: str) -> str:
    """One sentence: how many labels a fold used, e.g. `labelled objects per fold: 41 training + 12 validation
    = 53 (budget protocol)`."""
    def text(part: dict[str, float]) -> str:
        if not part:
            return "?"
        low, high = int(part["min"]), int(part["max"])
        return str(low) if low == high else f"{low}–{high}"

    return (f"labelled objects per fold: {text(labelled['train'])} training + {text(labelled['val'])} validation "
            f"= {text(labelled['total'])} ({protocol} protocol)")


# --- folds ---------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Split:
    """One fold: which ids train, validate and test, and how they were drawn (enough to redraw them exactly)."""

    fold: int
    n_folds: int
    seed: int
    val_fraction: float
    train: list[str]
    val: list[str]
    test: list[str]
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # part → class → count
    warnings: list[str] = field(default_factory=list)
    label_spec: str = "all"  # set by `restrict_train` / `restrict_budget`
    train_pool: int | None = None  # images the labelled subset was drawn from
    protocol: str = "paper"  # "budget": `val` is part of the labelled budget (`restrict_budget`)

    @property
    def labelled(self) -> list[str]:
        """Every labelled object the fold learns from or chooses with: training and validation."""
        return sorted([*self.train, *self.val])


def _fold_of_each_item(groups: dict[str, list[str]], n_folds: int, seed: int) -> tuple[dict, list[str]]:
    """Assign every item a test fold: StratifiedKFold for classes with ≥ n_folds items, round-robin for the rest."""
    from sklearn.model_selection import StratifiedKFold  # scikit-learn is in the `train` extra only

    fold_of: dict[str, int] = {}
    warnings: list[str] = []
    big = {label: members for label, members in groups.items() if len(members) >= n_folds}
    if big:
        ids = [item_id for members in big.values() for item_id in members]
        y = np.array([index for index, members in enumerate(big.values()) for _ in members])
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for fold, (_, test_index) in enumerate(folds.split(np.zeros(len(y)), y)):
            for index in test_index:
                fold_of[ids[index]] = fold
    # Classes with fewer items than folds: one item per fold, after a seeded shuffle; the next class starts where
    # this one stopped, so the small classes do not all pile into fold 0.
    next_fold = 0
    for label, members in groups.items():
        if len(members) >= n_folds:
            continue
        for item_id in _ranked(members, seed, "folds"):
            fold_of[item_id] = next_fold
            next_fold = (next_fold + 1) % n_folds
        warnings.append(
            f"class {label!r} has {len(members)} image(s), too few for {n_folds} stratified folds: "
            f"it is tested in {len(members)} of them"
        )
    return fold_of, warnings


def _validation_part(
    groups: dict[str, list[str]], test: set, val_fraction: float, seed: int | str, at_least_one: bool = False
) -> tuple[list, list, list[str]]:
    """Split what is not test into train and validation, per class: round(val_fraction · rest), ≥ 1 left to train.

    ``at_least_one``: every class with 2 or more images gives one to validation even where the fraction rounds to
    0. A labelled budget of a few images per class would otherwise validate on one or two classes only, and choose
    epochs and heads by them; the final refit trains on the validation images too, so nothing is lost.
    """
    fraction = Fraction(val_fraction).limit_denominator(10**6)
    train, val, warnings = [], [], []
    for label, members in groups.items():
        rest = [item_id for item_id in members if item_id not in test]
        n_val = math.floor(fraction * len(rest) + Fraction(1, 2))  # round half up
        if at_least_one and fraction > 0:
            n_val = max(n_val, 1)
        n_val = min(n_val, len(rest) - 1)
        if not rest:
            warnings.append(f"class {label!r} has no training image in this fold (all in test)")
        elif n_val < 1 and fraction > 0:
            warnings.append(
                f"class {label!r} has {len(rest)} training image(s), too few to validate: all stay in training"
            )
        n_val = max(n_val, 0)
        ranked = _ranked(rest, seed, "val")
        val.extend(ranked[:n_val])
        train.extend(ranked[n_val:])
    return sorted(train), sorted(val), warnings


def _count(part: list[str], label_of: Mapping[str, str]) -> dict[str, int]:
    counts = Counter(str(label_of[item_id]) for item_id in part)
    return dict(sorted(counts.items()))


def make_folds(
    ids: Sequence[str],
    labels: Sequence[str],
    n_folds: int = 5,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> list[Split]:
    """Stratified cross-validation folds, each with a stratified validation part taken from its training part.

    `n_folds >= 2`: fold k tests on the k-th of `n_folds` stratified parts (20 % each at 5 folds). `n_folds = 1`:
    one split, the first fold of a 5-fold split (a stratified 20 % test part). Classes smaller than the number of
    folds and classes too small to validate are kept, and named in each split's `warnings`.
    """
    if n_folds < 1:
        raise ValueError(f"n_folds must be at least 1, got {n_folds}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups = _by_class(ids, labels)
    if not groups:
        raise ValueError("no labelled items to split")
    label_of = {item_id: label for label, members in groups.items() for item_id in members}
    k = n_folds if n_folds >= 2 else round(1 / TEST_FRACTION_SINGLE_SPLIT)
    fold_of, fold_warnings = _fold_of_each_item(groups, k, seed)

    splits = []
    for fold in range(n_folds):
        test = sorted(item_id for item_id, f in fold_of.items() if f == fold)
        train, val, val_warnings = _validation_part(groups, set(test), val_fraction, f"{seed}:{fold}")
        parts = {"train": train, "val": val, "test": test}
        splits.append(
            Split(
                fold=fold, n_folds=n_folds, seed=seed, val_fraction=val_fraction, train=train, val=val, test=test,
                class_counts={name: _count(part, label_of) for name, part in parts.items()},
                warnings=fold_warnings + val_warnings, train_pool=len(train),
            )
        )
    return splits


def restrict_train(split: Split, label_of: Mapping[str, str], spec: LabelSpec | str) -> Split:
    """The same split with its training part cut to a few-label subset (validation and test are untouched).

    The draw is seeded by the split's seed and fold, so each fold draws its own subset, and re-running gives the
    same one. Apply it to the full training part: subsets of one split for different specs are nested.
    """
    if split.label_spec != "all":
        raise ValueError(f"fold {split.fold} is already cut to {split.label_spec}: restrict the full split instead")
    spec = parse_label_fraction(spec)
    train = few_label_subset(split.train, [label_of[i] for i in split.train], spec, seed=f"{split.seed}:{split.fold}")
    counts = dict(split.class_counts, train=_count(train, label_of))
    return replace(split, train=train, label_spec=str(spec), class_counts=counts, train_pool=len(split.train))


def restrict_budget(split: Split, label_of: Mapping[str, str], spec: LabelSpec | str, val_fraction: float) -> Split:
    """The ``budget`` protocol's split: the labelled budget drawn from the fold's whole non-test part, and its
    validation part taken out of the budget (``val_fraction`` of each class, at least one image of every class that
    has two; a class with a single labelled image keeps it for training and is named in the warnings).

    ``split`` must come from ``make_folds(..., val_fraction=0)``: no validation part yet. The budget is drawn as
    ``restrict_train`` draws (same ranks, same seed), so budgets of one split are nested across specs; the test
    part is the one the ``paper`` protocol gets, since folds do not depend on the validation fraction.
    """
    if split.label_spec != "all" or split.val:
        raise ValueError(f"fold {split.fold} already has a labelled subset or a validation part: give the split of "
                         "make_folds(..., val_fraction=0)")
    spec = parse_label_fraction(spec)
    budget = few_label_subset(split.train, [label_of[i] for i in split.train], spec, seed=f"{split.seed}:{split.fold}")
    groups = _by_class(budget, [label_of[i] for i in budget])
    train, val, warnings = _validation_part(groups, set(), val_fraction, f"{split.seed}:{split.fold}:budget",
                                            at_least_one=True)
    counts = dict(split.class_counts, train=_count(train, label_of), val=_count(val, label_of))
    return replace(split, train=train, val=val, val_fraction=val_fraction, label_spec=str(spec), class_counts=counts,
                   warnings=split.warnings + warnings, train_pool=len(split.train), protocol="budget")


# --- split files ---------------------------------------------------------------------------------------------------


def save_split(split: Split, path: str | Path) -> Path:
    """Write a split as JSON: the ids of each part, how they were drawn, and the per-class counts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": SPLIT_FORMAT,
        "fold": split.fold,
        "n_folds": split.n_folds,
        "seed": split.seed,
        "val_fraction": split.val_fraction,
        "label_spec": split.label_spec,
        "train_pool": split.train_pool,
        "protocol": split.protocol,
        "class_counts": split.class_counts,
        "warnings": split.warnings,
        "train": split.train,
        "val": split.val,
        "test": split.test,
    }
    return atomic_write_json(path, document, indent=1)  # never leave a half-written split behind


def load_split(path: str | Path) -> Split:
    """Read a split written by `save_split`."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if document.get("format") != SPLIT_FORMAT:
        raise ValueError(f"{path}: not a {SPLIT_FORMAT} file (format {document.get('format')!r})")
    return Split(
        fold=document["fold"],
        n_folds=document["n_folds"],
        seed=document["seed"],
        val_fraction=document["val_fraction"],
        train=document["train"],
        val=document["val"],
        test=document["test"],
        class_counts=document["class_counts"],
        warnings=document["warnings"],
        label_spec=document["label_spec"],
        train_pool=document["train_pool"],
        protocol=document.get("protocol", "paper"),  # files written before the budget protocol existed
    )
