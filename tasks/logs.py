"""The bridge that sends the library's `camtrap` logs to the Prefect task run's logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.logging import get_run_logger


class _ToRunLogger(logging.Handler):
    """Re-logs `camtrap` records through the run logger: the Prefect UI and the console."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.run_logger = get_run_logger()  # captured here: worker threads have no run context

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run_logger.log(record.levelno, self.format(record))
        except Exception:
            self.handleError(record)


@contextmanager
def library_logs() -> Iterator[None]:
    """Inside a task: the library's logs (epoch lines, memory reports, storage retries) go to
    this task run's logs."""
    logger = logging.getLogger("camtrap")
    handler = _ToRunLogger()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
