"""COCO Camera Traps (the format of LILA's data sets): one JSON file with `images` (`id`,
`file_name` relative to the data root, optional `location` = the camera site, `seq_id` = the
event, `datetime`), `categories` (`id`, `name`: the classes; `empty` is a class like any other)
and `annotations` (`image_id`, `category_id`; bounding boxes are ignored here). An image with
two annotations of different categories follows data.multi_label; one without annotations is
left out (counted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from camtrap.dataset.contract import ImageCheck, ImageLimits, LabelledData
from camtrap.dataset.records import Item, Sources, labelled_data, read_json
from camtrap.errors import Problem

SECTIONS = ("images", "categories", "annotations")


def read_coco(
    root: Path,
    annotations: str,
    multi_label: str,
    check: ImageCheck | None,
    workers: int,
    limits: ImageLimits,
) -> tuple[LabelledData | None, list[Problem]]:
    """(data, []) for a valid COCO Camera Traps file and its images, else (None, problems)."""
    problems: list[Problem] = []
    parsed = read_json(root, annotations, problems)
    if parsed is None:
        return None, problems
    raw, doc = parsed
    if not _has_sections(annotations, doc, problems):
        return None, problems
    categories = _categories(annotations, doc["categories"], problems)
    items = _images(annotations, doc["images"], problems)
    _label(annotations, doc["annotations"], items, categories, problems)
    classes = [categories[key] for key in sorted(categories, key=_sort_key)]
    sources = Sources({annotations: raw})
    data = labelled_data(root, annotations, list(items.values()), classes, sources,
                         multi_label, check, workers, limits, problems)  # fmt: skip
    return (None, problems) if problems else (data, [])


def coco_images(file: str, doc: Any, problems: list[Problem]) -> list[Item]:
    """The images of a COCO Camera Traps file, for labelling (annotations not needed)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        message = "is not a COCO Camera Traps file (it has no 'images' list)"
        problems.append(Problem(file, message, "pass the COCO file with --annotations"))
        return []
    return list(_images(file, doc["images"], problems).values())


def _has_sections(file: str, doc: Any, problems: list[Problem]) -> bool:
    if not isinstance(doc, dict):
        message = "is not a COCO Camera Traps file (an object of images, categories, annotations)"
        problems.append(Problem(file, message, "pass the annotations JSON as data.annotations"))
        return False
    missing = [name for name in SECTIONS if not isinstance(doc.get(name), list)]
    for name in missing:
        message = f"has no '{name}' list"
        problems.append(Problem(file, message, f"add the '{name}' list (COCO Camera Traps)"))
    return not missing


def _key(value: Any) -> str | None:
    """An id as a string key: ints and strings are ids (COCO uses both), nothing else is."""
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        return None
    return str(value)


def _sort_key(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.lstrip("-").isdigit() else (1, key)


def _categories(file: str, records: list[Any], problems: list[Problem]) -> dict[str, str]:
    """category id -> name (the class)."""
    categories: dict[str, str] = {}
    names: dict[str, str] = {}
    for i, record in enumerate(records):
        where = f"categories[{i}]"
        key = _key(record.get("id")) if isinstance(record, dict) else None
        name = _text(record.get("name")) if isinstance(record, dict) else ""
        if key is None or not name:
            message = f"{where}: a category needs an 'id' and a non-empty 'name'"
            problems.append(Problem(file, message, "give every category an id and a name"))
        elif key in categories:
            message = f"{where}: category id {key} is repeated"
            problems.append(Problem(file, message, "category ids must be unique"))
        elif name in names:
            message = f"{where}: category name {name!r} is repeated (category id {names[name]})"
            problems.append(Problem(file, message, "merge the two categories into one"))
        else:
            categories[key] = name
            names[name] = key
    return categories


def _images(file: str, records: list[Any], problems: list[Problem]) -> dict[str, Item]:
    """image id -> Item (no labels yet), in file order."""
    items: dict[str, Item] = {}
    for i, record in enumerate(records):
        where = f"images[{i}]"
        key = _key(record.get("id")) if isinstance(record, dict) else None
        if key is None:
            message = f"{where}: an image needs an 'id' (a number or a string)"
            problems.append(Problem(file, message, "give every image an id"))
            continue
        if key in items:
            message = f"{where}: image id {key} is repeated ({items[key].record})"
            problems.append(Problem(file, message, "image ids must be unique", None, key))
            continue
        file_name = record.get("file_name")
        items[key] = Item(
            file=file,
            line=i + 1,
            id=key,
            filepath=file_name.strip() if isinstance(file_name, str) else "",
            site=_text(record.get("location")),
            event=_text(record.get("seq_id")),
            timestamp=_text(record.get("datetime")),
            record=where,
        )
    return items


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _label(
    file: str,
    records: list[Any],
    items: dict[str, Item],
    categories: dict[str, str],
    problems: list[Problem],
) -> None:
    """Each annotation's category added to its image's labels."""
    for i, record in enumerate(records):
        where = f"annotations[{i}]"
        image = _key(record.get("image_id")) if isinstance(record, dict) else None
        category = _key(record.get("category_id")) if isinstance(record, dict) else None
        if image not in items:
            message = f"{where}: image_id {record.get('image_id')!r} is not in images"
            fix = "add the image to images, or remove the annotation"
            problems.append(Problem(file, message, fix, None, image))
        elif category not in categories:
            message = f"{where}: category_id {record.get('category_id')!r} is not in categories"
            fix = "add the category to categories, or correct the annotation's category_id"
            problems.append(Problem(file, message, fix, None, image))
        else:
            items[image].labels.add(categories[category])
