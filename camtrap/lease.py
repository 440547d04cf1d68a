"""One writer per run: a lease file beside the run folders ({output}/{stage}/.leases/{run_id}.json;
local: created with O_EXCL, S3: a conditional put), renewed in the background while held,
expiring on its own if its holder dies (at once when the holder was a process of this machine):
its length after its last write by the store's clock (S3's LastModified, the file's mtime), so a
holder whose clock is off can neither end it early nor stretch it.
Re-entrant for one owner: the tasks of one flow run (owner = the flow run id) each take it in
turn."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from camtrap import storage
from camtrap.errors import CamtrapError, ConfigError, StorageError
from camtrap.runfolder import LEASES, run_location

log = logging.getLogger("camtrap")

LEASE_SECONDS_ENV = "CAMTRAP_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 600.0  # a dead machine's lease frees itself after this
# A lease is renewed every quarter of its length: much shorter, and one slow S3 call loses a live
# lease; longer than a day, and a dead machine's run waits that long for another.
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 30.0, 86400.0


class RunBusy(CamtrapError):
    """Another process holds the run's lease."""


def lease_location(output: str | Path, stage: str, run_id: str) -> str:
    """{output}/{stage}/.leases/{run_id}.json: beside the run folders, never inside one."""
    run_location(output, stage, run_id)  # the same checks as the run folder's
    return storage.join(output, stage, LEASES, f"{run_id}.json")


def lease_seconds() -> float:
    """$CAMTRAP_LEASE_SECONDS (default 600); ConfigError unless from 30 s to a day (0 or less
    made every lease stale at once: a second writer took over a live run)."""
    text = os.environ.get(LEASE_SECONDS_ENV, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_LEASE_SECONDS
    except ValueError:
        seconds = math.nan
    if not MIN_LEASE_SECONDS <= seconds <= MAX_LEASE_SECONDS:  # nan too
        raise ConfigError(
            f"{LEASE_SECONDS_ENV}={text!r} is not a number of seconds from "
            f"{MIN_LEASE_SECONDS:.0f} to {MAX_LEASE_SECONDS:.0f} — fix: set it within those "
            f"bounds, or unset it for the default ({DEFAULT_LEASE_SECONDS:.0f})"
        )
    return seconds


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@dataclass
class _Record:
    owner: str
    host: str
    pid: int
    expires: float  # unix time, by the holder's clock
    seconds: float | None = None  # the lease's length (None: written by an older camtrap)

    @classmethod
    def parse(cls, data: bytes) -> _Record | None:
        try:
            raw = json.loads(data)
            seconds = float(raw["seconds"]) if raw.get("seconds") is not None else None
            return cls(str(raw["owner"]), str(raw["host"]), int(raw["pid"]), float(raw["expires"]),
                       seconds)  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # a torn or foreign lease file counts as free

    def ending_by_the_store(self, written: float) -> _Record:
        """This record with `expires` as the store's write time (S3's LastModified, the file's
        mtime) plus its length: the holder's clock, hours off, would end it early or late."""
        if self.seconds is None or not 0 < self.seconds < math.inf:
            return self
        return dataclasses.replace(self, expires=written + self.seconds)

    def dump(self) -> bytes:
        expires = datetime.fromtimestamp(self.expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return json.dumps({**self.__dict__, "expires_utc": expires}).encode()

    def stale(self, now: float) -> bool:
        """Expired, or held by a process of this machine that no longer exists."""
        same_host = self.host == socket.gethostname()
        return now >= self.expires or (same_host and not _pid_alive(self.pid))


class RunLease:
    """The lease of one run (see the module's docstring): `acquire` or `with`, `check` between
    writes, `release` at the end."""

    def __init__(self, location: str, owner: str | None = None, seconds: float | None = None):
        self.location = location
        self.owner = owner or f"pid-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.seconds = seconds or lease_seconds()
        self._tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()

    def _record(self) -> _Record:
        return _Record(self.owner, socket.gethostname(), os.getpid(), time.time() + self.seconds,
                       self.seconds)  # fmt: skip

    def try_acquire(self) -> _Record | None:
        """Take the lease; returns None when taken, else the holder's record."""
        for _ in range(5):  # a lost race re-reads the lease and tries again
            if storage.create_exclusive(self.location, self._record().dump()):
                self._tag = storage.read_with_tag(self.location)[1]
                return None
            try:
                holder, tag = self._read_holder()
            except storage.StorageNotFound:
                continue  # released between our calls
            if holder is not None and holder.owner != self.owner and not holder.stale(time.time()):
                return holder
            if storage.replace_if_match(self.location, self._record().dump(), tag):
                self._tag = storage.read_with_tag(self.location)[1]
                return None
        raise StorageError(f"{self.location}: could not take the run's lease (contention)")

    def _read_holder(self) -> tuple[_Record | None, str]:
        """The lease's record, ending by the store's clock, and its tag. Read after the record,
        the write time can only be as new or newer: a lease never looks older than it is."""
        data, tag = storage.read_with_tag(self.location)
        holder = _Record.parse(data)
        if holder is not None and holder.owner != self.owner:
            holder = holder.ending_by_the_store(storage.modified_at(self.location))
        return holder, tag

    def acquire(self, wait_seconds: float = 0.0) -> RunLease:
        deadline = time.monotonic() + wait_seconds
        while (holder := self.try_acquire()) is not None:
            if time.monotonic() >= deadline:
                raise RunBusy(_busy_message(self.location, holder))
            time.sleep(min(1.0, max(0.1, deadline - time.monotonic())))
        self._start_renewing()
        return self

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="camtrap-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                ours = self._renew()
            except StorageError as err:  # a blip: the lease has 3 more renewals to go
                log.warning("lease %s not renewed yet: %s", self.location, err)
                continue
            if not ours:
                log.error("lease %s was taken by another process", self.location)
                self.lost.set()
                return

    def _renew(self) -> bool:
        """Extend the lease; False if another owner holds it now."""
        if storage.replace_if_match(self.location, self._record().dump(), self._tag):
            self._tag = storage.read_with_tag(self.location)[1]
            return True
        try:
            data, tag = storage.read_with_tag(self.location)
        except storage.StorageNotFound:
            return False
        holder = _Record.parse(data)
        if holder is None or holder.owner != self.owner:
            return False
        self._tag = tag  # renewed meanwhile by another task of this owner
        return True

    def check(self) -> None:
        """Raise RunBusy if another process took the lease (ours expired while stalled)."""
        if self.lost.is_set():
            raise RunBusy(f"{self.location}: this process lost the run's lease; stopping")

    def stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours. Best effort: a lease that
        can't be deleted now (S3 down) expires on its own."""
        self.stop_renewing()
        try:
            data, _ = storage.read_with_tag(self.location)
            holder = _Record.parse(data)
            if holder is not None and holder.owner == self.owner:  # this owner's, any task
                storage.remove(self.location)
        except storage.StorageNotFound:
            return
        except StorageError as err:
            log.warning("lease %s not released (%s); it expires on its own", self.location, err)

    def __enter__(self) -> RunLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _busy_message(location: str, holder: _Record) -> str:
    left = max(0, int(holder.expires - time.time()))
    return (
        f"another process is writing this run: {holder.owner} (pid {holder.pid} on "
        f"{holder.host}) holds {location} for {left} s more unless it renews it — fix: wait for "
        "it to finish, or use another --run-id; a lease left by a dead machine frees itself "
        f"after {LEASE_SECONDS_ENV} seconds (default {DEFAULT_LEASE_SECONDS:.0f})"
    )


@contextmanager
def leased(location: str, owner: str | None = None, release: bool = True) -> Iterator[RunLease]:
    """Hold the lease for the block; `release=False` leaves it to expire or to the same owner's
    next block (the tasks of one flow run)."""
    lease = RunLease(location, owner).acquire()
    try:
        yield lease
    finally:
        if release:
            lease.release()
        else:
            lease.stop_renewing()
