"""camtrap.lease: one writer per run folder; a dead holder's lease is taken, another machine's is
honoured until it expires, a holder notices when its lease was taken. (Two real writers on one
run: tests/faults/test_two_writers.py; conditional writes on S3: tests/integration.)"""

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from camtrap import lease, storage
from camtrap.errors import ConfigError
from camtrap.lease import RunBusy, RunLease


# --- the lease --------------------------------------------------------------------------------
@pytest.fixture(name="lease_uri")
def lease_uri_fixture(tmp_path) -> str:
    return lease.lease_location(tmp_path, "smoke", "r1")


def test_lease_lives_beside_the_run_folders(tmp_path, lease_uri):
    assert lease_uri == str(tmp_path / "smoke" / ".leases" / "r1.json")


def test_second_writer_is_refused_with_the_holder_named(lease_uri):
    with RunLease(lease_uri, owner="first"):
        with pytest.raises(RunBusy, match=r"first \(pid \d+ on "):
            RunLease(lease_uri, owner="second").acquire()
        RunLease(lease_uri, owner="first").acquire().stop_renewing()  # re-entrant
    RunLease(lease_uri, owner="second").acquire().release()  # free again
    assert not Path(lease_uri).exists()


def _plant(lease_uri: str, pid: int, expires: float, host: str | None = None) -> None:
    record = {"owner": "ghost", "host": host or socket.gethostname(), "pid": pid,
              "expires": expires}  # fmt: skip
    Path(lease_uri).parent.mkdir(parents=True, exist_ok=True)
    Path(lease_uri).write_text(json.dumps(record))


def test_a_dead_local_holders_lease_is_taken_at_once(lease_uri):
    dead = 2**22 + 12345  # above pid_max's default: no such process
    _plant(lease_uri, dead, time.time() + 3600)
    RunLease(lease_uri, owner="me").acquire().release()


def test_another_machines_lease_is_honoured_until_it_expires(lease_uri):
    _plant(lease_uri, 1, time.time() + 3600, host="other-host")
    with pytest.raises(RunBusy, match="other-host"):
        RunLease(lease_uri, owner="me").acquire()
    _plant(lease_uri, 1, time.time() - 1, host="other-host")
    RunLease(lease_uri, owner="me").acquire().release()


def test_a_waiting_writer_gets_the_lease_when_it_is_released(lease_uri):
    first = RunLease(lease_uri, owner="first").acquire()

    threading.Timer(0.3, first.release).start()
    RunLease(lease_uri, owner="second").acquire(wait_seconds=10).release()


def test_a_holder_notices_its_lease_was_taken(lease_uri):
    lease = RunLease(lease_uri, owner="slow", seconds=0.2).acquire()
    lease.stop_renewing()  # stalled: no renewal
    time.sleep(0.25)
    RunLease(lease_uri, owner="thief").acquire().stop_renewing()
    lease._start_renewing()
    assert lease.lost.wait(2)
    with pytest.raises(RunBusy, match="lost the run's lease"):
        lease.check()


# --- its length -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value", ["abc", "nan", "inf", "-inf", "0", "-600", "29.9", "86401", "1e9"]
)
def test_a_lease_length_out_of_bounds_is_a_config_error(monkeypatch, lease_uri, value):
    """0 or negative made every lease stale at once: a second run took over a live one."""
    monkeypatch.setenv("CAMTRAP_LEASE_SECONDS", value)
    message = f"CAMTRAP_LEASE_SECONDS={value!r} is not a number of seconds from 30 to 86400"
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunLease(lease_uri, owner="me")
    assert not Path(lease_uri).exists()


@pytest.mark.parametrize("value, seconds", [("30", 30.0), (" 86400 ", 86400.0), ("", 600.0)])
def test_a_lease_length_within_bounds_is_used(monkeypatch, value, seconds):
    monkeypatch.setenv("CAMTRAP_LEASE_SECONDS", value)
    assert lease.lease_seconds() == seconds


# --- clocks -----------------------------------------------------------------------------------
def _plant_record(uri: str, expires: float, seconds: float = 600) -> None:
    record = {"owner": "other", "host": "other-host", "pid": 1, "expires": expires,
              "seconds": seconds}  # fmt: skip
    storage.write_bytes(uri, json.dumps(record).encode())


def test_a_lease_whose_holders_clock_is_an_hour_behind_is_honoured_on_s3(s3_server):
    """The holder renewed just now, but its clock is an hour behind: its `expires` is in the
    past by ours. S3's LastModified (the server's clock) tells that the lease is fresh."""
    uri = lease.lease_location(f"s3://{s3_server.new_bucket('lease')}/runs", "smoke", "r1")
    _plant_record(uri, time.time() - 3600 + 600)
    with pytest.raises(RunBusy, match=r"other-host\) holds .* for (59\d|600) s more"):
        RunLease(uri, owner="me").acquire()


def test_a_lease_whose_holders_clock_is_ahead_expires_by_the_stores_clock(lease_uri):
    """A holder whose clock is an hour ahead wrote `expires` an hour late; it died 11 minutes
    ago (the file's mtime): its 600 s lease has run out, whatever `expires` says."""
    _plant_record(lease_uri, time.time() + 3600 + 600)
    written = time.time() - 660
    os.utime(lease_uri, (written, written))
    RunLease(lease_uri, owner="me").acquire().release()
