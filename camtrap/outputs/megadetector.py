"""MegaDetector batch output (format 1.4: github.com/agentmorris/MegaDetector, "MegaDetector
batch output format"), the file Timelapse and AddaxAI open for review.

camtrap classifies whole photos, so each readable photo gets one whole-image detection (bbox
[0, 0, 1, 1]): its `conf` is the probability that something is there (1 - P(blank)), its
category animal, person or vehicle after the most probable non-blank class, and its
`classifications` the five most probable classes, best first, as [class id, probability]. A
photo that could not be read has `failure` and `detections: null`, as the format says.
`read_megadetector` reads such a file back (camtrap's own files and MegaDetector's)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camtrap.errors import DataError, Problem
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
FORMAT_FIX = "write it as a MegaDetector batch output file (format_version 1.4)"


def megadetector_doc(labelled: Labelled) -> dict[str, Any]:
    """The whole file as a dict, images in the photos' order, failed photos after them."""
    classes = labelled.classes
    probs = labelled.probs[classes].to_numpy(dtype=np.float64)
    confidence = animal_confidence(probs, classes)
    images = [
        {"file": path, "detections": [_detection(row, conf, classes)]}
        for path, row, conf in zip(labelled.photos["filepath"], probs, confidence, strict=True)
    ]
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


def _detection(row: np.ndarray, conf: float, classes: list[str]) -> dict[str, Any]:
    order = np.argsort(-row, kind="stable")
    animal = [i for i in order if kind_of(classes[i]) != "blank"]
    category = CATEGORY_OF_KIND[kind_of(classes[animal[0]])] if animal else "1"
    return {
        "category": category,
        "conf": round(float(conf), DIGITS),
        "bbox": list(WHOLE_IMAGE),
        "classifications": [[str(i), round(float(row[i]), DIGITS)] for i in order[:TOP_K]],
    }


def megadetector_json(labelled: Labelled) -> str:
    return json.dumps(megadetector_doc(labelled), indent=1) + "\n"


# --- reading -----------------------------------------------------------------------------------


@dataclass
class Detection:
    category: str  # a detection_categories name: animal, person, vehicle
    conf: float
    bbox: tuple[float, float, float, float]  # normalised x, y, width, height
    classifications: list[tuple[str, float]]  # class name, probability, best first


@dataclass
class DetectionImage:
    file: str
    detections: list[Detection]
    failure: str | None = None


def read_megadetector(path: str | Path) -> list[DetectionImage]:
    """The images of a MegaDetector batch output file, class ids resolved to names; a
    DataError listing every record that does not follow the format."""
    name = str(path)
    try:
        doc = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise DataError([Problem(name, f"cannot be read as JSON ({err})", FORMAT_FIX)]) from err
    problems: list[Problem] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError([Problem(name, "has no 'images' list", FORMAT_FIX)])
    detection_names = _categories(name, doc, "detection_categories", problems)
    class_names = _categories(name, doc, "classification_categories", problems)
    images = [_image(name, i, record, detection_names, class_names, problems)
              for i, record in enumerate(doc["images"])]  # fmt: skip
    if problems:
        raise DataError(problems)
    return [image for image in images if image is not None]


def _categories(file: str, doc: dict, key: str, problems: list[Problem]) -> dict[str, str]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        problems.append(Problem(file, f"'{key}' is not an object of id -> name", FORMAT_FIX))
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _image(
    file: str,
    index: int,
    record: Any,
    detection_names: dict[str, str],
    class_names: dict[str, str],
    problems: list[Problem],
) -> DetectionImage | None:
    where = f"images[{index}]"
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
        problems.append(Problem(file, f"{where} has no 'file'", FORMAT_FIX))
        return None
    if record.get("failure"):
        return DetectionImage(record["file"], [], str(record["failure"]))
    detections = record.get("detections")
    if not isinstance(detections, list):
        message = f"{where} ({record['file']}) has neither 'detections' nor 'failure'"
        problems.append(Problem(file, message, FORMAT_FIX))
        return None
    parsed = []
    for j, det in enumerate(detections):
        try:
            parsed.append(_detection_of(det, detection_names, class_names))
        except (KeyError, TypeError, ValueError) as err:
            message = f"{where}.detections[{j}] ({record['file']}) is not a detection ({err})"
            problems.append(Problem(file, message, FORMAT_FIX))
    return DetectionImage(record["file"], parsed)


def _detection_of(det: Any, detection_names: dict[str, str], class_names: dict[str, str]
                  ) -> Detection:  # fmt: skip
    bbox = tuple(float(v) for v in det["bbox"])
    if len(bbox) != 4 or not all(0.0 <= v <= 1.0 for v in bbox):
        raise ValueError(f"bbox {det['bbox']} is not 4 numbers in 0..1")
    classifications = [(class_names[str(k)], float(p)) for k, p in det.get("classifications", [])]
    return Detection(detection_names[str(det["category"])], float(det["conf"]), bbox,  # type: ignore[arg-type]
                     classifications)  # fmt: skip
