"""Stage part2 from a part1 run, killed with SIGKILL after its first epoch was saved, then run
again: it resumes (the same run folder) and ends with the numbers of an uninterrupted part2 run,
epoch by epoch, so the augmentation's random crops, the learning-rate schedule and the warm start
all survive a kill like part1's training does.

Every test here trains, in child processes (SIGKILL needs a process of its own)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from camtrap import runfolder

pytestmark = pytest.mark.slow

# part2 on the tiny CPU config (the part1 run below's arch): random crops of 40 px cached
# images to 32 px, cosine schedule with warm-up, label smoothing, from the part1 run's folder.
PART2 = {"model.drop_path": 0.0, "data.train_cache_size": 40, "train.device": "cpu"}


@pytest.fixture(scope="module")
def part1_run(demo_dir, tmp_path_factory, kit) -> Path:
    """A finished tiny part1-style run (one epoch, trained in this process: no evaluation
    needed) to start part2 from: its run folder, which part2 resolves to its best model."""
    from camtrap import stages
    from camtrap.config import build_config
    from camtrap.dataset import load_dataset

    config = build_config("smoke", overrides={**kit.TINY, "train.epochs": 1})
    data = load_dataset(demo_dir)
    run_dir = (
        tmp_path_factory.mktemp("part1") / "smoke" / runfolder.run_id_for(config, data.fingerprint)
    )
    stages.prepare(config, data, run_dir)
    stages.train(stages.TrainJob(config, demo_dir, run_dir))
    stages.finalize(run_dir)
    return run_dir


def _part2_config(kit, source: Path) -> dict:
    return {**kit.TINY, "train.epochs": 3, **PART2, "model.init_from": str(source)}


def _state_epoch(out: Path) -> int:
    """The epoch state/last.json names in the one part2 run folder under `out` (0: none yet)."""
    for info in out.glob("part2/*/state/last.json"):
        try:
            return int(json.loads(info.read_text())["epoch"])
        except (ValueError, KeyError):
            return 0
    return 0


def _uninterrupted(demo_dir: Path, overrides: dict, out: Path) -> Path:
    """The reference: part2 trained in this process (one compute thread, like the children),
    as `camtrap train` resolves and names it; only its epochs.csv is compared."""
    from camtrap import stages
    from camtrap.config import build_config
    from camtrap.dataset import load_dataset
    from camtrap.models import resolve_init_from

    config = resolve_init_from(build_config("part2", overrides=overrides))
    data = load_dataset(demo_dir)
    run_dir = out / "part2" / runfolder.run_id_for(config, data.fingerprint)
    stages.prepare(config, data, run_dir)
    stages.train(stages.TrainJob(config, demo_dir, run_dir))
    return run_dir


def test_part2_killed_after_its_first_epoch_resumes_to_the_uninterrupted_numbers(
    demo_dir, tmp_path, part1_run, kit
):
    overrides = _part2_config(kit, part1_run)
    out = tmp_path / "out"
    command = kit.cli_train(demo_dir, out, "--preset", "part2", config=overrides)
    env = kit.child_env(tmp_path / "cache")  # a fresh cache: the 40 px pack is built here too
    first = kit.start(command, env, tmp_path / "logs" / "attempt-0")
    deadline = time.monotonic() + 300
    while _state_epoch(out) < 1 and first.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.proc.poll() is None, f"ended before it could be killed\n{first.tail()}"
    first.kill()
    killed_at = _state_epoch(out)
    assert 1 <= killed_at < 3, killed_at  # killed while it trained
    again = kit.start(command, env, tmp_path / "logs" / "attempt-1")
    assert again.wait(timeout=300) == 0, again.tail()

    run_dir = _only_part2_run(out)
    assert f"resuming {run_dir} after epoch {killed_at}" in again.err()
    kit.verify_run_dir(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["config"]["model"]["init_from"].startswith(str(part1_run))
    reference = _uninterrupted(demo_dir, overrides, tmp_path / "reference")
    assert run_dir.name == reference.name  # the same run: config and resolved init_from
    pd.testing.assert_frame_equal(
        kit.epochs_csv(run_dir), kit.epochs_csv(reference), check_exact=True,
        obj=f"killed after epoch {killed_at}",
    )  # fmt: skip


def _only_part2_run(out: Path) -> Path:
    """The one run folder under out/part2 (hidden entries, such as leases, and the
    latest.json pointer are no runs)."""
    (run_dir,) = [p for p in (out / "part2").iterdir() if p.is_dir() and p.name[0] != "."]
    return run_dir
