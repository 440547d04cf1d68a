"""{output}/{stage}/latest.json: the pointer to a stage's newest finished run, and what a model
URI stands for (a model file, a run folder, a stage's pointer) — the model that `camtrap predict`,
the predict-swin flow and a part2 warm start (model.init_from) use."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from camtrap import storage
from camtrap.errors import StorageError
from camtrap.runfolder import (
    LATEST_JSON,
    RUN_ID_PATTERN,
    RUN_JSON,
    RunFiles,
    check_run_id,
    damaged_run_json,
    parse_run_json,
)
from camtrap.storage import StorageNotFound
from camtrap.storage.uris import is_remote, join, name, parent

log = logging.getLogger("camtrap")


def latest_location(output: str | Path, stage: str) -> str:
    """{output}/{stage}/latest.json."""
    check_run_id(stage)
    return join(output, stage, LATEST_JSON)


def write_latest(run_uri: str | Path, info: dict[str, Any]) -> str:
    """Point {output}/{stage}/latest.json at the run at `run_uri` (a folder `run_location`
    made), whose finished run.json is `info`. Call only after a fully successful run: every file
    is in place and run.json written. Replaced in one write (local: atomic rename; S3: one PUT),
    so a reader sees the old pointer or the new one. Returns the pointer's location."""
    run_uri = str(run_uri)
    files = RunFiles.of_run(Path(), info)
    assert files is not None, "finalize writes the whole config into run.json"
    listed = info.get("files", {})
    logloss = files.best_logloss_model.name
    pointer = {
        "run_id": info["run_id"],
        "run_uri": str(Path(run_uri).resolve()) if not is_remote(run_uri) else run_uri,
        "stage": files.stage,
        "finished": info.get("finished"),
        "data_fingerprint": info.get("data_fingerprint"),
        "best_model": files.best_model.name,
        "best_logloss_model": logloss if logloss in listed else None,
    }
    location = join(parent(run_uri), LATEST_JSON)
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
    if name(text) != LATEST_JSON and storage.exists(join(text, LATEST_JSON)):
        text = join(text, LATEST_JSON)  # a stage folder: {output}/{stage}
    if name(text) == LATEST_JSON:
        if not storage.exists(text):
            raise StorageNotFound(
                f"{text} does not exist: no run of this stage has finished there yet — fix: "
                "train one into that output_uri first, or pass a model file or a run folder"
            )
        pointer = _read_pointer(text)
        found = join(parent(text), pointer["run_id"], pointer["best_model"])
    elif storage.exists(join(text, RUN_JSON)):
        found = _best_model_of_run(text)
    else:
        found = text
    if not storage.exists(found):
        raise StorageNotFound(
            f"model file {found} does not exist — fix: pass a model file (final_*_best.pth), a "
            f"run folder (with run.json), or {{output_uri}}/{{stage}}/{LATEST_JSON}"
        )
    return found


def _best_model_of_run(run_uri: str) -> str:
    location = join(run_uri, RUN_JSON)
    info = parse_run_json(storage.read_bytes(location), location)
    if not isinstance(info.get("status"), str):  # every run.json camtrap writes has one
        raise damaged_run_json(location, 'has no "status"')
    if info.get("status") != "completed":
        raise StorageError(
            f"{run_uri} has not finished (status {info.get('status')!r}): its best model may "
            "still change and has no calibration yet — fix: wait for the run to finish, or pass "
            "the model file itself"
        )
    files = RunFiles.of_run(Path(), info)
    if files is None:
        raise StorageError(
            f"{run_uri}/{RUN_JSON} does not name the run's model (config.model.arch and "
            "config.output.stage) — fix: pass the model file itself"
        )
    return join(run_uri, files.best_model.name)


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
