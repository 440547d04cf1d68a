"""The one owner of a run folder: where it is (run ids that can't escape it), its layout, its
status (run.json), how many epochs are done, the resume rule between a local copy and the copy in
output_uri, the check that every listed file is intact, and the lease that keeps a second writer
out.

Commit order inside a run folder: state/last.pt is the commit point of an epoch. Everything else
an epoch writes (the best model, metrics/*.csv, state/last.json) is written after it and can be
rebuilt from it, so a kill at any moment leaves a folder that resumes to the same numbers."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from camtrap import storage
from camtrap.errors import CamtrapError, ConfigError, StorageError

log = logging.getLogger("camtrap")

# Letters, digits, `_`, `.`, `-`; starting with a letter or digit, so never `..`, `.`, or hidden.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
LEASE_SECONDS_ENV = "CAMTRAP_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 600.0  # a dead machine's lease frees itself after this


# --- where ----------------------------------------------------------------------------------------


def check_run_id(run_id: str) -> str:
    """`run_id` if it is a plain folder name; ConfigError otherwise (it becomes a path and an S3
    key: `../x` or `/tmp/x` would write, and sync-with-delete, outside the runs folder)."""
    if not RUN_ID_PATTERN.fullmatch(run_id) or ".." in run_id:
        raise ConfigError(
            f"run id {run_id!r} is not a plain folder name — fix: use letters, digits, '_', '.' "
            "and '-' only, starting with a letter or digit (no '/', no '..'), at most 200 "
            "characters"
        )
    if run_id == LATEST_JSON:  # the stage's pointer file lives beside its run folders
        raise ConfigError(f"run id {run_id!r} is reserved — fix: choose another run id")
    return run_id


def inside(path: str | Path, root: str | Path) -> Path:
    """`path` resolved, if it lies inside `root` (resolved); StorageError otherwise. Every path
    built from a name we did not choose is checked before it is written or deleted."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise StorageError(f"{path} is outside {root}; refusing to write or delete it")
    return resolved


def run_location(output: str | Path, stage: str, run_id: str) -> str:
    """{output}/{stage}/{run_id}, for a local folder or an s3:// URI, after checking the id."""
    check_run_id(run_id)
    check_run_id(stage)
    location = storage.join(output, stage, run_id)
    if not storage.is_remote(output):
        inside(location, output)
    return location


@dataclass(frozen=True)
class RunFiles:
    """Where each output of a run lives inside its folder (the layout of docs/architecture.md)."""

    root: Path
    arch: str
    stage: str

    @property
    def best_model(self) -> Path:
        return self.root / f"final_{self.arch}_model_{self.stage}_best.pth"

    @property
    def best_logloss_model(self) -> Path:
        """The epoch with the lowest val log loss (best_model follows train.best_metric)."""
        return self.root / f"final_{self.arch}_model_{self.stage}_best_logloss.pth"

    @property
    def per_site_csv(self) -> Path:
        return self.root / "metrics" / "per_site.csv"

    @property
    def final_model(self) -> Path:
        return self.root / f"final_{self.arch}_model_{self.stage}.pth"

    @property
    def state(self) -> Path:
        return self.root / STATE

    @property
    def state_info(self) -> Path:
        return self.root / STATE_INFO

    @property
    def epochs_csv(self) -> Path:
        return self.root / EPOCHS_CSV

    @property
    def per_class_csv(self) -> Path:
        return self.root / PER_CLASS_CSV

    @property
    def confusion_csv(self) -> Path:
        return self.root / "metrics" / "confusion_matrix.csv"

    @property
    def predictions_csv(self) -> Path:
        return self.root / "predictions" / "val.csv"

    @property
    def split_csv(self) -> Path:
        return self.root / SPLIT_CSV

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def plots(self) -> Path:
        return self.root / PLOTS

    @classmethod
    def for_config(cls, run_dir: Path, config: Any) -> RunFiles:
        return cls(Path(run_dir), config.model.arch, config.output.stage)


STATE = "state/last.pt"
STATE_INFO = "state/last.json"  # the state's epoch, readable without downloading the state
RUN_JSON = "run.json"
SPLIT_CSV = "split.csv"
EPOCHS_CSV = "metrics/epochs.csv"
PER_CLASS_CSV = "metrics/per_class.csv"
PLOTS = "plots"


# --- status -----------------------------------------------------------------------------------


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    return json.loads(path.read_text()) if path.exists() else {}


def write_run_json(run_dir: str | Path, info: dict[str, Any]) -> None:
    storage.atomic_write_text(Path(run_dir) / RUN_JSON, json.dumps(info, indent=2) + "\n")


def remote_status(run_uri: str) -> str:
    """`completed` or `running` (run.json at `run_uri`), or `new`: no split.csv there yet."""
    if not storage.exists(storage.join(run_uri, SPLIT_CSV)):
        return "new"
    uri = storage.join(run_uri, RUN_JSON)
    if not storage.exists(uri):
        return "running"
    try:
        return str(json.loads(storage.read_text(uri)).get("status", "running"))
    except ValueError:
        return "running"


# --- what a run is -----------------------------------------------------------------------------

# Settings that change how a run goes (speed, limits on the input), not what it computes: left
# out of the run id.
NOT_IN_RUN_ID: dict[str, set[str]] = {
    "data": {"num_workers", "cache_mirror", "max_image_pixels", "max_image_bytes"},
    # nproc: how many processes share the work (a resource, like which GPU), not which run this
    # is. It changes the effective batch, yet a run killed on 2 GPUs must resume on 1 (or the
    # reverse) as the same run: state/last.pt holds nothing per process (camtrap.distributed).
    "train": {"progress", "eval_batch_size", "compile", "nproc"},
}
# What may differ when a run resumes: the settings above, the device it runs on (a run saved on
# CPU goes on on a GPU, with AMP there) and train.epochs (grown: the run is extended).
RESUMABLE = {
    **NOT_IN_RUN_ID,
    "train": NOT_IN_RUN_ID["train"] | {"epochs", "device", "amp", "amp_dtype"},
}
# Settings added after runs were made, each with the value that computes what those runs did. A
# setting holding that value is left out of the run id, and a saved config without it (an older
# run.json or state) reads as holding it: runs made before it existed keep their ids and resume
# (a weekly part1 on unchanged data stays "up to date"). The augment section counts only while
# augmentation is on: its other settings change nothing while it is off.
ADDED_LATER: dict[str, dict[str, Any]] = {
    "data": {"train_cache_size": None},
    "model": {"init_from": None},
    "train": {"schedule": "none", "warmup_epochs": 0.0, "label_smoothing": 0.0},
}


def settings_in_effect(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a model_dump(mode="json")) without the ADDED_LATER settings holding their old
    value and without the augment section while augmentation is off."""
    pruned = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for section, old in ADDED_LATER.items():
        values = pruned.get(section, {})
        for key, value in old.items():
            if key in values and values[key] == value:
                del values[key]
    if not pruned.get("augment", {}).get("enabled", False):
        pruned.pop("augment", None)
    return pruned


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`section.key: saved -> now` for each setting (both as model_dump(mode="json")) that
    differs and may not change when a run resumes."""
    saved, now = settings_in_effect(saved), settings_in_effect(now)
    changes = []
    for section in sorted(set(saved) | set(now)):
        old, new = saved.get(section, {}), now.get(section, {})
        for key in sorted(set(old) | set(new)):
            if key not in RESUMABLE.get(section, set()) and old.get(key) != new.get(key):
                changes.append(f"{section}.{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes


def refuse_changes(saved: dict[str, Any], now: dict[str, Any], where: str | Path) -> None:
    """ConfigError when `now` differs from the config a run at `where` was started with in
    anything but what RESUMABLE allows (resuming would mix two configs' optimizer states)."""
    changes = config_changes(saved, now)
    if changes:
        raise ConfigError(
            f"{where} was trained with another config ({'; '.join(changes)}): resuming would "
            "mix the two — fix: use the run's config (run.json), a new --run-id, or no "
            "--run-id (a changed config gets its own run); only train.epochs may grow, to "
            "extend a run"
        )


def up_to_date(info: dict[str, Any], epochs: int) -> bool:
    """Whether a run whose run.json is `info` has nothing left to do for `epochs` epochs (a
    finished run asked for more epochs, under its explicit id, is extended instead)."""
    trained = info.get("config", {}).get("train", {}).get("epochs", 0)
    return info.get("status") == "completed" and trained >= epochs


# --- epochs done ---------------------------------------------------------------------------------


def write_state_info(run_dir: str | Path, epoch: int, state_bytes: int) -> None:
    """state/last.json, written after state/last.pt: its epoch, for the resume rule's comparison
    of a local and a remote copy without downloading the state."""
    info = {"epoch": epoch, "bytes": state_bytes}
    storage.atomic_write_text(Path(run_dir) / STATE_INFO, json.dumps(info) + "\n")


def epochs_done(run_dir: str | Path) -> int:
    """The last completed epoch saved in `run_dir` (0: none): read from state/last.pt itself,
    the commit point, mapped rather than read (a few ms for a 300 MB state)."""
    path = Path(run_dir) / STATE
    if not path.exists():
        return 0
    import torch  # here: run-folder bookkeeping elsewhere needs no torch import

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - a torn or foreign file counts as no state
        log.warning("%s is not a readable state (%s); it counts as no epoch", path, err)
        return 0
    return int(state.get("epoch", 0))


def remote_epochs_done(run_uri: str) -> int:
    """The epoch state/last.json names at `run_uri` (0 without one). Uploaded right after the
    state, so at worst it lags the remote state by one epoch: the comparison then keeps the
    local copy, which is consistent, one epoch less advanced."""
    uri = storage.join(run_uri, STATE_INFO)
    if not storage.exists(uri):
        return 0
    try:
        return int(json.loads(storage.read_text(uri))["epoch"])
    except (ValueError, KeyError, TypeError):
        return 0


# --- the resume rule ----------------------------------------------------------------------------


def is_bookkeeping(path: str | Path, run_dir: str | Path | None = None) -> bool:
    """Hidden files (temp files of atomic writes, lock files) are not outputs: they never
    travel between copies nor appear in run.json. `path` relative to the run folder, or
    absolute inside `run_dir`."""
    rel = Path(path).relative_to(run_dir) if run_dir is not None else Path(path)
    return any(part.startswith(".") for part in PurePosixPath(rel.as_posix()).parts)


def reconcile(run_uri: str, local_dir: str | Path) -> str:
    """Bring the local copy of a run and its copy in output_uri together; the newest state wins.

    - remote ahead (more epochs saved there, e.g. a run resumed on another machine): the local
      copy becomes an exact mirror of the remote one;
    - otherwise (local ahead: uploads failed during an S3 outage; or equal): the local files
      are uploaded and files only the remote copy has are downloaded; nothing is deleted on
      either side, so no output that was never uploaded is lost.
    Returns "pulled", "pushed" or "same" (what moved the state)."""
    local_dir = Path(local_dir)
    if not storage.is_remote(run_uri) and Path(run_uri).resolve() == local_dir.resolve():
        return "same"
    local, remote = epochs_done(local_dir), remote_epochs_done(run_uri)
    if remote > local:
        log.info("%s: output_uri has epoch %d, this copy %d: taking the remote copy", run_uri,
                 remote, local)  # fmt: skip
        _mirror(run_uri, local_dir)
        return "pulled"
    if local > remote:
        log.info("%s: this copy has epoch %d, output_uri %d: uploading it", run_uri, local, remote)
    push(local_dir, run_uri)
    _download_missing(run_uri, local_dir)
    return "pushed" if local > remote else "same"


def _download_missing(run_uri: str, local_dir: Path) -> None:
    for rel in storage.list_files(run_uri):
        if storage.safe_relative(rel) and not is_bookkeeping(rel):
            target = inside(local_dir / rel, local_dir)
            if not target.exists():
                storage.download_file(storage.join(run_uri, rel), target)


def _mirror(run_uri: str, local_dir: Path) -> None:
    storage.sync_uri_to_dir(run_uri, local_dir)
    remote = set(storage.list_files(run_uri))
    for path in sorted(local_dir.rglob("*"), reverse=True):
        rel = path.relative_to(local_dir).as_posix()
        if path.is_file() and rel not in remote and not is_bookkeeping(rel):
            inside(path, local_dir).unlink()


def push(local_dir: str | Path, run_uri: str) -> list[str]:
    """Upload what changed: the state first (the commit point), run.json last (a reader seeing
    a finished run.json sees every file it lists)."""
    state_dir = Path(local_dir, "state")
    first = []
    if state_dir.is_dir():  # last.pt, then last.json (which names its epoch)
        synced = storage.sync_dir_to_uri(state_dir, storage.join(run_uri, "state"), ("last.json",))
        first = [f"state/{rel}" for rel in synced]
    return first + storage.sync_dir_to_uri(local_dir, run_uri, last=(RUN_JSON,))


# --- verification --------------------------------------------------------------------------------


def verify(run_uri: str) -> list[str]:
    """Every file run.json lists exists at `run_uri` with its size and sha256. Returns the
    problems (empty: intact). Remote files are downloaded to a temp folder to be hashed."""
    info_uri = storage.join(run_uri, RUN_JSON)
    if not storage.exists(info_uri):
        return [f"{info_uri} does not exist: the run never finished (or this is not a run)"]
    files = json.loads(storage.read_text(info_uri)).get("files", {})
    if not files:
        return [f"{info_uri} lists no files"]
    with tempfile.TemporaryDirectory(prefix="camtrap-verify-") as tmp:
        found = (_check(run_uri, rel, entry, tmp) for rel, entry in sorted(files.items()))
        return [problem for problem in found if problem]


def _check(run_uri: str, rel: str, entry: dict[str, Any], tmp: str) -> str | None:
    if not storage.safe_relative(rel):
        return f"{rel}: not a path inside the run folder"
    uri = storage.join(run_uri, rel)
    if not storage.exists(uri):
        return f"{rel}: missing"
    path = Path(uri)
    if storage.is_remote(run_uri):
        path = Path(tmp, "file")
        storage.download_file(uri, path)
    if path.stat().st_size != entry["bytes"]:
        return f"{rel}: {path.stat().st_size} bytes, run.json says {entry['bytes']}"
    if storage.file_sha256(path) != entry["sha256"]:
        return f"{rel}: sha256 differs from run.json"
    return None


# --- the lease ---------------------------------------------------------------------------------


class RunBusy(CamtrapError):
    """Another process holds the run's lease."""


def lease_location(output: str | Path, stage: str, run_id: str) -> str:
    """{output}/{stage}/.leases/{run_id}.json: beside the run folders, never inside one."""
    run_location(output, stage, run_id)  # the same checks as the run folder's
    return storage.join(output, stage, ".leases", f"{run_id}.json")


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_SECONDS_ENV) or DEFAULT_LEASE_SECONDS)


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
    expires: float  # unix time

    @classmethod
    def parse(cls, data: bytes) -> _Record | None:
        try:
            raw = json.loads(data)
            return cls(str(raw["owner"]), str(raw["host"]), int(raw["pid"]), float(raw["expires"]))
        except (ValueError, KeyError, TypeError):
            return None  # a torn or foreign lease file counts as free

    def dump(self) -> bytes:
        expires = datetime.fromtimestamp(self.expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return json.dumps({**self.__dict__, "expires_utc": expires}).encode()

    def stale(self, now: float) -> bool:
        """Expired, or held by a process of this machine that no longer exists."""
        same_host = self.host == socket.gethostname()
        return now >= self.expires or (same_host and not _pid_alive(self.pid))


class RunLease:
    """One writer per run: a lease file beside the run folders (local: created with O_EXCL; S3:
    a conditional put), renewed in the background while held, expiring on its own if its holder
    dies (at once when the holder was a process of this machine). Re-entrant for one owner: the
    tasks of one flow run (owner = the flow run id) each take it in turn."""

    def __init__(self, location: str, owner: str | None = None, seconds: float | None = None):
        self.location = location
        self.owner = owner or f"pid-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.seconds = seconds or lease_seconds()
        self._tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()

    def _record(self) -> _Record:
        return _Record(self.owner, socket.gethostname(), os.getpid(), time.time() + self.seconds)

    def try_acquire(self) -> _Record | None:
        """Take the lease; returns None when taken, else the holder's record."""
        for _ in range(5):  # a lost race re-reads the lease and tries again
            if storage.create_exclusive(self.location, self._record().dump()):
                self._tag = storage.read_with_tag(self.location)[1]
                return None
            try:
                data, tag = storage.read_with_tag(self.location)
            except storage.StorageNotFound:
                continue  # released between our two calls
            holder = _Record.parse(data)
            if holder is not None and holder.owner != self.owner and not holder.stale(time.time()):
                return holder
            if storage.replace_if_match(self.location, self._record().dump(), tag):
                self._tag = storage.read_with_tag(self.location)[1]
                return None
        raise StorageError(f"{self.location}: could not take the run's lease (contention)")

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


# --- the latest pointer --------------------------------------------------------------------------

LATEST_JSON = "latest.json"  # {output}/{stage}/latest.json: the stage's newest finished run


def latest_location(output: str | Path, stage: str) -> str:
    """{output}/{stage}/latest.json."""
    check_run_id(stage)
    return storage.join(output, stage, LATEST_JSON)


def write_latest(run_uri: str | Path, info: dict[str, Any]) -> str:
    """Point {output}/{stage}/latest.json at the run at `run_uri` (a folder `run_location`
    made), whose finished run.json is `info`. Call only after a fully successful run: every file
    is in place and run.json written. Replaced in one write (local: atomic rename; S3: one PUT),
    so a reader sees the old pointer or the new one. Returns the pointer's location."""
    run_uri = str(run_uri)
    stage, arch = info["config"]["output"]["stage"], info["config"]["model"]["arch"]
    files = RunFiles(Path(), arch, stage)
    listed = info.get("files", {})
    logloss = files.best_logloss_model.name
    pointer = {
        "run_id": info["run_id"],
        "run_uri": str(Path(run_uri).resolve()) if not storage.is_remote(run_uri) else run_uri,
        "stage": stage,
        "finished": info.get("finished"),
        "data_fingerprint": info.get("data_fingerprint"),
        "best_model": files.best_model.name,
        "best_logloss_model": logloss if logloss in listed else None,
    }
    location = storage.join(_parent(run_uri), LATEST_JSON)
    storage.write_text(location, json.dumps(pointer, indent=2) + "\n")
    log.info("%s -> %s", location, info["run_id"])
    return location


def read_latest(output: str | Path, stage: str) -> dict[str, Any] | None:
    """The pointer {output}/{stage}/latest.json, or None when no run of the stage has finished
    there yet."""
    location = latest_location(output, stage)
    return _read_pointer(location) if storage.exists(location) else None


def resolve_model_uri(uri: str | Path) -> str:
    """The model file `uri` stands for: a model file -> itself; a run folder (with run.json) ->
    its best model; `.../latest.json` (or a stage folder holding one) -> the best model of the
    run it points to. StorageNotFound, with the fix, when there is no such file."""
    text = str(uri).rstrip("/")
    if _name(text) != LATEST_JSON and storage.exists(storage.join(text, LATEST_JSON)):
        text = storage.join(text, LATEST_JSON)  # a stage folder: {output}/{stage}
    if _name(text) == LATEST_JSON:
        if not storage.exists(text):
            raise storage.StorageNotFound(
                f"{text} does not exist: no run of this stage has finished there yet — fix: "
                "train one into that output_uri first, or pass a model file or a run folder"
            )
        pointer = _read_pointer(text)
        found = storage.join(_parent(text), pointer["run_id"], pointer["best_model"])
    elif storage.exists(storage.join(text, RUN_JSON)):
        found = _best_model_of_run(text)
    else:
        found = text
    if not storage.exists(found):
        raise storage.StorageNotFound(
            f"model file {found} does not exist — fix: pass a model file (final_*_best.pth), a "
            f"run folder (with run.json), or {{output_uri}}/{{stage}}/{LATEST_JSON}"
        )
    return found


def _best_model_of_run(run_uri: str) -> str:
    info = json.loads(storage.read_text(storage.join(run_uri, RUN_JSON)))
    if info.get("status") != "completed":
        raise StorageError(
            f"{run_uri} has not finished (status {info.get('status')!r}): its best model may "
            "still change and has no calibration yet — fix: wait for the run to finish, or pass "
            "the model file itself"
        )
    config = info.get("config", {})
    files = RunFiles(Path(), config["model"]["arch"], config["output"]["stage"])
    return storage.join(run_uri, files.best_model.name)


def _read_pointer(location: str) -> dict[str, Any]:
    try:
        pointer = json.loads(storage.read_text(location))
        if not isinstance(pointer, dict) or not {"run_id", "best_model"} <= set(pointer):
            raise ValueError("no run_id/best_model")
        for key in ("run_id", "best_model"):  # each becomes part of a path
            if not RUN_ID_PATTERN.fullmatch(str(pointer[key])) or ".." in str(pointer[key]):
                raise ValueError(f"{key} {pointer[key]!r} is not a plain name")
    except (ValueError, UnicodeDecodeError) as err:
        raise StorageError(
            f"{location} is not a latest-run pointer ({err}) — fix: delete it; the next run "
            "that finishes writes it again"
        ) from None
    return pointer


def _parent(uri: str) -> str:
    if storage.is_remote(uri):
        return uri.rstrip("/").rsplit("/", 1)[0]
    return str(Path(uri).parent)


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]
