"""kill -9 at random moments (one per seed, drawn over the CPU seconds an uninterrupted run used
from when it started writing its run folder), each time rerunning, until the run finishes:
the result is whole (every file of run.json there with its sha256, no temp file) and equals the
uninterrupted run, epoch by epoch.

- training: `camtrap train` on local folders;
- upload: `python -m flows.train_swin` with outputs in S3 (each epoch's files are uploaded while
  the next one trains, so a kill may land in one; test_flaky_s3.py fails uploads on purpose).

Every test here trains, in child processes (SIGKILL needs a process of its own)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.runs import local_run_dir

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)


def _run_until(kit, child, cpu_limit: float | None, timeout: float = 300) -> bool:
    """Let `child` run until it exits (False) or has used `cpu_limit` CPU seconds, when it is
    killed with SIGKILL (True)."""
    deadline = time.monotonic() + timeout
    while child.proc.poll() is None:
        if cpu_limit is not None:
            with contextlib.suppress(OSError):  # it may exit between poll() and the read
                if kit.cpu_seconds(child.pid) >= cpu_limit:
                    child.kill()
                    return True
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"still running after {timeout}s\n{child.tail()}")
        time.sleep(0.02)
    return False


def _kill_and_rerun(kit, command, env, logs: Path, kill_times: list[float]) -> tuple[list, Any]:
    """Start `command` and kill -9 it once it has used the first of `kill_times` (CPU
    seconds), start it again and kill it at the next one, ..., then start it once more and let
    it finish; an attempt that ends before its kill time ends the sequence. Returns the kill
    times applied and the last attempt, which must have exited 0."""
    kills: list[float] = []
    for attempt, kill_at in enumerate([*kill_times, None]):
        child = kit.start(command, env, logs / f"attempt-{attempt}")
        if _run_until(kit, child, kill_at):
            kills.append(round(kill_at, 2))
            continue
        assert child.proc.returncode == 0, f"attempt {attempt}, kills at {kills}\n{child.tail()}"
        assert kills, f"never killed: the run used less than {kill_times[0]:.1f} CPU seconds"
        return kills, child
    raise AssertionError("unreachable")


def _kill_times(reference) -> list[float]:
    """One moment per seed (CPU seconds) in the writing part of the reference run, earliest
    first. The seeds' kills share one run, killed and rerun in turn (each start of a child costs
    its imports again); earliest first, each rerun resumes further and is killed later, so the
    kills walk through the run: training, uploads, evaluation."""
    return sorted(reference.kill_time(seed) for seed in SEEDS)


def test_kills_during_training_then_reruns_equal_an_uninterrupted_run(
    demo_dir, tmp_path, cli_reference, kit
):
    out = tmp_path / "out"
    command = kit.cli_train(demo_dir, out, config=kit.KILL_CONFIG)
    env = kit.child_env(tmp_path / "cache")  # a fresh cache: kills also land in its writes

    kill_times = _kill_times(cli_reference)

    kills, _ = _kill_and_rerun(kit, command, env, tmp_path / "logs", kill_times)

    reference = Path(cli_reference.location)
    run_dir = kit.only_run_dir(out)
    assert run_dir.name == reference.name  # the reruns found the killed run and continued it
    kit.verify_run_dir(run_dir)
    pd.testing.assert_frame_equal(
        kit.epochs_csv(run_dir), cli_reference.epochs, check_exact=True, obj=f"kills {kills}"
    )
    assert list(run_dir.rglob("*.tmp")) == []


def test_kills_during_upload_then_reruns_leave_s3_matching_run_json(
    s3_server, demo_dir, tmp_path, flow_env, flow_reference, kit, monkeypatch
):
    output_uri = f"s3://{s3_server.new_bucket('kill')}/runs"
    command = kit.flow_module(str(demo_dir), output_uri)
    env = flow_env(tmp_path / "cache")
    kill_times = _kill_times(flow_reference)

    kills, last = _kill_and_rerun(kit, command, env, tmp_path / "logs", kill_times)

    run_uri = kit.last_line(last.out())
    assert run_uri.rsplit("/", 1)[1] == flow_reference.location.rsplit("/", 1)[1], run_uri
    info = kit.verify_run_uri(s3_server, run_uri)
    assert "state/last.pt" in info["files"]
    pd.testing.assert_frame_equal(
        kit.s3_epochs_csv(s3_server, run_uri), flow_reference.epochs, check_exact=True,
        obj=f"kills {kills}",
    )  # fmt: skip
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(tmp_path / "cache"))  # the child's
    local_copy = Path(local_run_dir(output_uri, "smoke", run_uri.rsplit("/", 1)[1]))
    assert local_copy.is_dir() and list(local_copy.rglob("*.tmp")) == []
