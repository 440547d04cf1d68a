"""camtrap.metrics.per_site_metrics on a hand-made example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from camtrap.metrics import per_site_metrics

PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.2, 0.8], [0.25, 0.75]])
TARGETS = np.array([0, 0, 1, 0, 1])
SITES = ["S0120", "S0007", "S0120", "S0007", "S0120"]


def test_per_site_metrics_by_hand() -> None:
    table = per_site_metrics(TARGETS, PROBS, SITES)
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
        per_site_metrics(TARGETS, PROBS, SITES[:4])
