"""CSV files read so that every problem can name its exact line: parsed with the `csv` module
rather than pandas, so blank lines and quoted newlines do not shift line numbers and every value
stays the string it was (`007`). A file that cannot be read or parsed becomes a Problem, never a
traceback."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camtrap.errors import Problem
from camtrap.redact import excerpt
from camtrap.storage.files import safe_relative

Row = tuple[int, dict[str, str]]  # (1-based line of the record, values by column)


@dataclass
class Table:
    """One parsed CSV: its name as given (for messages), raw bytes, header and good rows."""

    name: str
    raw: bytes
    header: list[str]
    rows: list[Row] = field(default_factory=list)
    # ids of rows dropped for a wrong field count: not reported again as "missing" elsewhere
    broken_ids: set[str] = field(default_factory=set)


def read_file(root: Path, name: str, problems: list[Problem]) -> bytes | None:
    """The bytes of `root/name` (a dataset's CSV or JSON); on failure a Problem and None. Only a
    file inside the root is read: a name from a config or a package (/etc/passwd, ../x, a link
    leading out) is a problem, and nothing of that file is read or quoted."""
    outside = _outside_problem(root, name)
    if outside is not None:
        fix = f"name a file inside {root}, relative to it (copy the file there first)"
        problems.append(Problem(name, outside, fix))
        return None
    try:
        return (root / name).read_bytes()
    except FileNotFoundError:
        problems.append(Problem(name, "file does not exist", f"put {name} in {root}"))
    except OSError as err:
        problems.append(Problem(name, f"cannot be read: {err.strerror or err}", "check the file"))
    return None


def _outside_problem(root: Path, name: str) -> str | None:
    if not safe_relative(name):
        return "is outside the data root"
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        return f"is a link to {target}, outside the data root"
    return None


def read_table(root: Path, name: str, problems: list[Problem]) -> Table | None:
    """Parse `root/name`; on failure append a Problem and return None."""
    raw = read_file(root, name, problems)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8-sig")  # -sig: tolerate the BOM that Excel writes
    except UnicodeDecodeError as err:
        fix = "save it as UTF-8 CSV"
        problems.append(Problem(name, f"is not UTF-8 text ({err.reason} at byte {err.start})", fix))
        return None
    return parse_csv(name, raw, text, problems)


def parse_csv(name: str, raw: bytes, text: str, problems: list[Problem]) -> Table | None:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    table: Table | None = None
    try:
        for line, values in _records(reader):
            if table is None:
                table = Table(name, raw, header=values)
                if not _header_ok(table, line, problems):
                    return None
            elif len(values) != len(table.header):
                table.broken_ids.add(row_id(table, values))
                problems.append(_field_count_problem(table, line, values))
            else:
                table.rows.append((line, dict(zip(table.header, values, strict=True))))
    except csv.Error as err:
        fix = "fix the quoting on that line (a value with a comma or quote must be in quotes)"
        problems.append(Problem(name, f"cannot be parsed as CSV: {err}", fix, reader.line_num))
        return None
    if table is None:
        problems.append(Problem(name, "is empty", "write the header and one row per image"))
    elif not table.rows and not table.broken_ids:
        problems.append(Problem(name, "has a header but no data rows", "add one row per image", 1))
    return table if table is not None and table.rows else None


def _records(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, stripped values) from a csv.reader, skipping blank rows and
    rows of empty values (spreadsheets leave those at the end)."""
    line = 1
    for values in reader:
        start, line = line, reader.line_num + 1  # line_num: the record's last line
        stripped = [value.strip() for value in values]
        if any(stripped):
            yield start, stripped


def _header_ok(table: Table, line: int, problems: list[Problem]) -> bool:
    seen: set[str] = set()
    ok = True
    for column in table.header:
        if not column:
            fix = "name every column (or remove trailing commas)"
            problems.append(Problem(table.name, "the header has an empty column name", fix, line))
            ok = False
        elif column in seen:
            message = f"column {excerpt(column)!r} appears twice in the header"
            problems.append(Problem(table.name, message, "give every column a distinct name", line))
            ok = False
        seen.add(column)
    return ok


def _field_count_problem(table: Table, line: int, values: list[str]) -> Problem:
    return Problem(
        table.name,
        f"has {len(values)} values but the header has {len(table.header)} columns",
        "give the row one value per column; quote values that contain commas",
        line,
        excerpt(row_id(table, values)) or None,
    )


def row_id(table: Table, values: list[str]) -> str:
    """The id of a row that may be short or long: the value under the `id` column, if any."""
    position = table.header.index("id") if "id" in table.header else 0
    return values[position] if position < len(values) else ""


def has_columns(table: Table, required: Iterable[str], problems: list[Problem]) -> bool:
    missing = [column for column in required if column not in table.header]
    for column in missing:
        message = f"required column {column!r} is missing"
        problems.append(Problem(table.name, message, f"add a {column!r} column to the header", 1))
    return not missing
