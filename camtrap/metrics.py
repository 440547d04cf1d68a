"""Classification metrics: numpy arrays in, floats and DataFrames out. Compute only, no I/O.

Conventions shared by every function:
- `targets`: int array (n,) of class indices in [0, n_classes).
- `probs`: float array (n, n_classes), each row a probability distribution (softmax output).
- `preds`: int array (n,) of predicted class indices, normally `probs.argmax(axis=1)`.
Ties between equal probabilities go to the lower class index, as `np.argmax` does, so
`top_k_accuracy(..., k=1) == accuracy(...)` always.
Definitions follow scikit-learn (log_loss, top_k_accuracy_score, precision_recall_fscore_support
with zero_division=0, confusion_matrix), which is not a dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# The metrics of every epoch and split, in the column order of metrics/epochs.csv.
EPOCH_METRICS = ("accuracy", "loss", "log_loss", "top3_accuracy")
# Rows of `probs` must sum to 1 within this: float32 softmax is off by ~1e-7, fp16 by ~1e-3.
ROW_SUM_TOLERANCE = 1e-2


def _as_targets(targets: np.ndarray, name: str = "targets") -> np.ndarray:
    array = np.asarray(targets)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {array.shape}")
    is_integer = np.issubdtype(array.dtype, np.integer)
    if array.size and not is_integer and not np.all(np.mod(array, 1) == 0):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64)


def _check_range(indices: np.ndarray, n_classes: int, name: str) -> None:
    if indices.size and (indices.min() < 0 or indices.max() >= n_classes):
        raise ValueError(
            f"{name} must be class indices in [0, {n_classes}), "
            f"got values from {indices.min()} to {indices.max()}"
        )


def _as_probs(targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(targets int64 (n,), probs float64 (n, c)), validated; ValueError says what is wrong."""
    labels = _as_targets(targets)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D array (n_samples, n_classes), got shape {p.shape}")
    if p.shape[0] != labels.shape[0]:
        raise ValueError(
            "targets and probs disagree on the number of samples: "
            f"{labels.shape[0]} vs {p.shape[0]}"
        )
    if labels.size == 0:
        raise ValueError("no samples: targets and probs are empty")
    if p.shape[1] < 1:
        raise ValueError("probs has no class columns")
    _check_range(labels, p.shape[1], "targets")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0 + ROW_SUM_TOLERANCE:
        raise ValueError("probs must be finite probabilities in [0, 1] (pass softmax, not logits)")
    worst = np.abs(p.sum(axis=1) - 1.0).max()
    if worst > ROW_SUM_TOLERANCE:
        raise ValueError(f"each row of probs must sum to 1; the worst row is off by {worst:.3g}")
    return labels, p


def _as_preds(
    targets: np.ndarray, preds: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"classes has duplicate names: {names}")
    labels = _as_targets(targets)
    predicted = _as_targets(preds, name="preds")
    if labels.shape != predicted.shape:
        raise ValueError(
            f"targets and preds disagree on the number of samples: "
            f"{labels.shape[0]} vs {predicted.shape[0]}"
        )
    _check_range(labels, len(names), "targets")
    _check_range(predicted, len(names), "preds")
    return labels, predicted, names


def accuracy(targets: np.ndarray, probs: np.ndarray) -> float:
    """Fraction of samples whose most probable class is the target."""
    labels, p = _as_probs(targets, probs)
    return float(np.mean(p.argmax(axis=1) == labels))


def log_loss(targets: np.ndarray, probs: np.ndarray, eps: float = 1e-15) -> float:
    """Mean of -log(p_true), with p_true clipped to [eps, 1 - eps], in float64 (as sklearn)."""
    labels, p = _as_probs(targets, probs)
    p_true = np.clip(p[np.arange(labels.size), labels], eps, 1.0 - eps)
    return float(np.mean(-np.log(p_true)))


def top_k_accuracy(targets: np.ndarray, probs: np.ndarray, k: int = 3) -> float:
    """Fraction of samples whose target is among the k most probable classes (k >= c gives 1.0)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    labels, p = _as_probs(targets, probs)
    if k >= p.shape[1]:
        return 1.0
    # Stable sort of -p: equal probabilities keep class order, the same tie rule as argmax.
    top_k = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top_k == labels[:, None], axis=1)))


def summary_metrics(targets: np.ndarray, probs: np.ndarray, k: int = 3) -> dict[str, float]:
    """{"accuracy", "log_loss", f"top{k}_accuracy"} for one pass over a split."""
    return {
        "accuracy": accuracy(targets, probs),
        "log_loss": log_loss(targets, probs),
        f"top{k}_accuracy": top_k_accuracy(targets, probs, k=k),
    }


def _confusion_counts(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0.0 where the denominator is 0 (sklearn's zero_division=0)."""
    num = numerator.astype(np.float64)
    den = denominator.astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_metrics(
    targets: np.ndarray, preds: np.ndarray, classes: Sequence[str]
) -> pd.DataFrame:
    """One row per class, in `classes` order: class, precision, recall, f1, support.

    Classes without samples or predictions get 0.0 where a ratio is undefined."""
    labels, predicted, names = _as_preds(targets, preds, classes)
    counts = _confusion_counts(labels, predicted, len(names))
    true_pos = np.diag(counts)
    support = counts.sum(axis=1)  # samples whose target is the class
    predicted_count = counts.sum(axis=0)  # samples predicted as the class
    false_neg = support - true_pos
    false_pos = predicted_count - true_pos
    return pd.DataFrame(
        {
            "class": names,
            "precision": _safe_ratio(true_pos, predicted_count),
            "recall": _safe_ratio(true_pos, support),
            # 2TP / (2TP + FP + FN) is the harmonic mean of P and R without its 0/0 cases.
            "f1": _safe_ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg),
            "support": support.astype(np.int64),
        }
    )


def confusion_matrix(
    targets: np.ndarray, preds: np.ndarray, classes: Sequence[str]
) -> pd.DataFrame:
    """Counts with rows = true class (index "true") and columns = predicted class ("predicted")."""
    labels, predicted, names = _as_preds(targets, preds, classes)
    return pd.DataFrame(
        _confusion_counts(labels, predicted, len(names)),
        index=pd.Index(names, name="true"),
        columns=pd.Index(names, name="predicted"),
    )


def per_site_metrics(targets: np.ndarray, probs: np.ndarray, sites: Sequence[str]) -> pd.DataFrame:
    """One row per camera site, sorted by site: site, images, accuracy, log_loss (as `accuracy`
    and `log_loss` on that site's images). Photos to label come from sites never trained on;
    the spread across sites shows how much one site's number can differ from the mean."""
    labels, p = _as_probs(targets, probs)
    names = np.asarray([str(s) for s in sites], dtype=object)
    if names.shape != labels.shape:
        raise ValueError(
            f"sites and targets disagree on the number of samples: {names.size} vs {labels.size}"
        )
    rows = []
    for site in sorted(set(names)):
        mask = names == site
        rows.append({
            "site": site,
            "images": int(mask.sum()),
            "accuracy": accuracy(labels[mask], p[mask]),
            "log_loss": log_loss(labels[mask], p[mask]),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["site", "images", "accuracy", "log_loss"])
