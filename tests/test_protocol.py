"""The few-label protocol: label specs, nested subsets, folds that lose nothing, and split files."""

from __future__ import annotations

import json
import random
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plankton_cli.train.protocol import (
    LabelSpec,
    describe_counts,
    few_label_subset,
    load_split,
    make_folds,
    parse_label_fraction,
    restrict_budget,
    restrict_train,
    save_split,
    subset_counts,
)
from conftest import SHARED



def dataset(sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    """Ids `<class>_<n>` and their labels for the given class sizes."""
    ids, labels = [], []
    for label, size in sizes.items():
        ids += [f"{label}_{n:05d}" for n in range(size)]
        labels += [label] * size
    return ids, labels


def per_class(ids: list[str], label_of: dict[str, str]) -> Counter:
    return Counter(label_of[i] for i in ids)


# --- label specs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("1%", LabelSpec(fraction=Fraction(1, 100)), "1%"),
        ("5%", LabelSpec(fraction=Fraction(5, 100)), "5%"),
        (" 10 % ", LabelSpec(fraction=Fraction(10, 100)), "10%"),
        ("0.05", LabelSpec(fraction=Fraction(5, 100)), "5%"),
        ("2.5%", LabelSpec(fraction=Fraction(25, 1000)), "2.5%"),
        ("all", LabelSpec(), "all"),
        ("ALL", LabelSpec(), "all"),
        ("100%", LabelSpec(), "all"),
        ("10/class", LabelSpec(per_class=10), "10/class"),
    ],
)
def test_parse_label_fraction_accepts_the_documented_forms(text, expected, canonical):
    spec = parse_label_fraction(text)
    assert spec == expected
    assert str(spec) == canonical
    assert parse_label_fraction(str(spec)) == spec  # the canonical text reads back


@pytest.mark.parametrize("text", ["", "abc", "0%", "0", "-5%", "150%", "1", "1.5", "5", "0/class", "x/class", "5%%"])
def test_parse_label_fraction_refuses_the_rest_with_a_clear_error(text):
    with pytest.raises(ValueError, match=r"label|fraction|percentage|class"):
        parse_label_fraction(text)


def test_fraction_counts_are_exact_floors_with_at_least_one():
    # floor(0.29 * 100) is 28 in floating point; the spec works in exact fractions.
    assert parse_label_fraction("29%").count(100) == 29
    assert parse_label_fraction("0.29").count(100) == 29
    assert [parse_label_fraction("1%").count(n) for n in (500, 50, 3, 1, 0)] == [5, 1, 1, 1, 0]
    assert parse_label_fraction("10/class").count(4) == 4
    assert parse_label_fraction("all").count(7) == 7


def test_specs_sort_from_fewest_to_most_labels():
    texts = ["all", "10%", "5/class", "1%", "5%"]
    ordered = sorted((parse_label_fraction(t) for t in texts), key=LabelSpec.sort_key)
    assert [str(s) for s in ordered] == ["5/class", "1%", "5%", "10%", "all"]


# --- few-label subsets ---------------------------------------------------------------------------------------------


def test_small_classes_survive_where_scikit_learn_drops_them():
    # Stratified train_test_split(train_size=0.01) on these sizes returns [5, 0, 0] (method-recipe.md §5).
    ids, labels = dataset({"big": 500, "mid": 50, "tiny": 3})
    chosen = few_label_subset(ids, labels, "1%", seed=0)
    assert per_class(chosen, dict(zip(ids, labels))) == {"big": 5, "mid": 1, "tiny": 1}


def test_a_class_of_three_gets_one_image_up_to_ten_percent():
    ids, labels = dataset({"tiny": 3, "big": 200})
    label_of = dict(zip(ids, labels))
    for text, expected in [("1%", 1), ("5%", 1), ("10%", 1), ("all", 3), ("2/class", 2)]:
        assert per_class(few_label_subset(ids, labels, text, seed=3), label_of)["tiny"] == expected


def test_k_per_class_takes_k_or_the_whole_class():
    ids, labels = dataset({"a": 30, "b": 10, "c": 4})
    chosen = few_label_subset(ids, labels, "10/class", seed=1)
    assert per_class(chosen, dict(zip(ids, labels))) == {"a": 10, "b": 10, "c": 4}
    assert set(few_label_subset(ids, labels, "5/class", seed=1)) < set(chosen)


def test_subsets_are_deterministic_independent_of_input_order_and_depend_on_the_seed():
    ids, labels = dataset({"a": 300, "b": 120, "c": 7})
    first = few_label_subset(ids, labels, "5%", seed=42)
    pairs = list(zip(ids, labels))
    random.Random(7).shuffle(pairs)
    shuffled_ids, shuffled_labels = map(list, zip(*pairs))
    assert few_label_subset(shuffled_ids, shuffled_labels, "5%", seed=42) == first
    assert few_label_subset(ids, labels, "5%", seed=42) == first
    assert first == sorted(first)
    assert few_label_subset(ids, labels, "5%", seed=43) != first


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=6),
    seed=st.integers(min_value=0, max_value=2**31),
    percents=st.lists(st.integers(min_value=1, max_value=100), min_size=2, max_size=4),
)
def test_subsets_are_nested_and_never_drop_a_class(sizes, seed, percents):
    ids, labels = dataset({f"class{i}": n for i, n in enumerate(sizes)})
    label_of = dict(zip(ids, labels))
    specs = [parse_label_fraction(t) for t in ("1%", "5%", "10%", "all")]
    specs += [parse_label_fraction(f"{p}%") for p in percents]
    specs.sort(key=LabelSpec.sort_key)
    subsets = [few_label_subset(ids, labels, spec, seed) for spec in specs]
    for spec, subset in zip(specs, subsets):
        counts = per_class(subset, label_of)
        assert counts == {f"class{i}": spec.count(n) for i, n in enumerate(sizes)}
        assert len(set(subset)) == len(subset)
    for smaller, larger in zip(subsets, subsets[1:]):
        assert set(smaller) <= set(larger)
    assert set(subsets[-1]) == set(ids)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        few_label_subset(["x", "x"], ["a", "a"], "all", seed=0)
    with pytest.raises(ValueError, match="2 ids but 1 labels"):
        few_label_subset(["x", "y"], ["a"], "all", seed=0)
    with pytest.raises(ValueError, match="no label"):
        few_label_subset(["x", "y"], ["a", None], "all", seed=0)


def test_subset_counts_table_and_summary_line():
    ids, labels = dataset({"big": 500, "mid": 50, "tiny": 3})
    chosen = set(few_label_subset(ids, labels, "1%", seed=0))
    rows = subset_counts(labels, [label for i, label in zip(ids, labels) if i in chosen])
    assert [(r["class"], r["available"], r["selected"]) for r in rows] == [
        ("big", 500, 5), ("mid", 50, 1), ("tiny", 3, 1), ("total", 553, 7)
    ]
    assert rows[2]["percent"] == pytest.approx(100 / 3)
    assert describe_counts(rows) == "3 classes, 1–5 per class, 7 in total"
    with pytest.raises(ValueError, match="missing from the pool"):
        subset_counts(["a"], ["b"])


# DAPlankton class sizes per instrument, from Inria-Chile/planktonzilla
# tests/fixtures/daplankton/daplankton_class_dirs.tsv (method-recipe.md §7), sorted.
LAB_IFCB = [1001, 1001, 1002, 1003, 1011, 1018, 1040, 1064, 1072, 1075, 1088, 1149, 1250, 1326, 1376]
SEA_CS = [5, 7, 7, 11, 14, 17, 27, 33, 33, 35, 43, 44, 57, 61, 66, 67, 96, 100, 109, 165, 174, 177, 240, 275,
          330, 352, 851, 938, 1027, 2027, 5443]


@pytest.mark.parametrize(
    ("sizes", "table4"),
    [
        # Kareinen et al. 2025, Table 4: per class min, max and total labelled images at 1 %, 5 %, 10 %.
        (LAB_IFCB, {"1%": (6, 9, 104), "5%": (34, 46, 555), "10%": (68, 93, 1115)}),
        (SEA_CS, {"1%": (1, 37, 95), "5%": (1, 185, 430), "10%": (1, 370, 862)}),
    ],
    ids=["DAPlankton-LAB-IFCB", "DAPlankton-SEA-CytoSense"],
)
def test_protocol_reproduces_the_papers_table_4(sizes, table4):
    # The fold decides whether a class keeps e.g. 680 or 681 training images, so totals move by a few images;
    # rounding instead of floor would add 7 (LAB IFCB 1 %: 111) and fail.
    ids, labels = dataset({f"class{i:02d}": n for i, n in enumerate(sizes)})
    label_of = dict(zip(ids, labels))
    for split in make_folds(ids, labels, n_folds=5, val_fraction=0.15, seed=0):
        for text, (low, high, total) in table4.items():
            counts = per_class(restrict_train(split, label_of, text).train, label_of)
            assert (min(counts.values()), max(counts.values())) == (low, high)
            assert len(counts) == len(sizes)
            assert abs(sum(counts.values()) - total) <= 2


# --- folds ---------------------------------------------------------------------------------------------------------


def check_folds(splits, ids, labels, n_folds):
    """Invariants every set of folds must keep; returns per-fold per-class test counts."""
    assert len(splits) == n_folds
    all_ids = set(ids)
    for split in splits:
        parts = [set(split.train), set(split.val), set(split.test)]
        assert sum(map(len, parts)) == len(ids)  # no id in two parts
        assert set.union(*parts) == all_ids  # and none lost
        for name, part in (("train", split.train), ("val", split.val), ("test", split.test)):
            assert part == sorted(part)
            assert sum(split.class_counts[name].values()) == len(part)
    if n_folds >= 2:
        tests = [set(split.test) for split in splits]
        assert sum(map(len, tests)) == len(ids) and set.union(*tests) == all_ids  # test parts partition the data


def test_folds_are_stratified_and_partition_the_data():
    sizes = {"a": 503, "b": 120, "c": 61, "d": 17, "e": 5}
    ids, labels = dataset(sizes)
    label_of = dict(zip(ids, labels))
    splits = make_folds(ids, labels, n_folds=5, val_fraction=0.15, seed=0)
    check_folds(splits, ids, labels, 5)
    for split in splits:
        assert split.warnings == []
        test = per_class(split.test, label_of)
        val = per_class(split.val, label_of)
        for label, size in sizes.items():
            assert abs(test[label] - size / 5) <= 1
            rest = size - test[label]
            assert abs(val[label] - 0.15 * rest) <= 1
    assert 0.19 < len(splits[0].test) / len(ids) < 0.21


def test_folds_are_deterministic_and_independent_of_input_order():
    ids, labels = dataset({"a": 90, "b": 33, "c": 3})
    pairs = list(zip(ids, labels))
    random.Random(1).shuffle(pairs)
    shuffled_ids, shuffled_labels = map(list, zip(*pairs))
    first = make_folds(ids, labels, seed=5)
    assert make_folds(shuffled_ids, shuffled_labels, seed=5) == first
    assert [s.test for s in make_folds(ids, labels, seed=6)] != [s.test for s in first]


def test_classes_smaller_than_the_fold_count_are_kept_and_named():
    sizes = {"big": 200, "one": 1, "two": 2, "three": 3, "four": 4}
    ids, labels = dataset(sizes)
    label_of = dict(zip(ids, labels))
    splits = make_folds(ids, labels, n_folds=5, seed=0)
    check_folds(splits, ids, labels, 5)
    for small in ("one", "two", "three", "four"):
        # Each item is tested exactly once, in different folds, and the class is in every fold.
        test_folds = [s.fold for s in splits for i in s.test if label_of[i] == small]
        assert sorted(test_folds) == sorted(set(test_folds)) and len(test_folds) == sizes[small]
        for split in splits:
            assert any(f"'{small}'" in w and "too few for 5 stratified folds" in w for w in split.warnings)
            assert sum(split.class_counts[part].get(small, 0) for part in ("train", "val", "test")) == sizes[small]
    # Classes this small are too few to validate: they stay in training, with a warning naming them.
    for split in splits:
        assert not any(label_of[i] in ("one", "two", "three") for i in split.val)
        if split.class_counts["test"].get("one"):
            assert any("'one' has no training image" in w for w in split.warnings)
        else:
            assert any("'one' has 1 training image(s), too few to validate" in w for w in split.warnings)
    assert "'big'" not in " ".join(splits[0].warnings)


def test_only_tiny_classes_and_a_single_member_class_do_not_crash():
    ids, labels = dataset({"one": 1, "two": 2})
    check_folds(make_folds(ids, labels, n_folds=5), ids, labels, 5)
    check_folds(make_folds(["x"], ["a"], n_folds=1), ["x"], ["a"], 1)


def test_a_single_split_tests_on_a_stratified_fifth():
    sizes = {"a": 100, "b": 40, "c": 1}
    ids, labels = dataset(sizes)
    label_of = dict(zip(ids, labels))
    (split,) = make_folds(ids, labels, n_folds=1, seed=2)
    check_folds([split], ids, labels, 1)
    test = per_class(split.test, label_of)
    assert test["a"] == 20 and test["b"] == 8
    assert split.n_folds == 1 and split.fold == 0


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=5),
    n_folds=st.integers(min_value=1, max_value=5),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_folds_never_lose_an_item_for_any_class_sizes(sizes, n_folds, seed):
    ids, labels = dataset({f"c{i}": n for i, n in enumerate(sizes)})
    check_folds(make_folds(ids, labels, n_folds=n_folds, seed=seed), ids, labels, n_folds)


def test_make_folds_refuses_bad_arguments():
    with pytest.raises(ValueError, match="n_folds"):
        make_folds(["x"], ["a"], n_folds=0)
    with pytest.raises(ValueError, match="val_fraction"):
        make_folds(["x"], ["a"], val_fraction=1.0)
    with pytest.raises(ValueError, match="no labelled items"):
        make_folds([], [])


def test_restrict_train_keeps_val_and_test_and_nests_within_a_fold():
    ids, labels = dataset({"a": 400, "b": 60, "c": 6})
    label_of = dict(zip(ids, labels))
    split = make_folds(ids, labels, seed=0)[1]
    restricted = [restrict_train(split, label_of, text) for text in ("1%", "5%", "10%", "all")]
    for smaller, larger in zip(restricted, restricted[1:]):
        assert set(smaller.train) <= set(larger.train)
    for r in restricted:
        assert (r.val, r.test, r.train_pool) == (split.val, split.test, len(split.train))
        assert set(r.class_counts["train"]) == {"a", "b", "c"}
    assert restricted[-1].train == split.train and restricted[0].label_spec == "1%"
    with pytest.raises(ValueError, match="already cut to 5%"):
        restrict_train(restricted[1], label_of, "1%")  # would silently break nesting and train_pool
    # Another fold draws its own subset.
    other = restrict_train(make_folds(ids, labels, seed=0)[2], label_of, "10%")
    assert set(other.train) != set(restricted[2].train)


def test_the_budget_protocol_takes_validation_out_of_the_labels():
    ids, labels = dataset({"a": 400, "b": 60, "c": 6})
    label_of = dict(zip(ids, labels))
    whole = make_folds(ids, labels, val_fraction=0.0, seed=0)[1]
    assert whole.val == [] and whole.test == make_folds(ids, labels, seed=0)[1].test  # same test parts as the paper's
    budgets = [restrict_budget(whole, label_of, text, 0.15) for text in ("1%", "5%", "10%", "all")]
    for budget, text in zip(budgets, ("1%", "5%", "10%", "all")):
        # Every label of the fold is in the budget: exactly what few_label_subset draws from the non-test part.
        assert budget.labelled == sorted(few_label_subset(whole.train, [label_of[i] for i in whole.train], text,
                                                          seed="0:1"))
        assert not set(budget.train) & set(budget.val) and budget.test == whole.test
        assert (budget.protocol, budget.train_pool, budget.label_spec) == ("budget", len(whole.train), text)
        train, val = per_class(budget.train, label_of), per_class(budget.val, label_of)
        for label in ("a", "b", "c"):  # a class of two or more labels validates on at least one, trains on one
            n = train[label] + val[label]
            assert (val[label] >= 1) == (n >= 2) and train[label] >= 1
    for smaller, larger in zip(budgets, budgets[1:]):
        assert set(smaller.labelled) <= set(larger.labelled)
    # 1 %: 3 labels of "a", 1 of "b" and "c"; the single ones stay in training and are named.
    assert per_class(budgets[0].labelled, label_of) == Counter({"a": 3, "b": 1, "c": 1})
    assert sorted(w.split("'")[1] for w in budgets[0].warnings if "too few to validate" in w) == ["b", "c"]
    with pytest.raises(ValueError, match="val_fraction=0"):
        restrict_budget(make_folds(ids, labels, seed=0)[1], label_of, "5%", 0.15)


def test_split_files_round_trip_and_reproduce(tmp_path):
    ids, labels = dataset({"a": 80, "b": 20, "tiny": 2})
    label_of = dict(zip(ids, labels))
    split = restrict_train(make_folds(ids, labels, seed=9)[3], label_of, "10%")
    path = save_split(split, tmp_path / "splits" / "fold3.json")
    document = json.loads(path.read_text())
    assert document["format"] == "plankton-split/1"
    assert (document["seed"], document["fold"], document["label_spec"]) == (9, 3, "10%")
    assert document["class_counts"]["train"] == dict(per_class(split.train, label_of))
    assert load_split(path) == split
    # A re-run with the same inputs and seed draws exactly what was saved.
    assert restrict_train(make_folds(ids, labels, seed=9)[3], label_of, "10%") == load_split(path)
    budget = restrict_budget(make_folds(ids, labels, val_fraction=0.0, seed=9)[3], label_of, "10%", 0.15)
    assert load_split(save_split(budget, tmp_path / "budget.json")) == budget
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a plankton-split/1 file"):
        load_split(tmp_path / "other.json")


def test_folds_on_real_uvp6_vignettes():
    root = SHARED / "images" / "uvp6-vignettes"
    if not root.is_dir():
        pytest.skip(f"shared UVP6 vignettes (GPL-3.0, not shipped) not found at {root}")
    ids, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(folder.glob("*.png")):
            ids.append(f"{folder.name}/{image.name}")
            labels.append(folder.name)
    assert len(ids) == 1250
    label_of = dict(zip(ids, labels))
    splits = make_folds(ids, labels, n_folds=5, seed=0)
    check_folds(splits, ids, labels, 5)
    assert all(len(s.test) == 250 and s.warnings == [] for s in splits)
    one_percent = restrict_train(splits[0], label_of, "1%")
    assert describe_counts(subset_counts(labels, [label_of[i] for i in one_percent.train])) == (
        "10 classes, 1–1 per class, 10 in total"
    )
    # 8 classes of 100 keep 68 to train (6 at 10 %), Copepoda 200 → 136 (13), detritus 250 → 170 (17).
    assert len(restrict_train(splits[0], label_of, "10%").train) == 8 * 6 + 13 + 17
