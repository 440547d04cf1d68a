"""The pure parts of DDP training (camtrap.ranks): how many processes, per-rank seeds, the
train shard, gathered outputs, the run id, and the relay between rank 0 and its launcher.
Training on two processes is tested in tests/faults/test_ddp.py."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from camtrap import cli, launch, ranks, runfolder
from camtrap.config import build_config
from camtrap.engine import EpochOutputs
from camtrap.errors import CamtrapError, ConfigError
from camtrap.ranks import Group

FAKE_FINGERPRINT = "0" * 64  # a dataset's fingerprint


@pytest.mark.parametrize(
    ("nproc", "device", "gpus", "expected"),
    [
        ("auto", "auto", 0, 1),  # no GPU: one process
        ("auto", "auto", 4, 4),  # one per GPU
        ("auto", "cpu", 4, 1),  # GPUs not used
        (2, "cpu", 0, 2),  # two gloo processes on CPU
        (2, "auto", 0, 2),
        (2, "cuda", 2, 2),
        (1, "cuda", 8, 1),
    ],
)
def test_world_size(nproc, device, gpus, expected):
    assert ranks.world_size(nproc, device, gpus=gpus) == expected


def test_more_processes_than_gpus_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="train.nproc=3 but 2 GPU.*--nproc 2"):
        ranks.world_size(3, "auto", gpus=2)


def test_nproc_config_values():
    assert build_config("smoke").train.nproc == 1
    assert build_config("smoke", overrides=["train.nproc=auto"]).train.nproc == "auto"
    assert build_config("smoke", overrides=["train.nproc=3"]).train.nproc == 3
    with pytest.raises(ConfigError, match="train.nproc"):
        build_config("smoke", overrides=["train.nproc=0"])


def test_backend():
    assert ranks.backend_for("cuda") == "nccl"
    assert ranks.backend_for("cpu") == "gloo"


def test_rank_seeds_rank_zero_keeps_the_seed_the_others_differ():
    assert ranks.rank_seed(7, 0) == 7  # one process is rank 0 of one: today's runs
    seeds = {ranks.rank_seed(7, rank) for rank in range(4)}
    assert len(seeds) == 4
    assert ranks.rank_seed(7, 1) == ranks.rank_seed(7, 1)  # derived, not drawn
    # resumed after epoch 3: other streams than at the start, and per rank
    resumed = {ranks.rank_seed(7, rank, epoch=3) for rank in range(4)}
    assert len(resumed) == 4 and not resumed & seeds
    assert ranks.rank_seed(8, 1) != ranks.rank_seed(7, 1)


def test_shard_sampler_splits_each_epochs_order_between_ranks():
    # torch's DistributedSampler: the order is randperm(n) from seed + epoch, padded with its
    # first images to a multiple of the world size; rank r takes every world-th from r.
    n, seed, epoch = 5, 3, 2
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    padded = order + order[:1]
    shards = []
    for rank in (0, 1):
        sampler = ranks.shard_sampler(n, seed, Group(rank, 2, rank))
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
        assert shards[-1] == padded[rank::2]
    assert sorted(shards[0] + shards[1]) == sorted(padded)
    assert len(shards[0]) == len(shards[1]) == 3  # the same number of steps on every rank
    sampler = ranks.shard_sampler(n, seed, Group(0, 2, 0))
    sampler.set_epoch(epoch + 1)
    other = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch + 1)).tolist()
    assert list(sampler) == (other + other[:1])[0::2]


def _outputs(targets, loss, seconds, skipped=0):
    probs = np.eye(3, dtype=np.float32)[targets]
    return EpochOutputs(np.asarray(targets), probs, loss, seconds, skipped, 0)


def test_combine_outputs_weights_the_loss_by_images():
    both = EpochOutputs.combine(
        [_outputs([0, 1], loss=1.0, seconds=2.0, skipped=1), _outputs([2], 4.0, 5.0, 1)]
    )
    assert both.targets.tolist() == [0, 1, 2]
    assert both.probs.shape == (3, 3) and both.probs[2].tolist() == [0, 0, 1]
    assert both.loss == pytest.approx((1.0 * 2 + 4.0 * 1) / 3)  # 2.0, not the mean 2.5
    assert both.seconds == 5.0
    assert both.skipped_steps == 1  # the same step skipped on every rank, counted once


def test_all_finite_without_a_process_group():
    assert ranks.all_finite(torch.tensor(1.5))
    assert not ranks.all_finite(torch.tensor(float("nan")))
    assert not ranks.all_finite(torch.tensor(float("inf")))


def test_nproc_leaves_the_run_id_and_resume_alone():
    base = build_config("smoke")
    two = build_config("smoke", overrides={"train.nproc": 2})
    auto = build_config("smoke", overrides={"train.nproc": "auto"})
    ids = {runfolder.run_id_for(c, FAKE_FINGERPRINT) for c in (base, two, auto)}
    assert ids == {"smoke-f920a04699b4"}  # pinned in tests/unit/test_part2.py
    saved = two.model_dump(mode="json")
    assert runfolder.config_changes(saved, base.model_dump(mode="json")) == []
    del saved["train"]["nproc"]  # a run from before nproc existed
    assert runfolder.config_changes(saved, two.model_dump(mode="json")) == []


def test_cli_nproc_becomes_the_train_nproc_override(monkeypatch, tmp_path):
    seen = {}

    def fake_run(data, out, preset, config_file, overrides, run_id, force):
        seen["overrides"] = overrides
        return SimpleNamespace(val={}, status="completed", run_dir=out, best_epoch=1)

    monkeypatch.setattr(cli, "run_library", fake_run)
    monkeypatch.setattr(cli, "setup_logging", lambda verbose: None)  # the logger stays as is
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path), "--nproc", "auto"]
    assert cli.main([*argv, "--set", "train.epochs=2"]) == 0
    assert seen["overrides"] == ["train.epochs=2", "train.nproc=auto"]
    assert cli.main(argv[:-2]) == 0
    assert seen["overrides"] == []


# --- the relay between rank 0 and the launching process ------------------------------------------


def _send_in_thread(courier, record):
    """Rank 0's side, as its writer thread runs it: returns the thread and where its error goes."""
    errors: list[BaseException] = []

    def send():
        try:
            courier(record)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    thread = threading.Thread(target=send)
    thread.start()
    return thread, errors


def test_relay_runs_on_epoch_end_in_the_launcher_then_lets_rank_zero_go_on(tmp_path):
    seen = []
    relay = launch._Relay(tmp_path, lambda record: seen.append(record.epoch))
    relay.start()
    courier = launch._EpochCourier(tmp_path)
    for epoch in (1, 2):
        thread, errors = _send_in_thread(courier, SimpleNamespace(epoch=epoch))
        thread.join(timeout=10)
        assert not thread.is_alive() and errors == []
    relay.stop()
    assert seen == [1, 2] and relay.error is None


def test_an_error_in_on_epoch_end_stops_rank_zero_and_is_the_launchers_error(tmp_path):
    class Lost(CamtrapError):
        pass

    def on_epoch_end(record):
        raise Lost("this process lost the run's lease")

    relay = launch._Relay(tmp_path, on_epoch_end)
    relay.start()
    thread, errors = _send_in_thread(launch._EpochCourier(tmp_path), SimpleNamespace(epoch=1))
    thread.join(timeout=10)
    relay.stop()
    assert isinstance(relay.error, Lost)  # launch() raises this one
    (error,) = errors
    assert isinstance(error, CamtrapError) and "lost the run's lease" in str(error)


def test_rank_zero_logs_reach_the_launchers_logger(tmp_path, caplog):
    handler = launch._JsonLines(tmp_path / launch._LOG)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(logging.makeLogRecord({"msg": "Epoch 1/2 | ...", "levelno": logging.INFO}))
    handler.stream.close()
    relay = launch._Relay(tmp_path, None)
    with caplog.at_level(logging.INFO, logger="camtrap"):
        relay._relay_logs()
        relay._relay_logs()  # read once only
    assert [r.getMessage() for r in caplog.records] == ["Epoch 1/2 | ..."]


def test_a_user_error_of_a_rank_is_raised_as_that_error(tmp_path):
    launch._report_error(tmp_path, Group(1, 2, 1), ConfigError("bad: fix it"))
    err = launch._worker_error(tmp_path)
    assert type(err) is ConfigError and str(err) == "bad: fix it"
    assert launch._worker_error(tmp_path / "none") is None
