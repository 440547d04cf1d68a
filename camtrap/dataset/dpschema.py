"""A Camtrap DP package checked against the Camtrap DP schemas (TDWG, MIT; copies in
camtrap/schemas/camtrap-dp, so no network is needed): each table with frictionless (types,
required values, enums, primary and foreign keys), datapackage.json against the Camtrap DP
profile's own requirements. Their errors become camtrap Problems: file, line and a fix."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from camtrap.config import DATAPACKAGE_JSON
from camtrap.errors import Problem

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas" / "camtrap-dp"
TABLE_FIX = "correct the value (the Camtrap DP table schema: https://camtrap-dp.tdwg.org/data)"
MAX_ERRORS = 200  # per package: enough to fix, not a flood


@cache
def table_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}-table-schema.json").read_text())


@cache
def profile() -> dict[str, Any]:
    return json.loads((SCHEMAS / "camtrap-dp-profile.json").read_text())


def schema_problems(root: Path, paths: dict[str, str]) -> list[Problem]:
    """Every table of the package at `root` (name -> CSV path) against its Camtrap DP table
    schema, foreign keys between them included."""
    from frictionless import Package, Resource, Schema  # ~0.3 s: only for Camtrap DP data

    resources = [
        Resource(name=name, path=path, schema=Schema.from_descriptor(table_schema(name)))
        for name, path in paths.items()
        if (root / path).is_file()  # a missing table is reported by the reader
    ]
    report = Package(resources=resources, basepath=str(root)).validate(limit_errors=MAX_ERRORS)
    by_name = dict(paths)
    return [
        Problem(
            by_name.get(task.name, task.name),
            _message(error),
            TABLE_FIX,
            getattr(error, "row_number", None),
        )  # fmt: skip
        for task in report.tasks
        for error in task.errors
    ]


def _message(error: Any) -> str:
    """frictionless's note without its positions (the Problem gives the line)."""
    note = getattr(error, "note", "") or error.message
    field = getattr(error, "field_name", None)
    return f"{field}: {note}" if field else note


def descriptor_problems(descriptor: dict[str, Any]) -> list[Problem]:
    """datapackage.json against the Camtrap DP profile's requirements (required properties,
    the three tables with a name, path, profile and schema URL). The generic Data Package part
    the profile refers to by URL is what frictionless checks when it reads the package."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(_offline(profile()))
    return [
        Problem(
            DATAPACKAGE_JSON,
            f"{_path(error)}: {error.message}",
            "see https://camtrap-dp.tdwg.org/metadata",
        )  # fmt: skip
        for error in sorted(validator.iter_errors(descriptor), key=lambda e: list(e.path))
    ]


def _offline(schema: Any) -> Any:
    """`schema` with every reference to another document (the Data Package profile, GeoJSON)
    accepted as is: their content is not here, and checking it needs no network."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return {}
        return {key: _offline(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_offline(value) for value in schema]
    return schema


def _path(error: Any) -> str:
    return "/".join(str(part) for part in error.absolute_path) or "(top level)"
