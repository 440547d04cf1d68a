"""MegaDetector batch output (format 1.4: github.com/agentmorris/MegaDetector, "MegaDetector
batch output format"), the file Timelapse and AddaxAI open for review.

camtrap classifies whole photos (or, for a model trained on crops, each photo's best
MegaDetector box), so each readable photo gets one detection: bbox [0, 0, 1, 1] (or that
box); a model trained on every box (data.crop=all) gives each of a photo's boxes its own
detection and classification. A detection's `conf` is the probability that something is there
(1 - P(blank)), its category animal, person or vehicle after the most probable non-blank class,
and its `classifications` the five most probable classes, best first, as [class id,
probability]. A
photo that could not be read has `failure` and `detections: null`, as the format says.
camtrap.dataset.megadetector reads such a file back (camtrap's own files and MegaDetector's)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from camtrap.dataset.detections import crop_of
from camtrap.outputs.labelled import Labelled, animal_confidence, kind_of

FORMAT_VERSION = "1.4"
DETECTION_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}
CATEGORY_OF_KIND = {"animal": "1", "human": "2", "vehicle": "3", "blank": "1"}
WHOLE_IMAGE = [0.0, 0.0, 1.0, 1.0]
TOP_K = 5
DIGITS = 6  # probabilities rounded to 1e-6: enough to rank, a file a person can read
# Whole-image confidences are probabilities, not detector scores: 0.5 means "more likely than
# not", the threshold Timelapse and AddaxAI start from.
TYPICAL_THRESHOLD = 0.5
CONSERVATIVE_THRESHOLD = 0.25


def megadetector_doc(labelled: Labelled) -> dict[str, Any]:
    """The whole file as a dict, images in the photos' order, failed photos after them."""
    classes = labelled.classes
    probs = labelled.probs[classes].to_numpy(dtype=np.float64)
    boxes = [crop_of(photo) or WHOLE_IMAGE for photo in labelled.photos.itertuples()]
    per_box = _box_detections(labelled)
    images = [
        {"file": photo.filepath,
         "detections": per_box.get(photo.id) or _detections(row[None], [box], classes)}
        for photo, row, box in zip(labelled.photos.itertuples(), probs, boxes, strict=True)
    ]  # fmt: skip
    images += [
        {"file": path, "failure": message, "detections": None}
        for path, message in zip(
            labelled.failed["filepath"], labelled.failed["failure"], strict=True
        )  # fmt: skip
    ]
    when = labelled.when.strftime("%Y-%m-%d %H:%M:%S")
    return {
        "info": {
            "format_version": FORMAT_VERSION,
            "detector": "none (camtrap whole-image classifier)",
            "detection_completion_time": when,
            "classifier": f"{labelled.classified_by} {labelled.model_name}",
            "classification_completion_time": when,
            "detector_metadata": {
                "typical_detection_threshold": TYPICAL_THRESHOLD,
                "conservative_detection_threshold": CONSERVATIVE_THRESHOLD,
            },
            "classifier_metadata": {"typical_classification_threshold": TYPICAL_THRESHOLD},
        },
        "detection_categories": dict(DETECTION_CATEGORIES),
        "classification_categories": {str(i): name for i, name in enumerate(classes)},
        "images": images,
    }


def _box_detections(labelled: Labelled) -> dict[str, list[dict[str, Any]]]:
    """Each photo's detections, one per box it was classified on (data.crop=all), by id."""
    if labelled.boxes is None or labelled.boxes.empty:
        return {}
    found = {}
    for photo_id, part in labelled.boxes.groupby("id", sort=False):
        probs = part[labelled.classes].to_numpy(dtype=np.float64)
        found[str(photo_id)] = _detections(probs, part[["x", "y", "w", "h"]].to_numpy(),
                                           labelled.classes)  # fmt: skip
    return found


def _detections(probs: np.ndarray, boxes: Any, classes: list[str]) -> list[dict[str, Any]]:
    confidence = animal_confidence(probs, classes)
    return [_detection(row, conf, classes, box)
            for row, conf, box in zip(probs, confidence, boxes, strict=True)]  # fmt: skip


def _detection(row: np.ndarray, conf: float, classes: list[str], box: Any) -> dict[str, Any]:
    order = np.argsort(-row, kind="stable")
    animal = [i for i in order if kind_of(classes[i]) != "blank"]
    category = CATEGORY_OF_KIND[kind_of(classes[animal[0]])] if animal else "1"
    return {
        "category": category,
        "conf": round(float(conf), DIGITS),
        "bbox": [float(v) for v in box],
        "classifications": [[str(i), round(float(row[i]), DIGITS)] for i in order[:TOP_K]],
    }


def megadetector_json(labelled: Labelled) -> str:
    return json.dumps(megadetector_doc(labelled), indent=1) + "\n"
