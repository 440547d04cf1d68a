"""A flow whose process dies at once (SIGKILL, as the kernel's OOM killer sends), with the
restart hook of `train-swin`: deployed by test_restart.py to check the worker's side."""

from __future__ import annotations

import os
import signal

from prefect import flow

from flows.hooks import restart_after_crash


@flow(name="camtrap-crash-test", on_crashed=[restart_after_crash])
def crash(marker: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)
