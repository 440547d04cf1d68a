"""Errors a user can cause. Each says which file, which row and how to fix it; the CLI prints them
without a traceback."""

from __future__ import annotations

from dataclasses import dataclass

MAX_REPORTED_PROBLEMS = 20


class CamtrapError(Exception):
    """Base of every error caused by user input (data, config, URIs); the CLI prints it plainly."""


class ConfigError(CamtrapError):
    """A config file, preset or override that does not validate."""


class StorageError(CamtrapError):
    """A URI that cannot be read or written (missing, no permission, wrong bucket)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where it is and what to do about it."""

    file: str
    message: str
    fix: str = ""
    line: int | None = None  # 1-based line in `file`; the header is line 1
    id: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f", line {self.line}"
        if self.id is not None:
            where += f" (id {self.id})"
        text = f"{where}: {self.message}"
        return f"{text} — fix: {self.fix}" if self.fix else text


class DataError(CamtrapError):
    """The dataset breaks the Conser-vision contract: holds every problem, shows the first 20."""

    def __init__(self, problems: list[Problem] | Problem, root: str = ""):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        self.root = root
        super().__init__(self._render())

    def _render(self) -> str:
        count = len(self.problems)
        where = f" in {self.root}" if self.root else ""
        head = f"{count} problem{'s' if count != 1 else ''} with the dataset{where}:"
        lines = [f"  - {p}" for p in self.problems[:MAX_REPORTED_PROBLEMS]]
        if count > MAX_REPORTED_PROBLEMS:
            lines.append(f"  ... and {count - MAX_REPORTED_PROBLEMS} more")
        return "\n".join([head, *lines])
