"""Training on two processes (DDP, gloo on CPU, launched through torchrun's engine): the ranks
train the first epochs and rank 0 writes them; the val metrics it wrote equal one process's
evaluation of the best model file; kill -9 of `camtrap train --nproc 2` takes its ranks with it;
a rerun on one process resumes that run (a different world size) and finishes it whole.

One run of the tiny config serves every check (each process started costs its imports)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from camtrap import cli, stages
from camtrap.config import build_config
from camtrap.device import precision_for
from camtrap.engine import infer
from camtrap.loader import CachedBatches, DeviceNormalize, make_loader
from camtrap.metrics import summary_metrics
from camtrap.models import load_model

pytestmark = pytest.mark.slow

# Epochs of the tiny model take a fraction of a second: enough of them that the kill, sent soon
# after epoch 1 is written, lands before the last one (with 2 epochs it once came after both).
EPOCHS = 8


def _ranks(marker: str) -> list[psutil.Process]:
    """The training processes (camtrap.launch) whose command line holds `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "camtrap.launch" in cmdline and any(marker in arg for arg in cmdline):
            found.append(proc)
    return found


def _wait_for_epoch_one(child, out: Path, timeout: float = 240) -> None:
    """Until epoch 1's files are written (epochs.csv is the last of them)."""
    deadline = time.monotonic() + timeout
    while not list(out.glob("smoke/*/metrics/epochs.csv")):
        assert child.proc.poll() is None, f"ended before epoch 1 was saved\n{child.tail()}"
        assert time.monotonic() < deadline, f"no epoch 1 after {timeout}s\n{child.tail()}"
        time.sleep(0.1)


def _one_process_val_metrics(model_file: Path, run_dir: Path, data: Path, config):
    """The model file evaluated on the run's val split in this process, as stages.evaluate
    does: the image cache's rows, batches of train.eval_batch(), the file's mean and std."""
    cpu = torch.device("cpu")
    pack = stages.cache_images(config, run_dir, data).pack
    items, _ = stages.split_items(run_dir, pack)
    val = items[items["split"] == "val"]
    dataset = CachedBatches(pack, val["row"].tolist(), val["label_idx"].tolist())
    model, meta = load_model(model_file, cpu)
    out = infer(model, make_loader(dataset, config.train.eval_batch()),
                  DeviceNormalize(meta.mean, meta.std, cpu), precision_for(cpu, False))  # fmt: skip
    return meta.epoch, {"loss": out.loss, **summary_metrics(out.targets, out.probs, k=3)}


def test_two_processes_train_a_kill_then_one_process_resumes_and_finishes(
    demo_dir, tmp_path, kit, monkeypatch
):
    out, temp, cache = tmp_path / "out", tmp_path / "tmp", tmp_path / "cache"
    temp.mkdir()
    # The launcher's private folder (and so its ranks' command lines) under this test's TMPDIR.
    env = kit.child_env(cache, TMPDIR=str(temp))
    config = {**kit.TINY, "train.epochs": EPOCHS}
    command = kit.cli_train(demo_dir, out, "--nproc", "2", config=config)
    child = kit.start(command, env, tmp_path / "logs" / "ddp")
    _wait_for_epoch_one(child, out)
    ranks = _ranks(str(temp))
    child.kill()  # SIGKILL to the launcher's group; the ranks run in sessions of their own

    assert len(ranks) == 2, child.tail()
    _, alive = psutil.wait_procs(ranks, timeout=10)
    assert alive == [], "ranks outlived their launcher"
    assert "training on 2 processes: effective batch 16 (train.batch_size 8" in child.err()
    run_dir = kit.only_run_dir(out)
    before = kit.epochs_csv(run_dir)
    done = int(before["epoch"].max())  # epochs written before the kill: 1, or a few more
    assert 1 <= done < EPOCHS, child.tail()
    rows = [[epoch, split] for epoch in range(1, done + 1) for split in ("train", "val")]
    assert before[["epoch", "split"]].values.tolist() == rows
    # train metrics gathered from both ranks: 24 train images, 12 per rank, 3 steps of 8 and 4
    # Val metrics as rank 0 wrote them == one process evaluating the best model file.
    monkeypatch.setenv("CAMTRAP_CACHE_DIR", str(cache))
    best = next(run_dir.glob("*_best.pth"))
    run_config = build_config("smoke", overrides=config)
    epoch, metrics = _one_process_val_metrics(best, run_dir, demo_dir, run_config)
    row = before[(before["epoch"] == epoch) & (before["split"] == "val")].iloc[0]
    for name, value in metrics.items():
        assert row[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name

    argv = ["train", "--data", str(demo_dir), "--out", str(out), "--preset", "smoke",
            *kit.set_args(config), "--nproc", "1"]  # fmt: skip
    assert cli.main(argv) == 0

    kit.verify_run_dir(run_dir)
    after = kit.epochs_csv(run_dir)
    assert after[["epoch", "split"]].values.tolist() == [
        [epoch, split] for epoch in range(1, EPOCHS + 1) for split in ("train", "val")
    ]
    # resumed, not restarted: the first epochs are the ones the two processes trained
    pd.testing.assert_frame_equal(after.iloc[: 2 * done], before, check_exact=True)
