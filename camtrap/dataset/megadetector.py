"""MegaDetector batch output files (github.com/agentmorris/MegaDetector, "MegaDetector batch
output format", 1.x): MegaDetector's own, AddaxAI's, PytorchWildlife's and camtrap's. Read into
images with their detections, class ids resolved to names; every record that does not follow the
format is a Problem."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camtrap.errors import DataError, Problem

FORMAT_FIX = "write it as a MegaDetector batch output file (format_version 1.x)"


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
    conf = float(det["conf"])
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"conf {det['conf']} is not in 0..1")
    classifications = [(class_names[str(k)], float(p)) for k, p in det.get("classifications", [])]
    return Detection(detection_names[str(det["category"])], float(det["conf"]), bbox,  # type: ignore[arg-type]
                     classifications)  # fmt: skip
