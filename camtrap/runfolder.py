"""The one owner of a run folder: where it is (run ids that can't escape it), its layout, its
status (run.json), what makes a run the same run (its id, the settings that may change when it
resumes), how many epochs are done, the resume rule between a local copy and the copy in
output_uri, and the check that every listed file is intact. The lease that keeps a second
writer out is camtrap.lease's; the stage's pointer to its newest finished run, camtrap.latest's.

Commit order inside a run folder: state/last.pt is the commit point of an epoch. Everything else
an epoch writes (the best model, metrics/*.csv, state/last.json) is written after it and can be
rebuilt from it, so a kill at any moment leaves a folder that resumes to the same numbers."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from camtrap import storage
from camtrap.errors import ConfigError, StorageError
from camtrap.storage.files import atomic_write_text, file_sha256, inside, safe_relative
from camtrap.storage.mirror import sync_dir_to_uri, sync_uri_to_dir
from camtrap.storage.uris import is_remote, join

log = logging.getLogger("camtrap")

# Letters, digits, `_`, `.`, `-`; starting with a letter or digit, so never `..`, `.`, or hidden.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")

# The files of a run folder, relative to it (RunFiles gives each as a path).
STATE = "state/last.pt"
STATE_INFO = "state/last.json"  # the state's epoch, readable without downloading the state
RUN_JSON = "run.json"
SPLIT_CSV = "split.csv"
EPOCHS_CSV = "metrics/epochs.csv"
PER_CLASS_CSV = "metrics/per_class.csv"
CONFUSION_CSV = "metrics/confusion_matrix.csv"
PER_SITE_CSV = "metrics/per_site.csv"
EVENTS_CSV = "metrics/events.csv"  # only for data with events (camtrap.events)
PREDICTIONS_CSV = "predictions/val.csv"
PLOTS = "plots"
# The plots of a run, in the order a reader looks at them (the plots artifact's order).
PLOT_FILES: dict[str, str] = {
    "curves.png": "accuracy and loss of train and val over epochs, best epoch marked",
    "calibration.png": "reliability diagram of each best model on val, before and after its "
    "temperature",
    "confusion_matrix.png": "confusion matrix of the best checkpoint on val (rows: true class)",
    "class_precision.png": "validation precision of each class over epochs",
    "class_recalls.png": "validation recall of each class over epochs",
    "class_f1.png": "validation F1 of each class over epochs",
}
PLOT_NAMES = tuple(name.removesuffix(".png") for name in PLOT_FILES)
# Beside the run folders of a stage: {output}/{stage}/latest.json (camtrap.latest) and
# {output}/{stage}/.leases/ (camtrap.lease).
LATEST_JSON = "latest.json"
LEASES = ".leases"


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


def run_location(output: str | Path, stage: str, run_id: str) -> str:
    """{output}/{stage}/{run_id}, for a local folder or an s3:// URI, after checking the id."""
    check_run_id(run_id)
    check_run_id(stage)
    location = join(output, stage, run_id)
    if not is_remote(output):
        inside(output, f"{stage}/{run_id}")
    return location


# --- the layout -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFiles:
    """Where each output of a run lives inside its folder (docs/architecture.md, "Run folder")."""

    root: Path
    arch: str
    stage: str

    @property
    def best_model(self) -> Path:
        """The epoch best by train.best_metric (part1: val accuracy, as the seed)."""
        return self.root / f"final_{self.arch}_model_{self.stage}_best.pth"

    @property
    def best_logloss_model(self) -> Path:
        """The epoch with the lowest val log loss (best_model follows train.best_metric)."""
        return self.root / f"final_{self.arch}_model_{self.stage}_best_logloss.pth"

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
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def split_csv(self) -> Path:
        return self.root / SPLIT_CSV

    @property
    def epochs_csv(self) -> Path:
        return self.root / EPOCHS_CSV

    @property
    def per_class_csv(self) -> Path:
        return self.root / PER_CLASS_CSV

    @property
    def confusion_csv(self) -> Path:
        return self.root / CONFUSION_CSV

    @property
    def per_site_csv(self) -> Path:
        return self.root / PER_SITE_CSV

    @property
    def events_csv(self) -> Path:
        return self.root / EVENTS_CSV

    @property
    def predictions_csv(self) -> Path:
        return self.root / PREDICTIONS_CSV

    @property
    def plots(self) -> Path:
        return self.root / PLOTS

    def plot(self, name: str) -> Path:
        """plots/{name}.png, `name` one of PLOT_NAMES."""
        return self.plots / f"{name}.png"

    def finished_layout(self) -> list[str]:
        """Every file a finished run folder holds, relative to it, sorted."""
        files = [
            self.run_json, self.best_model, self.best_logloss_model, self.final_model,
            self.state, self.state_info, self.split_csv, self.epochs_csv, self.per_class_csv,
            self.confusion_csv, self.per_site_csv, self.predictions_csv,
            *(self.plot(name) for name in PLOT_NAMES),
        ]  # fmt: skip
        return sorted(path.relative_to(self.root).as_posix() for path in files)

    @classmethod
    def for_config(cls, run_dir: str | Path, config: Any) -> RunFiles:
        return cls(Path(run_dir), config.model.arch, config.output.stage)

    @classmethod
    def of_run(cls, run_dir: str | Path, info: dict[str, Any]) -> RunFiles | None:
        """The layout of the run whose run.json is `info`: its config's arch and stage name its
        files. None when run.json does not say them."""
        config = info.get("config")
        model = config.get("model") if isinstance(config, dict) else None
        output = config.get("output") if isinstance(config, dict) else None
        arch = model.get("arch") if isinstance(model, dict) else None
        stage = output.get("stage") if isinstance(output, dict) else None
        if not isinstance(arch, str) or not isinstance(stage, str):
            return None
        return cls(Path(run_dir), arch, stage)


# --- status -----------------------------------------------------------------------------------


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunJsonDamaged(StorageError):
    """run.json is not what camtrap writes (torn by a copy, edited)."""


def damaged_run_json(location: str | Path, what: str) -> RunJsonDamaged:
    return RunJsonDamaged(
        f"run.json is damaged: {location} {what} — fix: restore it from the run's copy in "
        "output_uri, or delete it and rerun `camtrap train` with the same settings: the run "
        "resumes from its last saved epoch and writes run.json again"
    )


def parse_run_json(data: bytes, where: str | Path) -> dict[str, Any]:
    """The run.json `data` read from `where`; RunJsonDamaged unless it is a JSON object."""
    try:
        info = json.loads(data)
    except json.JSONDecodeError as err:
        at = len(err.doc[: err.pos].encode())  # the position in the file, not in the text
        why = err.msg.removesuffix(" at").removesuffix(" starting").lower()
        raise damaged_run_json(where, f"is not JSON at byte {at} of {len(data)} ({why})") from None
    except (UnicodeDecodeError, RecursionError):  # json.loads decodes bytes itself
        raise damaged_run_json(where, "is not JSON text") from None
    if not isinstance(info, dict):
        kind = {list: "a list", str: "a string", type(None): "null"}.get(type(info), "a value")
        raise damaged_run_json(where, f"is not a JSON object (it holds {kind})")
    return info


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """run.json of a local run folder ({} before there is one), checked by parse_run_json."""
    path = Path(run_dir) / RUN_JSON
    return parse_run_json(path.read_bytes(), path) if path.exists() else {}


def write_run_json(run_dir: str | Path, info: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / RUN_JSON, json.dumps(info, indent=2) + "\n")


def remote_run_json(run_uri: str) -> dict[str, Any]:
    """run.json at `run_uri`; {} when there is none yet or it is damaged (the state decides)."""
    uri = join(run_uri, RUN_JSON)
    try:
        return parse_run_json(storage.read_bytes(uri), uri) if storage.exists(uri) else {}
    except RunJsonDamaged:
        return {}


def remote_status(run_uri: str) -> str:
    """`completed` or `running` (run.json at `run_uri`), or `new`: no split.csv there yet."""
    if not storage.exists(join(run_uri, SPLIT_CSV)):
        return "new"
    return str(remote_run_json(run_uri).get("status", "running"))


# --- what a run is -----------------------------------------------------------------------------

# Settings that change how a run goes (speed, limits on the input), not what it computes: left
# out of the run id.
NOT_IN_RUN_ID: dict[str, set[str]] = {
    # format: how the data root was read; its content is in the data fingerprint ("auto" and the
    # format it finds are the same run).
    "data": {"num_workers", "cache_mirror", "max_image_pixels", "max_image_bytes", "format"},
    # nproc: how many processes share the work (a resource, like which GPU), not which run this
    # is. It changes the effective batch, yet a run killed on 2 GPUs must resume on 1 (or the
    # reverse) as the same run: state/last.pt holds nothing per process (camtrap.launch).
    "train": {"progress", "eval_batch_size", "compile", "nproc"},
    # how val photos are grouped into events: metrics/events.csv only, not the model
    "predict": {"event_gap_s", "event_rule"},
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
    "data": {
        "train_cache_size": None,
        "annotations": None,
        "multi_label": "refuse",
        "allow_http": False,
        "sampler": "shuffle",
        "detections": None,
        "crop": "none",
        "detection_threshold": 0.1,
        "crop_margin": 0.15,
    },  # fmt: skip
    "model": {"init_from": None},
    "train": {
        "schedule": "none",
        "warmup_epochs": 0.0,
        "label_smoothing": 0.0,
        "class_weights": "none",
    },  # fmt: skip
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


def run_id_for(config: Any, data_fingerprint: str) -> str:
    """`{stage}-{fingerprint}`: the same config (a RunConfig) on the same data always gets the
    same id."""
    dump = config.model_dump(mode="json", exclude=NOT_IN_RUN_ID)
    settings = settings_in_effect(dump)  # settings added later keep old ids
    settings.pop("output", None)
    settings = {k: v for k, v in settings.items() if v != {}}  # a section left out whole
    digest = hashlib.sha256(
        json.dumps({"config": settings, "data": data_fingerprint}, sort_keys=True).encode()
    ).hexdigest()
    return f"{config.output.stage}-{digest[:12]}"


def resolve_run_id(
    config: Any, data_fingerprint: str, run_id: str | None = None, force: bool = False
) -> str:
    """The given id, else the derived one; `force` adds a timestamp so a finished run with the
    same config and data is trained again into a new folder (nothing is overwritten)."""
    run_id = check_run_id(run_id) if run_id else run_id_for(config, data_fingerprint)
    return f"{run_id}-{datetime.now(UTC):%Y%m%dT%H%M%S}" if force else run_id


# --- epochs done ---------------------------------------------------------------------------------


def write_state_info(run_dir: str | Path, epoch: int, state_bytes: int) -> None:
    """state/last.json, written after state/last.pt: its epoch, for the resume rule's comparison
    of a local and a remote copy without downloading the state."""
    info = {"epoch": epoch, "bytes": state_bytes}
    atomic_write_text(Path(run_dir) / STATE_INFO, json.dumps(info) + "\n")


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
    uri = join(run_uri, STATE_INFO)
    try:
        return int(json.loads(storage.read_text(uri))["epoch"]) if storage.exists(uri) else 0
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
    if not is_remote(run_uri) and Path(run_uri).resolve() == local_dir.resolve():
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
        if safe_relative(rel) and not is_bookkeeping(rel):
            target = inside(local_dir, rel)
            if not target.exists():
                storage.download_file(join(run_uri, rel), target)


def _mirror(run_uri: str, local_dir: Path) -> None:
    sync_uri_to_dir(run_uri, local_dir)
    remote = set(storage.list_files(run_uri))
    for path in sorted(local_dir.rglob("*"), reverse=True):
        rel = path.relative_to(local_dir).as_posix()
        if path.is_file() and rel not in remote and not is_bookkeeping(rel):
            inside(local_dir, rel).unlink()


def push(local_dir: str | Path, run_uri: str) -> list[str]:
    """Upload what changed: the state first (the commit point), run.json last (a reader seeing
    a finished run.json sees every file it lists)."""
    state_dir = Path(local_dir, "state")
    first = []
    if state_dir.is_dir():  # last.pt, then last.json (which names its epoch)
        synced = sync_dir_to_uri(state_dir, join(run_uri, "state"), ("last.json",))
        first = [f"state/{rel}" for rel in synced]
    return first + sync_dir_to_uri(local_dir, run_uri, last=(RUN_JSON,))


# --- verification --------------------------------------------------------------------------------


def verify(run_uri: str) -> list[str]:
    """Every file run.json lists exists at `run_uri` with its size and sha256. Returns the
    problems (empty: intact). Remote files are downloaded to a temp folder to be hashed."""
    info_uri = join(run_uri, RUN_JSON)
    if not storage.exists(info_uri):
        return [f"{info_uri} does not exist: the run never finished (or this is not a run)"]
    try:  # a damaged run.json is the run's problem, reported as the others are
        info = parse_run_json(storage.read_bytes(info_uri), info_uri)
    except RunJsonDamaged as err:
        return [str(err)]
    if problem := _files_problem(info, info_uri):
        return [problem]
    with tempfile.TemporaryDirectory(prefix="camtrap-verify-") as tmp:
        found = (_check(run_uri, rel, entry, tmp) for rel, entry in sorted(info["files"].items()))
        return [problem for problem in found if problem]


def _files_problem(info: dict[str, Any], info_uri: str) -> str | None:
    """Why run.json's `files` can't be checked: a run that has not finished lists none yet; a
    finished one lists each output with its size and sha256, else run.json is damaged."""
    files, status = info.get("files"), info.get("status")
    if files is None and status != "completed":
        return (f"{info_uri}: the run has not finished (status {status!r}), so it lists no "
                "files yet — fix: wait for it, or rerun `camtrap train` to resume it")  # fmt: skip
    if not isinstance(files, dict) or not files:
        return str(damaged_run_json(info_uri, 'has no "files" list (each output, its sha256)'))
    for rel, entry in files.items():
        size = entry.get("bytes") if isinstance(entry, dict) else None
        if type(size) is not int or not isinstance(entry.get("sha256"), str):
            return str(damaged_run_json(info_uri, f'lists {rel!r} without "bytes" and "sha256"'))
    return None


def _check(run_uri: str, rel: str, entry: dict[str, Any], tmp: str) -> str | None:
    if not safe_relative(rel):
        return f"{rel}: not a path inside the run folder"
    uri = join(run_uri, rel)
    if not storage.exists(uri):
        return f"{rel}: missing"
    path = Path(uri)
    if is_remote(run_uri):
        path = Path(tmp, "file")
        storage.download_file(uri, path)
    if path.stat().st_size != entry["bytes"]:
        return f"{rel}: {path.stat().st_size} bytes, run.json says {entry['bytes']}"
    if file_sha256(path) != entry["sha256"]:
        return f"{rel}: sha256 differs from run.json"
    return None
