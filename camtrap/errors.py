"""Errors a user can cause. Each says which file, which row and how to fix it; the CLI prints them
without a traceback."""

from __future__ import annotations

from dataclasses import dataclass

MAX_REPORTED_PROBLEMS = 20


class CamtrapError(Exception):
    """Base of every error caused by user input (data, config, URIs); the CLI prints it plainly.

    Built from one string, it keeps that string, except torch's DataLoader wrapping: an error
    raised in a loader worker comes back as `type(err)(text)`, where text is "Caught X in
    DataLoader worker process N" plus the worker's whole traceback; the user needs only the
    original message at its end, as if there had been no worker."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (original_message(type(self), args[0]),)
        super().__init__(*args)


class ConfigError(CamtrapError):
    """A config file, preset or override that does not validate."""


class StorageError(CamtrapError):
    """A URI that cannot be read or written (missing, no permission, wrong bucket)."""


class ModelFileError(CamtrapError):
    """A model file camtrap cannot use: metadata that does not validate, weights that do not
    fit its arch, or probabilities that are not numbers. Not a StorageError: retrying the read
    gives the same file."""


class TrainingDiverged(CamtrapError):
    """The loss became NaN or infinite and stayed so: lowering the learning rate is the fix."""


class OutOfMemory(CamtrapError):
    """A batch did not fit in the device's memory: a smaller batch is the fix. A CamtrapError,
    so a Prefect task does not retry it (the same batch would not fit the second time)."""


# torch.utils.data._utils / torch._utils.ExceptionWrapper.reraise: the text it rebuilds errors from
_WORKER_PREFIX = "Caught {name} in DataLoader worker process "
_TRACEBACK_HEADER = "Traceback (most recent call last):\n"


def original_message(cls: type[BaseException], text: str) -> str:
    """`text`, or, when it is torch's report of a `cls` raised in a DataLoader worker, the
    message that error was raised with (the end of the formatted traceback it carries)."""
    if not text.startswith(_WORKER_PREFIX.format(name=cls.__name__)):
        return text
    # traceback.format_exception names the type as module.qualname, builtins bare
    name = cls.__qualname__
    if cls.__module__ not in ("builtins", "__main__"):
        name = f"{cls.__module__}.{name}"
    # The last traceback is the error itself (earlier ones are its causes); its frames are
    # indented, so its first line at column 0 starting with the type's name holds the message.
    header = text.rfind(_TRACEBACK_HEADER)
    start = text.find(f"\n{name}: ", header) if header >= 0 else -1
    if start < 0:
        return text
    return text[start + len(name) + 3 :].rstrip("\n")


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
    """The dataset breaks the Conser-vision contract: holds every problem, shows the first 20.

    Also built from a rendered message alone (torch's DataLoader re-raises a worker's error as
    `DataError(text)`): then the text is kept as is and `problems` is empty."""

    def __init__(self, problems: list[Problem] | Problem | str, root: str = ""):
        self.root = root
        if isinstance(problems, str):  # a string is a message, not a list of problems
            self.problems: list[Problem] = []
            super().__init__(problems)
            return
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__(self._render())

    def __reduce__(self) -> tuple[type[DataError], tuple[object, ...]]:
        # Exception pickles as cls(*args), args being the rendered text; rebuild from the
        # problems instead, so an error from another process keeps them.
        if self.problems:
            return type(self), (self.problems, self.root)
        return type(self), (str(self), self.root)

    def _render(self) -> str:
        count = len(self.problems)
        where = f" in {self.root}" if self.root else ""
        head = f"{count} problem{'s' if count != 1 else ''} with the dataset{where}:"
        lines = [f"  - {p}" for p in self.problems[:MAX_REPORTED_PROBLEMS]]
        if count > MAX_REPORTED_PROBLEMS:
            lines.append(f"  ... and {count - MAX_REPORTED_PROBLEMS} more")
        return "\n".join([head, *lines])
