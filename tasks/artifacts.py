"""What a run shows in the Prefect UI, under keys stable per stage (`train-swin-{stage}-...`), so
the Artifacts page keeps every retrain as a version of one artifact: a progress bar, per-epoch and
per-class tables, a markdown summary, the plots, the stage's retrain history and links to the
outputs. A flow run writes each key once and updates it in place (every epoch, a retried task),
so its Artifacts tab has the same ten cards however many epochs it trains. Built from the files in
the run folder; URIs only name `s3://bucket/key` or local paths (never an endpoint or a
credential)."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.runtime import flow_run, task_run

from camtrap import report, runfolder, storage
from camtrap.metrics import EPOCH_METRICS
from camtrap.runfolder import RunFiles
from tasks.refs import RunRef

log = logging.getLogger("camtrap")

FLOW_NAME = "train-swin"


def best_effort(what: str, fn: Callable[[], Any]) -> Any:
    """Monitoring must not stop a run: a failed artifact call is logged and skipped."""
    try:
        return fn()
    except Exception as err:
        log.warning("could not update the %s artifact (%s); the run goes on", what, err)
        return None


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    text = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")


def stage_key(stage: str, what: str) -> str:
    """The key every retrain of `stage` writes `what` under: `train-swin-part1-summary`."""
    return artifact_key(FLOW_NAME, stage, what)


def stage_uri(run: RunRef) -> str:
    """{output_uri}/{stage}: run_uri is {output_uri}/{stage}/{run_id} (s3:// or a local path)."""
    return run.run_uri.rstrip("/").rsplit("/", 1)[0]


def stage_of(run: RunRef) -> str:
    return stage_uri(run).rsplit("/", 1)[-1]


def _uuid(value: str | None) -> UUID | None:
    return UUID(str(value)) if value else None


def _json_safe(value: Any) -> Any:
    """NaN/NA (a value a run has not reached) as null: the API stores JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return None if value is pd.NA else value


def _table_data(rows: list[dict[str, Any]]) -> str:
    """A table artifact's data, as create_table_artifact stores it: JSON rows."""
    return json.dumps([{k: _json_safe(_round(v)) for k, v in row.items()} for row in rows])


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


class RunArtifacts:
    """This flow run's artifacts, one per stage key, each written in place: the first write of
    a key finds the flow run's artifact with it (a retried or later task made it) or creates it;
    later writes update it (PATCH /artifacts/{id}, which Prefect 3 accepts for any type and
    which also moves the key's latest version). The flow and task run ids are taken when this
    is made (inside the task), so the writes work from any thread."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.flow_run_id = _uuid(flow_run.id)
        self.task_run_id = _uuid(task_run.id)
        self.ids: dict[str, UUID] = {}

    def write(self, what: str, kind: str, data: Any, description: str) -> UUID:
        """`kind`: "table" (data from _table_data), "progress" (0-100), "markdown"."""
        key = stage_key(self.stage, what)
        with get_client(sync_client=True) as client:
            known = self.ids.get(key) or self._find(client, key)
            if known is None:
                known = client.create_artifact(self._new(key, kind, data, description)).id
            else:
                client.update_artifact(known, ArtifactUpdate(data=data, description=description))
        self.ids[key] = known
        return known

    def _new(self, key: str, kind: str, data: Any, description: str) -> ArtifactCreate:
        return ArtifactCreate(
            key=key,
            type=kind,
            data=data,
            description=description,
            flow_run_id=self.flow_run_id,
            task_run_id=self.task_run_id,
        )

    def _find(self, client: Any, key: str) -> UUID | None:
        if self.flow_run_id is None:  # outside a flow run: nothing to update, a new one
            return None
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[self.flow_run_id]),
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
        return found[0].id if found else None

    def link(self, what: str, uri: str, description: str) -> UUID:
        """A link artifact (create_link_artifact stores `[text](link)` as markdown): the URI as
        text, an s3:// URI or a file:// URL as the target."""
        target = uri if storage.is_remote(uri) else Path(uri).resolve().as_uri()
        return self.write(what, "markdown", f"[{uri}]({target})", description)


def progress(
    artifacts: RunArtifacts, run: RunRef, done: int, total: int, note: str | None = None
) -> UUID:
    """The run's progress bar: epochs done of the epochs planned."""
    note = note or f"{run.run_id}: epoch {done}/{total} done"
    return artifacts.write("progress", "progress", 100.0 * done / total, note)


def epochs_table(artifacts: RunArtifacts, run: RunRef, epochs_csv: Path) -> UUID:
    """metrics/epochs.csv as one row per epoch: train and val side by side."""
    frame = pd.read_csv(epochs_csv)
    wide = frame.pivot(index="epoch", columns="split")
    rows = []
    for epoch, values in wide.iterrows():
        row: dict[str, Any] = {"epoch": int(epoch)}
        for split in ("train", "val"):
            for metric in EPOCH_METRICS:
                if (metric, split) in values.index:
                    row[f"{split}_{metric}"] = float(values[(metric, split)])
        rows.append(row)
    note = f"{run.run_id}: metrics per epoch (metrics/epochs.csv)"
    return artifacts.write("epochs", "table", _table_data(rows), note)


def per_class_table(
    artifacts: RunArtifacts, run: RunRef, per_class: pd.DataFrame, epoch: int
) -> UUID:
    """Precision, recall, F1 and support per class on the val split at `epoch`."""
    rows = per_class[(per_class["epoch"] == epoch) & (per_class["split"] == "val")]
    table = [
        {
            "class": str(r["class"]),
            "precision": float(r["precision"]),
            "recall": float(r["recall"]),
            "f1": float(r["f1"]),
            "support": int(r["support"]),
        }
        for _, r in rows.iterrows()
    ]
    note = f"{run.run_id}: per-class metrics on val, epoch {epoch}"
    return artifacts.write("per-class", "table", _table_data(table), note)


def history_rows(stage_uri: str) -> list[dict[str, Any]]:
    """Every run folder of the stage as a history row (camtrap.report), newest first."""
    frame = report.history_table(report.stage_run_infos(stage_uri))
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def publish_history(artifacts: RunArtifacts, stage_uri: str) -> UUID:
    """The stage's retrain history: one row per run folder under {output_uri}/{stage}/."""
    rows = history_rows(stage_uri)
    note = f"{len(rows)} runs of stage {artifacts.stage} in {stage_uri}, newest first"
    return artifacts.write("history", "table", _table_data(rows), note)


def publish_links(artifacts: RunArtifacts, run: RunRef, info: dict[str, Any]) -> list[UUID]:
    """Links to the run folder, its best model, metrics/epochs.csv and the plots folder."""
    best = RunFiles.of_run(Path(), info).best_model.name
    links = (
        ("run-folder", run.run_uri, "run folder"),
        ("best-model", storage.join(run.run_uri, best), "best model"),
        ("epochs-csv", storage.join(run.run_uri, runfolder.EPOCHS_CSV), "metrics per epoch"),
        ("plots-folder", storage.join(run.run_uri, runfolder.PLOTS), "plots"),
    )
    return [artifacts.link(what, uri, f"{run.run_id}: {text}") for what, uri, text in links]


def publish_summary(run: RunRef, info: dict[str, Any], run_dir: Path) -> list[UUID | None]:
    """Every end-of-run artifact: the final tables, the summary, the plots, the links and the
    stage's history. The progress bar and tables update the train task's cards."""
    artifacts = RunArtifacts(stage_of(run))
    best = int(info.get("best_epoch") or 0)
    per_class = pd.read_csv(run_dir / runfolder.PER_CLASS_CSV, keep_default_na=False)
    summary = report.summary_markdown(run.run_uri, info, run_dir)
    quality = report.summary_description(run.run_uri, info)
    plots = report.plots_markdown(run.run_uri, run_dir / runfolder.PLOTS)
    return [
        progress(artifacts, run, 1, 1, f"{run.run_id}: {info.get('status', '?')}"),
        epochs_table(artifacts, run, run_dir / runfolder.EPOCHS_CSV),
        per_class_table(artifacts, run, per_class, best),
        artifacts.write("summary", "markdown", summary, quality),
        artifacts.write("plots", "markdown", plots, f"{run.run_id}: plots"),
        *publish_links(artifacts, run, info),
        best_effort("history", lambda: publish_history(artifacts, stage_uri(run))),
    ]
