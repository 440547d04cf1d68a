"""Events: which frames make one (given ids, else same site within the gap), and the two rules
that make an event's prediction, on frames whose probabilities are written out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from camtrap.events import (
    event_ids,
    event_metrics,
    event_probabilities,
    events_table,
    has_events,
)

CLASSES = ["blank", "deer", "fox"]


def _frames(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"id": [f"f{i}" for i in range(n)], "site": ["A"] * n}
    return pd.DataFrame({**base, **columns})


def test_given_event_ids_win_and_timestamps_make_the_others_per_site_within_the_gap():
    frame = _frames(
        site=["A", "A", "A", "B", "A", "B"],
        event=["", "", "", "", "", "given"],
        timestamp=["2024-05-01T10:00:00Z", "2024-05-01T10:00:50Z", "2024-05-01T10:05:00Z",
                   "2024-05-01T10:00:10Z", "2024-05-01T10:05:30Z", "2024-05-01T10:00:20Z"],
    )  # fmt: skip
    ids = event_ids(frame, gap_s=60).tolist()
    # 10:00:00 and 10:00:50 are 50 s apart (one event); 10:05:00 is 250 s later (a new one),
    # 10:05:30 joins it; site B's timed frame is its own event; f5 keeps its given id.
    assert ids == [
        "A@2024-05-01T10:00:00Z", "A@2024-05-01T10:00:00Z", "A@2024-05-01T10:05:00Z",
        "B@2024-05-01T10:00:10Z", "A@2024-05-01T10:05:00Z", "given",
    ]  # fmt: skip
    assert event_ids(frame, gap_s=10).tolist()[1] == "A@2024-05-01T10:00:50Z"  # 50 s > 10 s


def test_frames_without_event_or_parsable_timestamp_have_no_event():
    frame = _frames(event=["", ""], timestamp=["", "not a time"])
    assert event_ids(frame, 60).tolist() == ["", ""]
    assert not has_events(frame, 60)
    assert not has_events(pd.DataFrame({"id": ["a"], "site": ["A"]}), 60)


def test_the_mean_rule_averages_the_frames():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.2, 0.4, 0.4]])
    assert event_probabilities(probs, CLASSES, "mean") == pytest.approx([0.4, 0.4, 0.2])


def test_max_animal_takes_the_most_confident_non_blank_frame():
    # frame 0 is blank at 0.9; frame 1 says deer at 0.6; frame 2 fox at 0.7: fox decides,
    # although blank is the most probable class of the mean (0.5667).
    probs = np.array([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.2, 0.1, 0.7]])
    assert event_probabilities(probs, CLASSES, "max-animal").tolist() == [0.2, 0.1, 0.7]
    assert event_probabilities(probs, CLASSES, "mean").argmax() == 0


def test_max_animal_is_blank_only_when_every_frame_is():
    probs = np.array([[0.6, 0.3, 0.1], [0.9, 0.05, 0.05]])
    assert event_probabilities(probs, CLASSES, "max-animal").tolist() == [0.9, 0.05, 0.05]
    with pytest.raises(ValueError, match="not one of mean, max-animal"):
        event_probabilities(probs, CLASSES, "vote")


def test_events_table_lists_each_event_once_with_its_frames_and_span():
    frame = _frames(
        event=["e1", "e1", "", "e2"],
        timestamp=["2024-05-01T10:00:02Z", "2024-05-01T10:00:00Z", "", "2024-05-01T11:00:00Z"],
    )
    probs = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    table = events_table(frame, probs, CLASSES, "mean", 60)
    assert table[["event", "site", "frames", "start", "end"]].values.tolist() == [
        ["e1", "A", 2, "2024-05-01T10:00:00Z", "2024-05-01T10:00:02Z"],
        ["e2", "A", 1, "2024-05-01T11:00:00Z", "2024-05-01T11:00:00Z"],
    ]  # f2 has no event: it is its own prediction, not an event's
    assert table[CLASSES].values.tolist() == [[0.0, 0.5, 0.5], [0.5, 0.5, 0.0]]


def test_offsets_are_compared_on_one_clock():
    # 10:00+02:00 is 08:00Z: 30 s before 08:00:30Z, so one event across the two notations
    frame = _frames(event=["", ""], timestamp=["2024-05-01T10:00:00+02:00", "2024-05-01T08:00:30Z"])
    assert len(set(event_ids(frame, 60))) == 1


def test_val_event_metrics_by_hand():
    # e1: two deer frames (mean p(deer) = 0.6; max-animal: frame 1's 0.8); e2: one fox frame
    # predicted blank at 0.7 (p(fox) 0.2); f3 has no event and is left out.
    frame = _frames(event=["e1", "e1", "e2", ""], timestamp=["", "", "", ""])
    targets = np.array([1, 1, 2, 0])
    probs = np.array([[0.2, 0.4, 0.4], [0.1, 0.8, 0.1], [0.7, 0.1, 0.2], [1.0, 0.0, 0.0]])
    table = event_metrics(frame, targets, probs, CLASSES, 60)
    assert table[["rule", "events", "images"]].values.tolist() == [
        ["mean", 2, 3],
        ["max-animal", 2, 3],
    ]
    mean, max_animal = table.to_dict("records")
    assert mean["accuracy"] == 0.5  # e1 deer right, e2 blank wrong
    assert mean["log_loss"] == pytest.approx(-(np.log(0.6) + np.log(0.2)) / 2)
    # max-animal: e1 from frame 1 (deer 0.8); e2's only frame is blank -> blank everywhere
    assert max_animal["accuracy"] == 0.5
    assert max_animal["log_loss"] == pytest.approx(-(np.log(0.8) + np.log(0.2)) / 2)
