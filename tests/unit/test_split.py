"""camtrap.split: sizes, class balance and site grouping, all reproducible from the seed."""

import random

import numpy as np
import pandas as pd
import pytest

from camtrap.dataset import load_dataset
from camtrap.errors import ConfigError, DataError
from camtrap.split import (
    allocate_val,
    choose_val_sites,
    split_frame,
    split_summary,
    val_count,
)


def make_frame(counts: dict[str, int], sites: int = 1, start: int = 100) -> pd.DataFrame:
    """`counts[c]` images of each class c; sites assigned round-robin; index from `start` (so a
    test notices if the result does not keep the frame's own index)."""
    labels = [name for name, count in counts.items() for _ in range(count)]
    frame = pd.DataFrame(
        {
            "id": [f"i{n}" for n in range(len(labels))],
            "site": [f"s{n % sites}" for n in range(len(labels))],
            "label": labels,
        }
    )
    frame.index = range(start, start + len(frame))
    return frame


def val_ids(split: pd.Series, frame: pd.DataFrame) -> list[str]:
    return sorted(frame.loc[split == "val", "id"])


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [
        (21, 0.25, 6),  # 5.25 -> ceil 6 (sklearn: n_test = ceil(test_size * n))
        (20, 0.25, 5),  # exact
        (100, 0.07, 7),  # 7.000000000000001 in floating point: still 7
        (10, 0.01, 1),  # at least one val image
        (2, 0.9, 1),  # at least one train image
    ],
)
def test_val_count(n, fraction, expected):
    assert val_count(n, fraction) == expected


# --- random --------------------------------------------------------------------------------


def test_random_split_is_the_seeded_permutation():
    frame = make_frame({"a": 11, "b": 10})
    split = split_frame(frame, "random", 0.25, seed=7)
    assert split.name == "split" and list(split.index) == list(frame.index)
    assert split.value_counts().to_dict() == {"train": 15, "val": 6}
    # the recipe: the first ceil(21 * 0.25) = 6 positions of default_rng(seed).permutation(21)
    positions = np.random.default_rng(7).permutation(21)[:6]
    assert val_ids(split, frame) == sorted(frame["id"].iloc[positions])


def test_random_split_is_reproducible_and_seed_dependent():
    frame = make_frame({"a": 30, "b": 30})
    first = split_frame(frame, "random", 0.25, seed=1)
    assert split_frame(frame, "random", 0.25, seed=1).equals(first)
    assert not split_frame(frame, "random", 0.25, seed=2).equals(first)


def test_split_leaves_the_global_generators_alone():
    frame = make_frame({"a": 10, "b": 10}, sites=4)
    np.random.seed(123)
    random.seed(123)
    numpy_state, python_state = np.random.get_state()[1].copy(), random.getstate()
    for strategy in ("random", "stratified", "site"):
        split_frame(frame, strategy, 0.3, seed=0)
    assert (np.random.get_state()[1] == numpy_state).all()
    assert random.getstate() == python_state


def test_bad_arguments():
    frame = make_frame({"a": 5, "b": 5})
    with pytest.raises(ConfigError, match="val_fraction"):
        split_frame(frame, "random", 1.0, seed=0)
    with pytest.raises(ConfigError, match="unknown split strategy 'by_day'"):
        split_frame(frame, "by_day", 0.25, seed=0)
    with pytest.raises(DataError, match="only 1 image"):
        split_frame(frame.iloc[:1], "random", 0.25, seed=0)


# --- stratified ----------------------------------------------------------------------------


def test_allocation_is_largest_remainder():
    # n = 15, n_val = ceil(15 * 0.3) = 5; exact shares 7*5/15 = 2.33, 5*5/15 = 1.67, 3*5/15 = 1.0
    # floors 2, 1, 1 (sum 4); the one place left goes to the largest remainder, 0.67 -> b.
    rng = np.random.default_rng(0)
    assert allocate_val(np.array([7, 5, 3]), 5, rng).tolist() == [2, 2, 1]


def test_allocation_bounds():
    rng = np.random.default_rng(0)
    # shares 2.86, 1.43, 0.86, 0.57, 0.29 of n_val = 6 (n = 21): floors 2, 1, 0, 0, 0; the
    # classes with >= 2 images get a val image each (2, 1, 1, 1, 0 = 5); the last place goes to
    # the largest shortfall (2.86 - 2); the singleton stays in train.
    assert allocate_val(np.array([10, 5, 3, 2, 1]), 6, rng).tolist() == [3, 1, 1, 1, 0]
    # two classes of 2 cannot give 3 to val and keep one each in train: train wins
    assert allocate_val(np.array([2, 2]), 3, rng).tolist() == [1, 1]
    # only singletons: the total is met with some of them
    assert allocate_val(np.array([1, 1, 1, 1]), 2, rng).sum() == 2


def test_allocation_ties_follow_the_seed_not_the_class_order():
    # 7 classes x 3 images, n_val = 6: every share is 0.857, so one class must get no val image;
    # which one depends on the seed.
    counts = np.full(7, 3)
    left_out = {
        int(np.flatnonzero(allocate_val(counts, 6, np.random.default_rng(seed)) == 0)[0])
        for seed in range(20)
    }
    assert len(left_out) > 1


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.25, 0.5, 0.8, 0.95])
def test_stratified_guarantees(fraction):
    counts = {"a": 40, "b": 9, "c": 4, "d": 2, "e": 1}
    frame = make_frame(counts)
    for seed in range(5):
        split = split_frame(frame, "stratified", fraction, seed)
        summary = split_summary(frame, split)
        # every class with >= 2 images keeps one in train, whatever the fraction
        assert (summary.loc[["a", "b", "c", "d"], "train"] >= 1).all()
        n_val = val_count(len(frame), fraction)
        if n_val <= sum(c - 1 for c in counts.values() if c >= 2):
            assert summary["val"].sum() == n_val  # the total is met when train allows it
        if n_val >= 4:  # enough places for every class with >= 2 images
            assert (summary.loc[["a", "b", "c", "d"], "val"] >= 1).all()


def test_stratified_split_counts(ena24_root):
    data = load_dataset(ena24_root)
    split = split_frame(data.frame, "stratified", 0.25, seed=42)
    summary = split_summary(data.frame, split)
    # 21 images, 7 classes x 3: n_val = 6 -> six classes give 1 to val, one gives none
    assert summary["val"].sum() == 6
    assert sorted(summary["val"]) == [0, 1, 1, 1, 1, 1, 1]
    assert (summary["train"] >= 2).all()
    assert list(summary.columns) == ["train", "val", "total"]
    assert summary["total"].tolist() == [3] * 7


def test_stratified_is_reproducible():
    frame = make_frame({"a": 20, "b": 12, "c": 6})
    first = split_frame(frame, "stratified", 0.25, seed=3)
    assert split_frame(frame, "stratified", 0.25, seed=3).equals(first)
    assert not split_frame(frame, "stratified", 0.25, seed=4).equals(first)
    # 38 images -> n_val 10; shares 5.26, 3.16, 1.58 -> floors 5, 3, 1 -> +1 to c (0.58)
    assert split_summary(frame, first)["val"].tolist() == [5, 3, 2]


# --- site ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_site_choice_prefers_the_right_class_mix(seed):
    # classes (a, b) per site; totals (12, 12), target for 1/6 of 24 images: (2, 2).
    # Site A alone has the right size (4) but only class a: distance |4-2| + |0-2| = 4, no
    # better than taking nothing. Site B matches exactly: distance 0.
    counts = np.array([[4, 0], [2, 2], [0, 4], [6, 6]])
    chosen = choose_val_sites(counts, np.array([2.0, 2.0]), np.random.default_rng(seed))
    assert chosen.tolist() == [False, True, False, False]


def test_site_choice_puts_one_site_each_side_when_nothing_fits():
    # two equal sites, target a quarter: adding either is no nearer than none (distance 5),
    # but val must not be empty
    counts = np.array([[5, 5], [5, 5]])
    chosen = choose_val_sites(counts, np.array([2.5, 2.5]), np.random.default_rng(0))
    assert chosen.sum() == 1


@pytest.mark.parametrize("seed", range(5))
def test_site_split_keeps_sites_whole_and_near_the_target(seed):
    frame = make_frame({"a": 30, "b": 20, "c": 10}, sites=12)  # 12 sites x 5 images
    split = split_frame(frame, "site", 0.25, seed)
    val_sites = set(frame.loc[split == "val", "site"])
    train_sites = set(frame.loc[split == "train", "site"])
    assert val_sites and train_sites and not val_sites & train_sites
    # n_val = 15 = exactly three sites; the per-class target is (7.5, 5, 2.5). Every seed finds
    # three sites within an L1 distance of 3 of it (e.g. (7, 5, 3): 0.5 + 0 + 0.5 = 1).
    assert (split == "val").sum() == 15
    val = split_summary(frame, split)["val"].to_numpy()
    assert np.abs(val - [7.5, 5, 2.5]).sum() <= 3


def test_site_split_is_reproducible_and_seed_dependent():
    frame = make_frame({"a": 18, "b": 18}, sites=9)
    first = split_frame(frame, "site", 0.25, seed=0)
    assert split_frame(frame, "site", 0.25, seed=0).equals(first)
    choices = {tuple(val_ids(split_frame(frame, "site", 0.25, seed), frame)) for seed in range(8)}
    assert len(choices) > 1


def test_site_split_needs_two_sites(ena24_root):
    data = load_dataset(ena24_root)  # every image is from site "ENA24"
    with pytest.raises(DataError) as caught:
        split_frame(data.frame, "site", 0.25, seed=0)
    problem = caught.value.problems[0]
    assert problem.message == "the site split needs at least 2 sites; found 1 (ENA24)"
    assert "data.split=random" in problem.fix
