"""camtrap.metrics against values worked out by hand and against brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from camtrap.metrics import (
    accuracy,
    confusion_matrix,
    log_loss,
    per_class_metrics,
    per_site_metrics,
    summary_metrics,
    top_k_accuracy,
)

CLASSES = ["a", "b", "c", "d"]

# Four samples, four classes. Row by row: true class, argmax, rank of the true class.
TARGETS = np.array([0, 1, 2, 3])
PROBS = np.array(
    [
        [0.70, 0.10, 0.10, 0.10],  # true a: argmax a (right), p_true 0.7, rank 1
        [0.50, 0.20, 0.20, 0.10],  # true b: argmax a (wrong), p_true 0.2, rank 2 (tie with c)
        [0.20, 0.30, 0.40, 0.10],  # true c: argmax c (right), p_true 0.4, rank 1
        [0.40, 0.30, 0.20, 0.10],  # true d: argmax a (wrong), p_true 0.1, rank 4
    ]
)


def test_accuracy_counts_argmax_hits() -> None:
    # rows 0 and 2 are right -> 2/4
    assert accuracy(TARGETS, PROBS) == 0.5


def test_log_loss_is_mean_negative_log_of_true_probability() -> None:
    # -(ln 0.7 + ln 0.2 + ln 0.4 + ln 0.1) / 4 = (0.356675 + 1.609438 + 0.916291 + 2.302585) / 4
    assert log_loss(TARGETS, PROBS) == pytest.approx(1.2962472, abs=1e-7)


def test_log_loss_clips_zero_probability_to_eps() -> None:
    # p_true = 0 is clipped to 1e-15: -ln(1e-15) = 34.538776; the other row is ln(1) = 0 -> /2
    targets = np.array([0, 1])
    probs = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert log_loss(targets, probs) == pytest.approx(34.538776 / 2, rel=1e-7)
    # a larger eps: -ln(0.01) / 2 = 4.605170 / 2; and p = 1 is clipped to 0.99: -ln(0.99)
    assert log_loss(targets, probs, eps=0.01) == pytest.approx((4.605170 + 0.0100503) / 2)


def test_log_loss_is_float64_even_for_float32_probs() -> None:
    # float32(0.1) is 0.10000000149...; in float64 the log of that is still -2.302585078...
    probs = np.array([[0.9, 0.1]], dtype=np.float32)
    assert log_loss(np.array([1]), probs) == pytest.approx(-math.log(0.1), rel=1e-7)


def test_top_k_accuracy_by_rank_of_true_class() -> None:
    # ranks 1, 2, 1, 4: top-1 2/4, top-2 3/4, top-3 3/4 (row 3 ranks 4th), top-4 everything
    assert top_k_accuracy(TARGETS, PROBS, k=1) == 0.5
    assert top_k_accuracy(TARGETS, PROBS, k=2) == 0.75
    assert top_k_accuracy(TARGETS, PROBS, k=3) == 0.75
    assert top_k_accuracy(TARGETS, PROBS, k=4) == 1.0
    assert top_k_accuracy(TARGETS, PROBS, k=10) == 1.0  # k >= n_classes


def test_top_k_ties_go_to_the_lower_class_index_like_argmax() -> None:
    # all equal: argmax picks class 0, so top-1 holds only for target 0 and top-2 for 0 and 1
    probs = np.full((3, 3), 1 / 3)
    targets = np.array([0, 1, 2])
    assert top_k_accuracy(targets, probs, k=1) == pytest.approx(1 / 3)
    assert top_k_accuracy(targets, probs, k=1) == accuracy(targets, probs)
    assert top_k_accuracy(targets, probs, k=2) == pytest.approx(2 / 3)


def test_summary_metrics_keys_and_values() -> None:
    assert summary_metrics(TARGETS, PROBS) == {
        "accuracy": 0.5,
        "log_loss": pytest.approx(1.2962472, abs=1e-7),
        "top3_accuracy": 0.75,
    }
    # the key follows k: top-2 is 3/4 (see the rank comments above)
    assert summary_metrics(TARGETS, PROBS, k=2)["top2_accuracy"] == 0.75


# Six samples of three classes; targets vs predictions:
#   a -> a, a -> b, b -> b, c -> a, c -> c, c -> c
PR_TARGETS = np.array([0, 0, 1, 2, 2, 2])
PR_PREDS = np.array([0, 1, 1, 0, 2, 2])


def test_per_class_metrics_by_hand() -> None:
    frame = per_class_metrics(PR_TARGETS, PR_PREDS, ["a", "b", "c"])
    assert list(frame.columns) == ["class", "precision", "recall", "f1", "support"]
    assert frame["class"].tolist() == ["a", "b", "c"]
    # a: TP=1, FP=1 (the c predicted as a), FN=1 -> P 1/2, R 1/2, F1 1/2, support 2
    # b: TP=1, FP=1 (the a predicted as b), FN=0 -> P 1/2, R 1,   F1 2/3, support 1
    # c: TP=2, FP=0, FN=1                      -> P 1,   R 2/3, F1 4/5, support 3
    assert frame["precision"].tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert frame["recall"].tolist() == pytest.approx([0.5, 1.0, 2 / 3])
    assert frame["f1"].tolist() == pytest.approx([0.5, 2 / 3, 0.8])
    assert frame["support"].tolist() == [2, 1, 3]


def test_per_class_metrics_zero_division_gives_zero() -> None:
    # d has no samples and no predictions: P, R, F1 are 0/0 -> 0.0, support 0 (sklearn's
    # zero_division=0). b has one sample, never predicted: P = 0/0 -> 0.0, R = 0/1 = 0.0.
    frame = per_class_metrics(np.array([0, 1]), np.array([0, 0]), CLASSES)
    row_b = frame.set_index("class").loc["b"]
    row_d = frame.set_index("class").loc["d"]
    assert (row_b["precision"], row_b["recall"], row_b["f1"], row_b["support"]) == (
        0.0,
        0.0,
        0.0,
        1,
    )
    assert (row_d["precision"], row_d["recall"], row_d["f1"], row_d["support"]) == (
        0.0,
        0.0,
        0.0,
        0,
    )
    # a: TP=1, FP=1 -> precision 1/2, recall 1/1, F1 2/3
    assert frame["precision"].iloc[0] == 0.5
    assert frame["f1"].iloc[0] == pytest.approx(2 / 3)
    assert len(frame) == 4


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(PR_TARGETS, PR_PREDS, ["a", "b", "c"])
    # rows are true classes, columns predictions (see the pair list above PR_TARGETS)
    expected = pd.DataFrame(
        [[1, 1, 0], [0, 1, 0], [1, 0, 2]],
        index=pd.Index(["a", "b", "c"], name="true"),
        columns=pd.Index(["a", "b", "c"], name="predicted"),
    )
    pd.testing.assert_frame_equal(cm, expected, check_dtype=False)
    assert np.issubdtype(cm.to_numpy().dtype, np.integer)
    assert cm.to_numpy().sum() == 6


def test_confusion_matrix_keeps_classes_without_samples() -> None:
    cm = confusion_matrix(np.array([0]), np.array([0]), CLASSES)
    assert cm.shape == (4, 4)
    assert cm.loc["a", "a"] == 1
    assert cm.to_numpy().sum() == 1


# --- brute force: plain Python loops over random data, nothing shared with the implementation ---


def _brute_force(targets: list[int], probs: list[list[float]], k: int, n_classes: int) -> dict:
    n = len(targets)
    preds = [max(range(n_classes), key=lambda c, row=row: (row[c], -c)) for row in probs]
    hits = sum(1 for t, p in zip(targets, preds, strict=True) if t == p)
    loss = sum(
        -math.log(min(max(row[t], 1e-15), 1 - 1e-15)) for t, row in zip(targets, probs, strict=True)
    )
    in_top_k = 0
    for t, row in zip(targets, probs, strict=True):
        better = sum(1 for c in range(n_classes) if row[c] > row[t] or (row[c] == row[t] and c < t))
        in_top_k += better < k
    counts = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(targets, preds, strict=True):
        counts[t][p] += 1
    per_class = []
    for c in range(n_classes):
        tp = counts[c][c]
        predicted = sum(counts[r][c] for r in range(n_classes))
        actual = sum(counts[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append((precision, recall, f1, actual))
    return {
        "accuracy": hits / n,
        "log_loss": loss / n,
        "top_k": in_top_k / n,
        "preds": preds,
        "counts": counts,
        "per_class": per_class,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, n_classes, k = 200, 7, 3
    targets = rng.integers(0, n_classes - 1, size=n)  # the last class never occurs
    logits = rng.normal(size=(n, n_classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[:5] = 1 / n_classes  # a few all-tied rows exercise the tie rule
    expected = _brute_force(targets.tolist(), probs.tolist(), k, n_classes)
    classes = [f"class_{i}" for i in range(n_classes)]
    preds = probs.argmax(axis=1)

    summary = summary_metrics(targets, probs, k=k)
    assert summary["accuracy"] == pytest.approx(expected["accuracy"])
    assert summary["log_loss"] == pytest.approx(expected["log_loss"], rel=1e-12)
    assert summary["top3_accuracy"] == pytest.approx(expected["top_k"])
    assert preds.tolist() == expected["preds"]
    assert confusion_matrix(targets, preds, classes).to_numpy().tolist() == expected["counts"]
    frame = per_class_metrics(targets, preds, classes)
    got = list(zip(frame["precision"], frame["recall"], frame["f1"], frame["support"], strict=True))
    for row, want in zip(got, expected["per_class"], strict=True):
        assert row == pytest.approx(want)
    assert frame["support"].iloc[-1] == 0  # the class that never occurs still has a row


# --- shape and value checks ---


@pytest.mark.parametrize(
    ("targets", "probs", "message"),
    [
        (np.array([0, 1]), np.array([0.5, 0.5]), "2-D"),
        (np.array([[0], [1]]), np.full((2, 2), 0.5), "1-D"),
        (np.array([0, 1, 0]), np.full((2, 2), 0.5), "number of samples"),
        (np.array([0, 2]), np.full((2, 2), 0.5), r"\[0, 2\)"),
        (np.array([0, -1]), np.full((2, 2), 0.5), r"\[0, 2\)"),
        (np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 0.5]]), "logits"),
        (np.array([0, 1]), np.array([[0.2, 0.2], [0.5, 0.5]]), "sum to 1"),
        (np.array([0.5, 1.0]), np.full((2, 2), 0.5), "integer"),
        (np.array([], dtype=int), np.zeros((0, 2)), "no samples"),
    ],
)
def test_summary_metrics_rejects_bad_input(targets, probs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summary_metrics(targets, probs)


def test_top_k_rejects_k_below_one() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k_accuracy(TARGETS, PROBS, k=0)


@pytest.mark.parametrize(
    ("targets", "preds", "classes", "message"),
    [
        (np.array([0, 1]), np.array([0]), ["a", "b"], "number of samples"),
        (np.array([0, 1]), np.array([0, 2]), ["a", "b"], "preds must be class indices"),
        (np.array([0, 3]), np.array([0, 1]), ["a", "b"], "targets must be class indices"),
        (np.array([0, 1]), np.array([0, 1]), ["a", "a"], "duplicate"),
        (np.array([0, 1]), np.array([0, 1]), [], "empty"),
    ],
)
def test_count_metrics_reject_bad_input(targets, preds, classes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        per_class_metrics(targets, preds, classes)
    with pytest.raises(ValueError, match=message):
        confusion_matrix(targets, preds, classes)


# --- per camera site ----------------------------------------------------------------------------

SITE_PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.2, 0.8], [0.25, 0.75]])
SITE_TARGETS = np.array([0, 0, 1, 0, 1])
SITE_NAMES = ["S0120", "S0007", "S0120", "S0007", "S0120"]


def test_per_site_metrics_by_hand() -> None:
    table = per_site_metrics(SITE_TARGETS, SITE_PROBS, SITE_NAMES)
    assert list(table.columns) == ["site", "images", "accuracy", "log_loss"]
    assert table["site"].tolist() == ["S0007", "S0120"]  # sorted by site
    assert table["images"].tolist() == [2, 3]
    # S0007: 0.6 right, 0.2 wrong (argmax 1). S0120: 0.9 right, a 0.5/0.5 tie goes to class 0
    # (wrong for target 1), 0.75 right.
    assert table["accuracy"].tolist() == pytest.approx([1 / 2, 2 / 3])
    assert table["log_loss"].tolist() == pytest.approx([
        -(math.log(0.6) + math.log(0.2)) / 2,
        -(math.log(0.9) + math.log(0.5) + math.log(0.75)) / 3,
    ])  # fmt: skip


def test_per_site_metrics_need_one_site_per_image() -> None:
    with pytest.raises(ValueError, match="sites and targets"):
        per_site_metrics(SITE_TARGETS, SITE_PROBS, SITE_NAMES[:4])
