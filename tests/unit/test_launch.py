"""camtrap.launch: the relay between rank 0 and the launching process (on_epoch_end, logs,
errors). The leaf collectives: test_ranks.py; two processes training: tests/faults/test_ddp.py."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

from camtrap import launch
from camtrap.errors import CamtrapError, ConfigError
from camtrap.ranks import Group

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
