"""From what a reader found to the data contract: every format's reader (COCO Camera Traps,
Camtrap DP, class folders) lists its images as `Item`s — id, path inside the data root, site,
the labels given to it, event and timestamp — and `labelled_data` runs the checks every format
shares (ids, paths inside the root, each image read once, two different labels on one image) and
builds the one validated table split, cache, training and metrics read."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camtrap.dataset.contract import (
    MIN_CLASSES,
    ImageCheck,
    ImageLimits,
    LabelledData,
    feature_row_problems,
    inspect_images,
    labelled_frame,
    reserved_class_problems,
)
from camtrap.dataset.csvtable import Row, read_file
from camtrap.errors import Problem

MULTI_LABEL_FIX = "keep one label per image, or set data.multi_label=drop to leave such images out"


@dataclass
class Item:
    """One image as a reader found it. `line` is its 1-based line in a CSV, or its position in
    a JSON list (`record` then names it, e.g. "images[3]")."""

    file: str
    line: int | None
    id: str
    filepath: str
    site: str = ""
    labels: set[str] = field(default_factory=set)
    event: str = ""
    timestamp: str = ""
    record: str | None = None


@dataclass
class Sources:
    """The files a dataset was read from (name -> bytes: the fingerprint follows them) and what
    its reader left out on purpose (reason -> images), reported by `camtrap validate`."""

    files: dict[str, bytes]
    left_out: Counter[str] = field(default_factory=Counter)


def labelled_data(
    root: Path,
    file: str,
    items: list[Item],
    classes: list[str],
    sources: Sources,
    multi_label: str,
    check: ImageCheck | None,
    workers: int,
    limits: ImageLimits,
    problems: list[Problem],
) -> LabelledData | None:
    """The validated table of `items` (all listed in `file`: a reader's media table, JSON or
    folder), or None when there are problems (appended to `problems`). Items without a label are
    left out and counted; with two different labels they follow `multi_label`."""
    items = _one_label_each(items, multi_label, sources.left_out, problems)
    if len(classes) < MIN_CLASSES:
        message = f"needs at least {MIN_CLASSES} classes, has {len(classes)} ({classes})"
        problems.append(Problem(file, message, "label images of at least two classes"))
    problems += reserved_class_problems(file, classes, line=None)
    rows = [_row(item) for item in items]
    where = {(item.file, item.line): item for item in items}
    found = feature_row_problems(file, rows, root, require_site=False)
    hashes = inspect_images(file, rows, root, check, workers, limits, found)
    problems += [_located(problem, where) for problem in found]
    if problems:
        return None
    label_of = {item.id: next(iter(item.labels)) for item in items}
    frame = labelled_frame(rows, root, label_of, classes, hashes)
    frame["event"] = [item.event for item in items]
    frame["timestamp"] = [item.timestamp for item in items]
    fingerprint = _fingerprint(sources, hashes, classes, multi_label)
    return LabelledData(root, frame, classes, fingerprint, left_out=dict(sources.left_out))


def _one_label_each(
    items: list[Item], multi_label: str, left_out: Counter[str], problems: list[Problem]
) -> list[Item]:
    """Items with exactly one label. No label: left out (counted). Two or more different
    labels: a problem each (data.multi_label=refuse) or left out (drop)."""
    kept = []
    for item in items:
        if not item.labels:
            left_out["no label"] += 1
        elif len(item.labels) == 1:
            kept.append(item)
        elif multi_label == "drop":
            left_out["two or more different labels (data.multi_label=drop)"] += 1
        else:
            labels = ", ".join(sorted(item.labels))
            message = f"image {item.filepath} has {len(item.labels)} different labels ({labels})"
            problem = Problem(item.file, message, MULTI_LABEL_FIX, item.line, item.id)
            problems.append(_located(problem, {(item.file, item.line): item}))
    return kept


def _row(item: Item) -> Row:
    return item.line or 0, {"id": item.id, "filepath": item.filepath, "site": item.site}


def _located(problem: Problem, where: dict[tuple[str, int | None], Item]) -> Problem:
    """A problem of a JSON record named by the record (e.g. "images[3]: ...") instead of a
    line number."""
    item = where.get((problem.file, problem.line))
    if item is None or item.record is None:
        return problem
    message = f"{item.record}: {problem.message}"
    return Problem(problem.file, message, problem.fix, None, problem.id)


def _fingerprint(
    sources: Sources, image_hashes: dict[str, str], classes: list[str], multi_label: str
) -> str:
    """The source files, each image's sha256, the classes and the multi-label rule (it decides
    which images are in)."""
    return fingerprint_of(sources.files, image_hashes, classes=classes, multi_label=multi_label)


def fingerprint_of(files: dict[str, bytes], image_hashes: dict[str, str], **settings: Any) -> str:
    """sha256 over the source files' bytes (by name), each image's sha256 (by id) and
    `settings`: changes exactly when the data does."""
    content = {
        "files": {name: hashlib.sha256(raw).hexdigest() for name, raw in files.items()},
        "images": sorted(image_hashes.items()),
        **settings,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def read_json(root: Path, name: str, problems: list[Problem]) -> tuple[bytes, Any] | None:
    """(bytes, parsed) of root/name; on failure a Problem and None."""
    raw = read_file(root, name, problems)
    if raw is None:
        return None
    try:
        return raw, json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        message = f"is not valid JSON ({err})"
        problems.append(Problem(name, message, "fix the JSON (or export it again)"))
        return None
