"""Train/validation splits of a labelled frame: random, stratified by class, or grouped by site.

Every strategy draws its randomness from one `np.random.default_rng(seed)` made here (never the
global generators), so the same frame and seed always give the same split.

The validation size is `ceil(n * val_fraction)` as in sklearn's `train_test_split` (the seed
recipe's 75/25 split), kept within 1..n-1 so neither side is empty.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd

from camtrap.config import FEATURES_CSV
from camtrap.errors import ConfigError, DataError, Problem

Strategy = Literal["random", "stratified", "site"]
TRAIN, VAL = "train", "val"


def split_frame(
    frame: pd.DataFrame, strategy: Strategy, val_fraction: float, seed: int
) -> pd.Series:
    """A "train"/"val" Series named "split" with `frame`'s index.

    Uses the `label` column (stratified, site) and the `site` column (site).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(frame) < 2:
        fix = "add images: a split needs at least one image on each side"
        raise DataError(Problem(FEATURES_CSV, f"only {len(frame)} image(s)", fix))
    rng = np.random.default_rng(seed)
    n_val = val_count(len(frame), val_fraction)
    if strategy == "random":
        is_val = _random_val(len(frame), n_val, rng)
    elif strategy == "stratified":
        is_val = _stratified_val(frame["label"].astype(str).to_numpy(), n_val, rng)
    elif strategy == "site":
        is_val = _site_val(frame, n_val, rng)
    else:
        raise ConfigError(f"unknown split strategy {strategy!r}; use random, stratified or site")
    return pd.Series(np.where(is_val, VAL, TRAIN), index=frame.index, name="split")


def val_count(n: int, val_fraction: float) -> int:
    """ceil(n * val_fraction) within 1..n-1; the 1e-9 keeps e.g. 100 * 0.07 = 7.000000000000001
    at 7 (sklearn would take 8)."""
    return min(max(math.ceil(n * val_fraction - 1e-9), 1), n - 1)


def split_summary(frame: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """Images per class on each side: index class, columns train, val, total."""
    counts = pd.crosstab(frame["label"], split).reindex(columns=[TRAIN, VAL], fill_value=0)
    counts["total"] = counts[TRAIN] + counts[VAL]
    counts.index.name, counts.columns.name = "class", None
    return counts


# --- random --------------------------------------------------------------------------------


def _random_val(n: int, n_val: int, rng: np.random.Generator) -> np.ndarray:
    is_val = np.zeros(n, dtype=bool)
    is_val[rng.permutation(n)[:n_val]] = True
    return is_val


# --- stratified ----------------------------------------------------------------------------


def _stratified_val(labels: np.ndarray, n_val: int, rng: np.random.Generator) -> np.ndarray:
    """Per class, a random `allocate_val`-sized subset goes to val."""
    classes, counts = np.unique(labels, return_counts=True)  # sorted: a stable order for rng
    is_val = np.zeros(len(labels), dtype=bool)
    for name, k in zip(classes, allocate_val(counts, n_val, rng), strict=True):
        members = np.flatnonzero(labels == name)
        is_val[rng.permutation(members)[:k]] = True
    return is_val


def allocate_val(counts: np.ndarray, n_val: int, rng: np.random.Generator) -> np.ndarray:
    """How many images of each class go to val.

    Largest remainder on the exact shares `count * n_val / n`, within bounds: a class with >= 2
    images keeps >= 1 in train and gets >= 1 in val where the total allows (if there are more
    such classes than val places, the largest classes get them); a class with 1 image stays in
    train unless the total needs it. Ties are broken randomly (by `rng`), not by class order.
    The total is `n_val` unless that would leave some class with no training image.
    """
    counts = np.asarray(counts, dtype=np.int64)
    share = counts * n_val / counts.sum()
    tiebreak = rng.random(len(counts))
    high = np.where(counts >= 2, counts - 1, 0)
    if high.sum() < n_val:  # only singletons can make up the rest
        high = np.where(counts >= 2, counts - 1, counts)
    low = _val_minimums(counts, n_val, tiebreak)
    val = np.clip(np.floor(share).astype(np.int64), low, high)
    target = min(n_val, int(high.sum()))
    while val.sum() < target:  # give a place to the class furthest below its share
        room = np.where(val < high, share - val, -np.inf)
        val[np.lexsort((tiebreak, room))[-1]] += 1
    while val.sum() > target:  # take one from the class furthest above its share
        excess = np.where(val > low, val - share, -np.inf)
        val[np.lexsort((tiebreak, excess))[-1]] -= 1
    return val


def _val_minimums(counts: np.ndarray, n_val: int, tiebreak: np.ndarray) -> np.ndarray:
    """1 for each class with >= 2 images, as far as `n_val` goes (largest classes first)."""
    eligible = np.flatnonzero(counts >= 2)
    order = eligible[np.lexsort((tiebreak[eligible], counts[eligible]))[::-1]]
    low = np.zeros(len(counts), dtype=np.int64)
    low[order[:n_val]] = 1
    return low


# --- site ----------------------------------------------------------------------------------


def _site_val(frame: pd.DataFrame, n_val: int, rng: np.random.Generator) -> np.ndarray:
    """Whole sites go to val; see `choose_val_sites` for how they are chosen."""
    sites = frame["site"].astype(str)
    table = pd.crosstab(sites, frame["label"].astype(str))  # sites x classes, sorted
    if len(table) < 2:
        fix = "use data.split=random or stratified, or give the images their real camera sites"
        found = ", ".join(table.index[:3])
        message = f"the site split needs at least 2 sites; found {len(table)} ({found})"
        raise DataError(Problem(FEATURES_CSV, message, fix))
    target = table.sum(axis=0).to_numpy() * n_val / len(frame)
    chosen = choose_val_sites(table.to_numpy(), target, rng)
    return sites.isin(table.index[chosen]).to_numpy()


def choose_val_sites(
    site_counts: np.ndarray, target: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Boolean mask of the sites (rows of `site_counts`, sites x classes) that go to val.

    Heuristic: the distance of a choice is the L1 distance between its per-class image counts
    and `target` (the per-class counts a perfect val_fraction split would have), which measures
    the val size and the class mix at once. Visit the sites in a random order and take each one
    that lowers the distance (first fit); then, while any single site moving in or out lowers it,
    move the best one. At least one site ends on each side.
    """
    n_sites = len(site_counts)
    chosen = np.zeros(n_sites, dtype=bool)
    for site in rng.permutation(n_sites):
        candidate = chosen | _one(n_sites, site)
        if _distance(site_counts, candidate, target) < _distance(site_counts, chosen, target):
            chosen = candidate
    chosen = _improve(site_counts, chosen, target)
    return _both_sides(site_counts, chosen, target)


def _improve(site_counts: np.ndarray, chosen: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Move single sites in/out of val while the best move strictly lowers the distance."""
    while True:
        current = _distance(site_counts, chosen, target)
        moves = [chosen ^ _one(len(chosen), site) for site in range(len(chosen))]
        best = min(moves, key=lambda move: _distance(site_counts, move, target))
        if _distance(site_counts, best, target) >= current:
            return chosen
        chosen = best


def _both_sides(site_counts: np.ndarray, chosen: np.ndarray, target: np.ndarray) -> np.ndarray:
    """If every site fell on one side, move the single site that keeps the distance lowest."""
    if 0 < chosen.sum() < len(chosen):
        return chosen
    moves = [chosen ^ _one(len(chosen), site) for site in range(len(chosen))]
    return min(moves, key=lambda move: _distance(site_counts, move, target))


def _one(n: int, index: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[index] = True
    return mask


def _distance(site_counts: np.ndarray, chosen: np.ndarray, target: np.ndarray) -> float:
    return float(np.abs(site_counts[chosen].sum(axis=0) - target).sum())
