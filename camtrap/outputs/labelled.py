"""What every output writes: the photos, the model's probabilities for each, the photos that
could not be read, the events, and who classified them; and the field's words for a class."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from camtrap import __version__
from camtrap.dataset.contract import FAILED_COLUMNS

BLANK_CLASSES = ("blank", "empty")
HUMAN_CLASSES = ("human", "humans", "person", "people")
VEHICLE_CLASSES = ("vehicle", "vehicles")


@dataclass
class Labelled:
    """Everything an output needs: the photos, what the model said about each, and who said it."""

    # id, then one probability per class (the model's order), one row per readable photo
    probs: pd.DataFrame
    # id, filepath, site, event, timestamp of every readable photo (the rows of `probs`)
    photos: pd.DataFrame
    classes: list[str]
    model_name: str  # the model file's name
    model_sha256: str
    # id, filepath, site, event, timestamp, failure: the photos that could not be read
    failed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAILED_COLUMNS))
    events: pd.DataFrame | None = None  # camtrap.events.events_table, when there are events
    # a model trained on every box (data.crop=all): id, x, y, w, h, one probability per class,
    # a row per box a photo has (a photo without one was classified on its whole frame)
    boxes: pd.DataFrame | None = None
    when: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def classified_by(self) -> str:
        """`camtrap <version> <model sha256[:12]>`: which code and which weights, exactly."""
        return f"camtrap {__version__} {self.model_sha256[:12]}"


def kind_of(name: str) -> str:
    """A class's Camtrap DP observationType: blank, human, vehicle or animal."""
    lowered = name.lower()
    if lowered in BLANK_CLASSES:
        return "blank"
    if lowered in HUMAN_CLASSES:
        return "human"
    return "vehicle" if lowered in VEHICLE_CLASSES else "animal"


def animal_confidence(probs: np.ndarray, classes: list[str]) -> np.ndarray:
    """Per row, the probability that something is there: 1 - P(blank classes)."""
    blank = [i for i, name in enumerate(classes) if kind_of(name) == "blank"]
    return 1.0 - probs[:, blank].sum(axis=1) if blank else np.ones(len(probs))
