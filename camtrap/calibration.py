"""Temperature scaling: one number T that divides the logits before the softmax, fitted on the val
split to minimise log loss. It changes no prediction's class (argmax is unchanged), only how sure
the probabilities are. Also how calibrated probabilities are: the expected calibration error and
the reliability table behind it. Compute only, no I/O."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from camtrap.metrics import _as_probs

# The search range of fit_temperature. Below 0.05 or above 20 a model's probabilities are
# pushed to one-hot or flattened to uniform: a fit that lands on a bound says the val split
# is too small or the model degenerate, not that such a T is right.
T_MIN, T_MAX = 0.05, 20.0
_SEARCH_STEPS = 80  # golden-section steps on log T: the bracket shrinks to ~1e-16 of its width
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
LOG_LOSS_EPS = 1e-15  # as camtrap.metrics.log_loss clips p_true
RELIABILITY_COLUMNS = ("bin", "lower", "upper", "confidence", "accuracy", "count")


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) from softmax(logits): log p differs from the logits by a per-row
    constant, which the softmax removes. T = 1 returns `probs` unchanged (the same array)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if temperature == 1.0:
        return probs
    with np.errstate(divide="ignore"):  # a probability of 0 stays 0
        scaled = np.log(probs.astype(np.float64)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(probs.dtype)


def _looks_like_probs(values: np.ndarray) -> bool:
    return bool(
        values.min() >= 0.0
        and values.max() <= 1.0
        and np.allclose(values.sum(axis=1), 1.0, atol=1e-2)
    )


def _as_logits(probs_or_logits: np.ndarray) -> np.ndarray:
    """float64 logits (up to a per-row constant): log p for probabilities, else as given."""
    values = np.asarray(probs_or_logits, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, n_classes) array, got shape {values.shape}")
    if not _looks_like_probs(values):
        if not np.all(np.isfinite(values)):
            raise ValueError("logits must be finite")
        return values
    with np.errstate(divide="ignore"):  # p = 0 -> -inf: it stays 0 at every T
        return np.log(values)


def _log_loss_at(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """metrics.log_loss(targets, softmax(logits / T)), vectorised for the search."""
    scaled = logits / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        p_true = np.exp(scaled[np.arange(targets.size), targets]) / np.exp(scaled).sum(axis=1)
    return float(np.mean(-np.log(np.clip(p_true, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS))))


def fit_temperature(probs_or_logits: np.ndarray, targets: np.ndarray) -> float:
    """The T in [T_MIN, T_MAX] that minimises the log loss of softmax(logits / T) on
    (`probs_or_logits`, `targets`). Rows that are probabilities (in [0, 1], summing to 1) are
    taken as softmax outputs, anything else as logits. Golden-section search on log T: the loss
    is convex in 1/T, so it has one minimum there; a fixed number of steps, so the same inputs
    always give the same T."""
    logits = _as_logits(probs_or_logits)
    labels = np.asarray(targets).astype(np.int64)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"targets must have shape ({logits.shape[0]},), got {labels.shape}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"targets must be class indices in [0, {logits.shape[1]})")

    def loss(log_t: float) -> float:
        return _log_loss_at(logits, labels, math.exp(log_t))

    low, high = math.log(T_MIN), math.log(T_MAX)
    inner_low, inner_high = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    loss_low, loss_high = loss(inner_low), loss(inner_high)
    for _ in range(_SEARCH_STEPS):
        if loss_low <= loss_high:  # the minimum is left of inner_high
            high, inner_high, loss_high = inner_high, inner_low, loss_low
            inner_low = high - _GOLDEN * (high - low)
            loss_low = loss(inner_low)
        else:
            low, inner_low, loss_low = inner_low, inner_high, loss_high
            inner_high = low + _GOLDEN * (high - low)
            loss_high = loss(inner_high)
    return float(math.exp((low + high) / 2))


def reliability_table(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> pd.DataFrame:
    """One row per confidence bin (equal widths over [0, 1]; bin i holds the images whose top
    probability lies in (lower, upper]): bin, lower, upper, confidence (mean top probability),
    accuracy (fraction whose top class is right), count. Empty bins have count 0 and NaN."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    labels, p = _as_probs(targets, probs)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins: 0 / 0 -> NaN
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    return pd.DataFrame({
        "bin": np.arange(bins), "lower": edges[:-1], "upper": edges[1:],
        "confidence": mean_confidence, "accuracy": accuracy, "count": count.astype(np.int64),
    })  # fmt: skip


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """ECE: the mean over images of |accuracy - confidence| of their bin of reliability_table,
    i.e. sum over bins of count / n * |accuracy - confidence| (Guo et al., 2017)."""
    table = reliability_table(probs, targets, bins)
    used = table[table["count"] > 0]
    gap = (used["accuracy"] - used["confidence"]).abs()
    return float((used["count"] * gap).sum() / used["count"].sum())
