"""camtrap.lease: one writer per run folder; a dead holder's lease is taken, another machine's is
honoured until it expires, a holder notices when its lease was taken. (Two real writers on one
run: tests/faults/test_two_writers.py; conditional writes on S3: tests/integration.)"""

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from camtrap import lease
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
