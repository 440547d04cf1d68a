"""Two `camtrap train --run-id same` started together on one --out: one trains; the other waits
and then finds the run finished, or exits 2 naming the process that holds the run. They never
both write, and the finished run is whole and equals an uninterrupted one. Trains (children)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def _trained(log: str) -> bool:
    """Whether a `camtrap train` child trained: it logs `Epoch k/n | ...` for each epoch run."""
    return re.search(r"\bEpoch \d+/\d+ \|", log) is not None


def test_two_runs_on_one_run_id_never_both_write(demo_dir, tmp_path, cli_reference, kit):
    out = tmp_path / "out"
    command = kit.cli_train(demo_dir, out, "--run-id", "same", config=kit.KILL_CONFIG)
    env = kit.child_env(tmp_path / "cache")  # one machine: one cache
    children = [kit.start(command, env, tmp_path / name) for name in ("a", "b")]
    for child in children:
        child.wait(timeout=300)

    trainers = [c for c in children if _trained(c.err())]
    assert len(trainers) == 1, [f"exit {c.proc.returncode}\n{c.tail()}" for c in children]
    (trainer,) = trainers
    (other,) = [c for c in children if c is not trainer]
    assert trainer.proc.returncode == 0, trainer.tail()
    if other.proc.returncode == 0:  # it waited for the lease, then found the run finished
        assert other.out().startswith("up-to-date: "), other.tail()
    else:
        assert other.proc.returncode == 2, other.tail()
        errors = [line for line in other.err().splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and str(trainer.pid) in errors[0], other.tail()  # the holder
        assert "Traceback" not in other.err()

    run_dir = out / "smoke" / "same"
    kit.verify_run_dir(run_dir)
    pd.testing.assert_frame_equal(kit.epochs_csv(run_dir), cli_reference.epochs, check_exact=True)
