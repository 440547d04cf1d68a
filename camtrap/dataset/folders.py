"""One folder per class (torchvision's ImageFolder convention): DATA_ROOT/<class>/<image>, images
found at any depth under their class folder (.jpg, .jpeg, .png, any case), in sorted order. The
image's id is its path inside the data root; there are no sites (data.split=site needs them)."""

from __future__ import annotations

from pathlib import Path

from camtrap.config import IMAGE_SUFFIXES
from camtrap.dataset.contract import ImageCheck, ImageLimits, LabelledData
from camtrap.dataset.records import Item, Sources, labelled_data
from camtrap.errors import Problem


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not Path(name).name.startswith(".")


def image_files(root: Path) -> list[str]:
    """Every image under the class folders of `root`, as sorted paths inside it."""
    return sorted(
        path.relative_to(root).as_posix()
        for folder in class_folders(root)
        for path in folder.rglob("*")
        if is_image_name(path.name) and not _hidden(path.relative_to(root))
    )


def class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def read_folders(
    root: Path,
    multi_label: str,
    check: ImageCheck | None,
    workers: int,
    limits: ImageLimits,
) -> tuple[LabelledData | None, list[Problem]]:
    """(data, []) for class folders of valid images, else (None, every problem)."""
    name = f"{root.name or root}/"
    problems: list[Problem] = []
    images = image_files(root)
    classes = [folder.name for folder in class_folders(root)]
    holding = {path.split("/", 1)[0] for path in images}
    for empty in [c for c in classes if c not in holding]:
        message = f"class folder {empty}/ holds no image ({', '.join(IMAGE_SUFFIXES)})"
        problems.append(Problem(name, message, f"add images of {empty} or remove the folder"))
    items = [
        Item(file=name, line=None, id=path, filepath=path, labels={path.split("/", 1)[0]})
        for path in images
    ]
    sources = Sources({"classes": "\n".join(classes).encode()})
    data = labelled_data(root, name, items, classes, sources, multi_label, check, workers, limits,
                         problems)  # fmt: skip
    return (None, problems) if problems else (data, [])
