"""Training on several processes: DDP, launched through torchrun's engine (train.nproc > 1).
What each process runs is the worker function the caller passes (camtrap.stages.train_here):
this module starts processes and relays between them, it knows no stage.

The process that asks for training (`camtrap train`, the Prefect train task) stays the one that
holds the run's lease and runs `on_epoch_end` (uploads, artifacts, lease checks). It starts the
training processes with torch.distributed.run's Python API (`elastic_launch`, a single-node
"standalone" rendezvous; gloo on CPU, nccl on CUDA, one GPU per process) and relays for them:

- every rank trains on its shard of the train split (DistributedSampler over the image cache,
  reshuffled each epoch from (train.seed, epoch)); DDP averages the gradients. batch_size is per
  process: the effective batch is batch_size x nproc;
- the train outputs of all ranks are gathered on rank 0 (the train metrics cover every image);
  rank 0 alone evaluates the full val set with the unwrapped model, exactly as one process
  would, and alone writes the run folder (state/last.pt, best models, metrics CSVs) and logs;
  the other ranks wait at a barrier;
- after each epoch's files are written, rank 0 hands the EpochRecord to the launching process
  through a private folder and waits for its answer: `on_epoch_end` runs there, in order, as it
  would in one process; if it raises, training stops and the launcher raises that error.

state/last.pt is rank 0's state: weights, optimizer, schedule and rank 0's RNG, nothing per
rank, so a run resumes on any number of processes (the sampler's epoch is the epoch number;
ranks other than 0 derive their RNG from (seed, rank, epoch)). Workers live in sessions of their
own (torchrun's), so each exits as soon as its launcher is gone: a kill -9 of the launcher
leaves no rank writing behind it."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import pickle
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from camtrap import errors
from camtrap.device import resolve_device
from camtrap.errors import CamtrapError
from camtrap.ranks import Group, backend_for, barrier
from camtrap.storage.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from camtrap.fit import EpochRecord

log = logging.getLogger("camtrap")

# The worker function: (job, rank 0's on_epoch_end or None, this process's group) -> result.
Worker = Callable[[Any, Callable[["EpochRecord"], None] | None, Group], Any]

# Rank 0 evaluates and writes each epoch while the others wait at a barrier, and a slow upload
# in on_epoch_end holds rank 0 back by up to an epoch: collectives may wait that long.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
_POLL_S = 0.05
_JOB, _RESULT, _LOG = "job.pkl", "result.pkl", "rank0-log.jsonl"


# --- the launching process ---------------------------------------------------------------------


def launch(
    worker: Worker,
    job: Any,
    nproc: int,
    device: str,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> Any:
    """Run `worker(job, courier, group)` on `nproc` processes (torchrun's engine) on `device`
    (train.device) and return rank 0's result; `on_epoch_end` runs here, after each epoch's
    files are written. `worker` must be a module-level function (it is pickled by name) and
    `job` picklable (a RunConfig keeps credentials in URIs that a JSON dump would redact)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    with tempfile.TemporaryDirectory(prefix="camtrap-ddp-") as folder:
        ipc = Path(folder)
        atomic_write_bytes(ipc / _JOB, pickle.dumps((worker, job, device, os.getpid())))
        relay = _Relay(ipc, on_epoch_end)
        relay.start()
        try:
            elastic_launch(_launch_config(nproc), sys.executable)(
                "-u", "-m", "camtrap.launch", str(ipc)
            )
        except ChildFailedError as failed:
            relay.stop()
            raise relay.error or _worker_error(ipc) or _crash(failed, nproc) from None
        relay.stop()
        if relay.error is not None:
            raise relay.error
        return pickle.loads((ipc / _RESULT).read_bytes())


def _launch_config(nproc: int):
    """torchrun --standalone --nproc-per-node nproc --max-restarts 0: a failed rank fails the
    run, and the rerun (or the task's retry) resumes it from state/last.pt."""
    from torch.distributed.launcher.api import LaunchConfig

    return LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
    )  # fmt: skip


def _worker_error(ipc: Path) -> CamtrapError | None:
    """The user error (bad config, diverged training, out of memory...) a rank reported."""
    for path in sorted(ipc.glob("error-rank*.json")):
        report = json.loads(path.read_text())
        cls = getattr(errors, report["type"], None)
        simple = isinstance(cls, type) and issubclass(cls, CamtrapError) and cls.__init__ in (
            CamtrapError.__init__, Exception.__init__,
        )  # fmt: skip
        return (cls if simple else CamtrapError)(report["message"])
    return None


def _crash(failed: Exception, nproc: int) -> RuntimeError:
    return RuntimeError(
        f"training on {nproc} processes failed (its traceback is above, from the rank that "
        f"failed first); rerun to resume from the last saved epoch: {failed}"
    )


class _Relay:
    """In the launching process: re-logs rank 0's log records and runs `on_epoch_end` for each
    epoch rank 0 reports, answering it (empty: go on; else why to stop)."""

    def __init__(self, ipc: Path, on_epoch_end: Callable[[EpochRecord], None] | None) -> None:
        self.ipc = ipc
        self.on_epoch_end = on_epoch_end
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._log_offset = 0
        # In a copy of the launcher's context, as BackgroundWriter runs on_epoch_end in one
        # process: per-run logging and the Prefect task run's context (artifacts) still apply.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="camtrap-ddp-relay", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self._relay_logs()

    def _run(self) -> None:
        while not self._done.wait(_POLL_S):
            self._relay_logs()
            for record in sorted(self.ipc.glob("epoch-*.pkl")):
                if not record.with_suffix(".ack").exists():
                    self._answer(record)

    def _answer(self, path: Path) -> None:
        answer = ""
        try:
            if self.error is None and self.on_epoch_end is not None:
                self._relay_logs()  # the epoch's log lines first
                self.on_epoch_end(pickle.loads(path.read_bytes()))
        except BaseException as err:  # noqa: BLE001 - raised by launch() in the caller's thread
            self.error = err
        if self.error is not None:
            answer = f"{type(self.error).__name__}: {self.error}"
        atomic_write_text(path.with_suffix(".ack"), answer)

    def _relay_logs(self) -> None:
        path = self.ipc / _LOG
        if not path.exists():
            return
        with path.open("rb") as lines:
            lines.seek(self._log_offset)
            for line in lines:
                if not line.endswith(b"\n"):
                    break  # being written: read it next time
                self._log_offset += len(line)
                entry = json.loads(line)
                log.log(entry["level"], "%s", entry["message"])


# --- a training process ------------------------------------------------------------------------


class _EpochCourier:
    """Rank 0's on_epoch_end: hand the record to the launcher, wait for its answer."""

    def __init__(self, ipc: Path) -> None:
        self.ipc = ipc

    def __call__(self, record: EpochRecord) -> None:
        path = self.ipc / f"epoch-{record.epoch:06d}.pkl"
        atomic_write_bytes(path, pickle.dumps(record))
        answer = path.with_suffix(".ack")
        while not answer.exists():
            time.sleep(_POLL_S)
        reason = answer.read_text()
        if reason:
            raise CamtrapError(f"the launching process stopped training: {reason}")


class _JsonLines(logging.Handler):
    """Rank 0's log records, one JSON line each, for the launcher to log as its own."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.stream = path.open("a", encoding="utf-8")

    def emit(self, record: logging.LogRecord) -> None:
        entry = {"level": record.levelno, "message": self.format(record)}
        self.stream.write(json.dumps(entry) + "\n")
        self.stream.flush()


def _setup_logging(group: Group, ipc: Path) -> None:
    """Rank 0's records go to the launcher (and from there to its handlers: stderr, Prefect);
    the other ranks print warnings and errors only, marked with their rank."""
    if group.is_main:
        handler: logging.Handler = _JsonLines(ipc / _LOG)
        log.setLevel(logging.INFO)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[rank {group.rank}] %(levelname)s %(message)s"))
        log.setLevel(logging.WARNING)
    log.handlers[:] = [handler]
    log.propagate = False


def _exit_with_launcher(launcher_pid: int) -> None:
    """End this process as soon as its launcher is gone (killed: no one tears the ranks down,
    and a rank left running would write into the run its rerun resumes)."""

    def watch() -> None:
        while True:
            if os.getppid() != launcher_pid:
                os._exit(1)
            time.sleep(0.2)

    threading.Thread(target=watch, name="camtrap-ddp-watchdog", daemon=True).start()


def _threads_per_rank(group: Group) -> None:
    """torchrun's rule: without OMP_NUM_THREADS, the cores are shared between the ranks."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // group.world_size))


def _report_error(ipc: Path, group: Group, err: CamtrapError) -> None:
    report = {"type": type(err).__name__, "message": str(err)}
    atomic_write_text(ipc / f"error-rank{group.rank:04d}.json", json.dumps(report))


def worker_main(ipc: Path) -> int:
    """One training process, started by `launch` (through torchrun)."""
    worker, job, device_name, launcher_pid = pickle.loads((ipc / _JOB).read_bytes())
    _exit_with_launcher(launcher_pid)
    group = Group.from_env()
    _setup_logging(group, ipc)
    _threads_per_rank(group)
    device = resolve_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(group.local_rank)
    dist.init_process_group(backend_for(device.type), timeout=COLLECTIVE_TIMEOUT)
    try:
        courier = _EpochCourier(ipc) if group.is_main else None
        result = worker(job, courier, group)
        if group.is_main:
            atomic_write_bytes(ipc / _RESULT, pickle.dumps(result))
        barrier()
    except CamtrapError as err:
        _report_error(ipc, group, err)  # the launcher raises it (rank 0's first)
        return 1
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(Path(sys.argv[1])))
