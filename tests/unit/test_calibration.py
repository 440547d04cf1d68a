"""camtrap.calibration: temperature scaling, ECE and the reliability table, on hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from camtrap.calibration import (
    T_MAX,
    T_MIN,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_table,
)
from camtrap.metrics import log_loss
from camtrap.modelfile import CALIBRATED_FROM, with_temperature
from camtrap.plots import calibration_figure, figure_to_png_bytes

# Four images, two classes; with bins=5 (edges 0, .2, .4, .6, .8, 1):
#   conf 0.9 right -> bin 4;  conf 0.7 wrong, conf 0.7 right -> bin 3;  conf 0.55 right -> bin 2
PROBS = np.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.55, 0.45]])
TARGETS = np.array([0, 1, 1, 0])


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def _sampled(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(n, classes))
    probs = _softmax(logits)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def test_ece_of_a_hand_made_example() -> None:
    # bin 4: |1 - .9| x 1, bin 3: |.5 - .7| x 2, bin 2: |1 - .55| x 1, over 4 images
    expected = (0.1 + 2 * 0.2 + 0.45) / 4
    assert expected_calibration_error(PROBS, TARGETS, bins=5) == pytest.approx(expected)
    assert expected == pytest.approx(0.2375)


def test_reliability_table_per_bin() -> None:
    table = reliability_table(PROBS, TARGETS, bins=5)
    assert list(table.columns) == ["bin", "lower", "upper", "confidence", "accuracy", "count"]
    assert table["count"].tolist() == [0, 0, 1, 2, 1]
    assert table["lower"].tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert table["confidence"].tolist()[2:] == pytest.approx([0.55, 0.7, 0.9])
    assert table["accuracy"].tolist()[2:] == pytest.approx([1.0, 0.5, 1.0])
    assert table["confidence"].iloc[:2].isna().all()  # empty bins


def test_a_confidence_on_a_bin_edge_goes_to_the_lower_bin() -> None:
    # bins are (lower, upper]: 0.6 belongs to (0.4, 0.6], 1.0 to the last bin
    table = reliability_table(np.array([[0.6, 0.4], [1.0, 0.0]]), np.array([0, 0]), bins=5)
    assert table["count"].tolist() == [0, 0, 1, 0, 1]


def test_temperature_one_changes_nothing() -> None:
    assert apply_temperature(PROBS, 1.0) is PROBS
    assert expected_calibration_error(apply_temperature(PROBS, 1.0), TARGETS) == (
        expected_calibration_error(PROBS, TARGETS)
    )


def test_temperature_two_takes_the_square_root_of_the_odds() -> None:
    # log p / 2 -> p ** 0.5, renormalised: sqrt(.8) : sqrt(.2) = 2 : 1
    scaled = apply_temperature(np.array([[0.8, 0.2]]), 2.0)
    assert scaled[0] == pytest.approx([2 / 3, 1 / 3])


def test_fitted_temperature_of_a_two_class_example_by_hand() -> None:
    # Logits (2, 0) for four images, three of class 0: the log loss is lowest where
    # sigmoid(2 / T) = 3/4, i.e. T = 2 / log(3).
    logits = np.array([[2.0, 0.0]] * 4)
    targets = np.array([0, 0, 0, 1])
    assert fit_temperature(logits, targets) == pytest.approx(2 / math.log(3), rel=1e-6)
    # the same model given as probabilities
    assert fit_temperature(_softmax(logits), targets) == pytest.approx(2 / math.log(3), rel=1e-6)


def test_temperature_fitted_on_over_confident_logits_is_above_one_and_lowers_log_loss() -> None:
    logits, labels = _sampled(3000, 5, seed=1)
    over_confident = _softmax(4 * logits)
    temperature = fit_temperature(4 * logits, labels)
    assert 3.5 < temperature < 4.5  # it undoes the x4
    assert fit_temperature(over_confident, labels) == pytest.approx(temperature, rel=1e-6)
    before = log_loss(labels, over_confident)
    after = log_loss(labels, apply_temperature(over_confident, temperature))
    assert after < before - 0.1
    assert expected_calibration_error(apply_temperature(over_confident, temperature), labels) < (
        expected_calibration_error(over_confident, labels)
    )


def test_temperature_fitted_on_calibrated_data_is_about_one() -> None:
    logits, labels = _sampled(5000, 4, seed=2)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.08)


def test_fit_temperature_is_deterministic_and_bounded() -> None:
    logits, labels = _sampled(500, 3, seed=3)
    assert fit_temperature(logits, labels) == fit_temperature(logits, labels)
    # every image right with huge margins: the loss keeps falling as T shrinks -> lower bound
    sure = np.array([[50.0, 0.0], [0.0, 50.0]])
    assert fit_temperature(sure, np.array([0, 1])) == pytest.approx(T_MIN, rel=1e-6)
    # every image wrong: the loss keeps falling as T grows -> upper bound
    assert fit_temperature(sure, np.array([1, 0])) == pytest.approx(T_MAX, rel=1e-6)


def test_fit_temperature_rejects_bad_targets() -> None:
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(PROBS, np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="shape"):
        fit_temperature(PROBS, np.array([0, 1]))


def test_with_temperature_keeps_the_sha256_training_wrote() -> None:
    once = with_temperature({"model": {}, "temperature": 1.0}, 1.5, sha256="aaa")
    assert once["temperature"] == 1.5 and once[CALIBRATED_FROM] == "aaa"
    again = with_temperature(once, 1.7, sha256="bbb")  # bbb: the calibrated file's own sha256
    assert again["temperature"] == 1.7 and again[CALIBRATED_FROM] == "aaa"


def test_calibration_figure_has_one_panel_per_model_with_before_and_after() -> None:
    before = reliability_table(PROBS, TARGETS, bins=5)
    after = reliability_table(apply_temperature(PROBS, 2.0), TARGETS, bins=5)
    fig = calibration_figure({
        "best (epoch 3)": {"before (T = 1)": before, "after (T = 2)": after},
        "best_logloss (epoch 2)": {"before (T = 1)": before},
    })  # fmt: skip
    assert isinstance(fig, Figure)
    first, second = fig.axes
    assert first.get_title() == "best (epoch 3)" and second.get_title() == "best_logloss (epoch 2)"
    labels = [line.get_label() for line in first.get_lines()]
    assert labels == ["calibrated", "before (T = 1)", "after (T = 2)"]
    # only the three non-empty bins are drawn, at (confidence, accuracy)
    x, y = first.get_lines()[1].get_data()
    assert list(x) == pytest.approx([0.55, 0.7, 0.9]) and list(y) == pytest.approx([1, 0.5, 1])
    assert figure_to_png_bytes(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="panels is empty"):
        calibration_figure({})
