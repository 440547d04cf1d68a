"""Photos come in bursts: one animal triggers 3-10 frames. An event is a burst: the data's own
event ids (Camtrap DP eventID, COCO seq_id) or, where there are none but there are timestamps,
the frames of one site less than `gap_s` seconds apart. An event's prediction is the mean of its
frames' probabilities, or (rule `max-animal`) the most confident non-blank frame's: blank only if
every frame is blank. Compute only: frames in, DataFrames and arrays out."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from camtrap.config import EVENT_RULES
from camtrap.metrics import accuracy, log_loss

BLANK_CLASSES = ("blank", "empty")


def event_ids(frame: pd.DataFrame, gap_s: float) -> pd.Series:
    """Each frame's event: its own event id, else one made from its site and the timestamps
    (`site@first-timestamp`), else "" (no event: the frame is its own)."""
    given = frame.get("event", pd.Series([""] * len(frame), index=frame.index)).fillna("")
    stamps = frame.get("timestamp", pd.Series([""] * len(frame), index=frame.index)).fillna("")
    made = pd.Series([""] * len(frame), index=frame.index, dtype=object)
    parsed = stamps.map(_parse)
    timed = frame.index[(given == "") & parsed.notna()]
    sites = frame.get("site", pd.Series([""] * len(frame), index=frame.index))
    for site, index in frame.loc[timed].groupby(sites.loc[timed].to_numpy()).groups.items():
        order = sorted(index, key=lambda i: parsed[i])
        start = order[0]
        for previous, current in zip(order, order[1:], strict=False):
            if (parsed[current] - parsed[previous]).total_seconds() > gap_s:
                start = current
            made[current] = f"{site}@{stamps[start]}"
        made[order[0]] = f"{site}@{stamps[order[0]]}"
    return given.where(given != "", made)


def _parse(text: str) -> datetime | None:
    """ISO 8601 (Camtrap DP) or COCO's `YYYY-MM-DD HH:MM:SS`; None when neither."""
    if not text:
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    # one clock to compare on: an offset given, UTC; none given, the camera's local time
    return stamp.astimezone(UTC).replace(tzinfo=None) if stamp.tzinfo else stamp


def blank_columns(classes: list[str]) -> list[int]:
    return [i for i, name in enumerate(classes) if name.lower() in BLANK_CLASSES]


def event_probabilities(probs: np.ndarray, classes: list[str], rule: str) -> np.ndarray:
    """One event's probabilities from its frames' (rows of `probs`)."""
    if rule == "mean" or len(probs) == 1:
        return probs.mean(axis=0)
    if rule != "max-animal":
        raise ValueError(f"event rule {rule!r} is not one of {', '.join(EVENT_RULES)}")
    blank = blank_columns(classes)
    top = probs.argmax(axis=1)
    animal = [i for i in range(len(probs)) if top[i] not in blank]
    if not animal:  # every frame is blank: the event is too (its most confident frame)
        return probs[probs.max(axis=1).argmax()]
    best = max(animal, key=lambda i: probs[i].max())
    return probs[best]


def events_table(
    frame: pd.DataFrame, probs: np.ndarray, classes: list[str], rule: str, gap_s: float
) -> pd.DataFrame:
    """event, site, frames, first and last timestamp, then one probability per class, for
    every event (frames without one are left out: they are their own prediction), in the order
    their first frames come."""
    events = event_ids(frame, gap_s).to_numpy()
    records = []
    for event, index in frame.groupby(events, sort=False).indices.items():
        if event == "":
            continue
        part = frame.iloc[index]
        stamps = sorted(s for s in part.get("timestamp", pd.Series(dtype=str)) if s)
        row = {
            "event": event,
            "site": part["site"].iloc[0] if "site" in part else "",
            "frames": len(index),
            "start": stamps[0] if stamps else "",
            "end": stamps[-1] if stamps else "",
        }
        row.update(zip(classes, event_probabilities(probs[index], classes, rule), strict=True))
        records.append(row)
    return pd.DataFrame.from_records(records, columns=["event", "site", "frames", "start", "end",
                                                       *classes])  # fmt: skip


def has_events(frame: pd.DataFrame, gap_s: float) -> bool:
    """Whether the frames carry events (given, or made from timestamps)."""
    return bool((event_ids(frame, gap_s) != "").any())


def event_metrics(
    frame: pd.DataFrame, targets: np.ndarray, probs: np.ndarray, classes: list[str], gap_s: float
) -> pd.DataFrame:
    """Val metrics per event, one row per rule: rule, events, images (in events), accuracy and
    log_loss over events. An event's true class is its frames' most common label (ties: the
    first in class order); frames without an event are left out (their per-image numbers are
    metrics/epochs.csv's)."""
    events = event_ids(frame, gap_s).to_numpy()
    groups = [idx for event, idx in frame.groupby(events, sort=False).indices.items() if event]
    truth = np.array([np.bincount(targets[idx], minlength=len(classes)).argmax() for idx in groups])
    rows = []
    for rule in EVENT_RULES:
        p = np.stack([event_probabilities(probs[idx], classes, rule) for idx in groups])
        rows.append({
            "rule": rule, "events": len(groups), "images": int(sum(len(i) for i in groups)),
            "accuracy": accuracy(truth, p), "log_loss": log_loss(truth, p),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["rule", "events", "images", "accuracy", "log_loss"])
