"""Predict tasks: resolve the model (file, run folder or latest.json), validate the photos'
features CSV and images, predict into {output_uri}/predictions/{run_id}/{fingerprint}.csv, and the
artifact that summarises it.

The data tasks (fetch-features, fetch-images, validate-features) are cached as in train-swin: a
rerun on unchanged data shows them as Cached. The predictions file is named after the model's run
and the data's fingerprint (readable, and the same whatever the model's epoch), and beside it
`{name}.record.json` says which model file (its sha256) wrote it, from which data, with which
options and files: the predict task reuses the file a previous run wrote only when the record
names this very model file. A run extended after a predict (train.epochs grown: the same run id
and file name, a new best model) is predicted again, its predictions replacing the old ones."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from camtrap import report, runfolder, storage
from camtrap.config import PredictOptions
from camtrap.dataset import ImageLimits
from camtrap.errors import StorageError
from camtrap.latest import resolve_model_uri
from camtrap.redact import redact_uri
from camtrap.storage.files import file_sha256
from tasks.artifacts import artifact_key
from tasks.logs import library_logs
from tasks.policies import CODE_AND_INPUTS, IO_TASK
from tasks.refs import DataSnapshot, FeaturesRef, ModelRef, PredictionsRef

log = logging.getLogger("camtrap")

PREDICT_TIMEOUT_S = 4 * 3600  # tens of thousands of photos through Swin-T, with a cold cache


@task(name="resolve-model", cache_policy=NO_CACHE, timeout_seconds=1800, **IO_TASK)
def resolve_model(model_uri: str) -> ModelRef:
    """The model file behind `model_uri` (latest.json moves: never cached), fetched to this
    machine (kept while its ETag is the same) and read for its image size and temperature."""
    from camtrap import predict as library  # loads torch: here, not at the top (tasks/__init__.py)

    with library_logs():
        uri = resolve_model_uri(model_uri)
        local = library.local_model_file(uri)
        _, meta = library.load(local, device="cpu")
        limits = library.image_limits(meta)
        ref = ModelRef(
            model_uri=uri,
            run_id=_run_id_of(uri),
            file_name=uri.rstrip("/").rsplit("/", 1)[-1],
            image_size=meta.image_size,
            max_image_bytes=limits.max_bytes,
            max_image_pixels=limits.max_pixels,
            epoch=meta.epoch,
            temperature=meta.temperature,
            model_sha256=file_sha256(local),
        )
        crops = library.model_crops(meta)
        if crops is not None:
            ref = ref.model_copy(update={
                "crop_threshold": crops.threshold, "crop_margin": crops.margin, "crop": crops.mode,
            })  # fmt: skip
        log.info("model %s: run %s, epoch %s, temperature %.4g", redact_uri(uri), ref.run_id,
                 ref.epoch, ref.temperature)  # fmt: skip
    return ref


def _run_id_of(model_uri: str) -> str:
    """The run id in the run.json beside the model file, else the file's stem."""
    folder, name = model_uri.rstrip("/").rsplit("/", 1)
    run_json = storage.join(folder, runfolder.RUN_JSON)
    if storage.exists(run_json):
        run_id = runfolder.parse_run_json(storage.read_bytes(run_json), run_json).get("run_id")
        if run_id:
            return runfolder.check_run_id(str(run_id))
    return runfolder.check_run_id(Path(name).stem)


@task(
    name="validate-features",
    cache_policy=CODE_AND_INPUTS,
    timeout_seconds=2 * 3600,  # decodes every image not yet in the image cache
    **IO_TASK,
)
def validate_features(
    snapshot: DataSnapshot,
    options: PredictOptions,
    image_size: int,
    max_image_bytes: int,
    max_image_pixels: int,
    crop_threshold: float | None = None,
    crop_margin: float | None = None,
    crop: str = "none",
) -> FeaturesRef:
    """The photos (a features CSV, a folder, a COCO file or a Camtrap DP package: the
    snapshot's input) checked as for training (every problem at once: DataError, not retried);
    images new to the image cache are decoded into it here."""
    from camtrap import predict as library  # loads torch: here, not at the top (tasks/__init__.py)

    limits = ImageLimits(max_image_bytes, max_image_pixels)
    options = options.model_copy(update={"input": snapshot.input or "conservision"})
    with library_logs():
        data = library.validate_photos(Path(snapshot.root), options, image_size, limits,
                                       crops=_crops(crop_threshold, crop_margin, crop))  # fmt: skip
    return FeaturesRef(
        root=snapshot.root,
        features_csv=options.features_csv,
        fingerprint=data.fingerprint,
        images=len(data.frame),
        input=options.input,
        annotations=options.annotations,
        detections=options.detections,
        failed=len(data.failed),
    )


def predictions_uri(
    output_uri: str, model: ModelRef, features: FeaturesRef, tta: str, calibration: bool,
    fmt: str = "csv",
) -> str:  # fmt: skip
    """{output_uri}/predictions/{run_id}/{fingerprint}.csv (see library.prediction_name); `fmt`
    megadetector: the .json beside it, camtrap-dp: the package folder beside it. Not named after
    the model's content (a sha256 would make names unreadable, and every epoch's a new file):
    whether a file there is this model's is its record's say (`reusable`)."""
    from camtrap import predict as library  # loads torch: here, not at the top (tasks/__init__.py)

    name = library.prediction_name(features.fingerprint, tta, calibration, model.file_name, fmt)
    return storage.join(output_uri, "predictions", model.run_id, name)


@task(name="predict", cache_policy=NO_CACHE, timeout_seconds=PREDICT_TIMEOUT_S, **IO_TASK)
def predict(
    model: ModelRef,
    features: FeaturesRef,
    output_uri: str,
    tta: str,
    calibration: bool,
    options: PredictOptions | None = None,
) -> PredictionsRef:
    """The model's probabilities for every photo: the submission CSV at `predictions_uri` (the
    record the report reads) and, for another `options.format`, that file or package beside it
    (camtrap.outputs), each in one write; files already there are reused when their record says
    this model file (its sha256) wrote them from this data with these options."""
    from camtrap import predict as library  # loads torch: here, not at the top (tasks/__init__.py)

    options = (options or PredictOptions()).model_copy(
        update={"input": features.input, "annotations": features.annotations,
                "features_csv": features.features_csv, "detections": features.detections}
    )  # fmt: skip
    target = predictions_uri(output_uri, model, features, tta, calibration)
    extra = predictions_uri(output_uri, model, features, tta, calibration, options.format)
    wanted = [target] if extra == target else [target, extra]
    ref = PredictionsRef(output_uri=target, rows=features.images, reused=True, tta=tta,
                         calibration=calibration, format=options.format, format_uri=extra,
                         written=wanted)  # fmt: skip
    with library_logs():
        record = read_record(target)
        if reusable(record, model, features, tta, calibration, wanted):
            log.info("%s exists, from this model file (sha256 %s), data and options: reused",
                     wanted[-1], model.model_sha256[:12])  # fmt: skip
            return ref
        limits = ImageLimits(model.max_image_bytes, model.max_image_pixels)
        crops = _crops(model.crop_threshold, model.crop_margin, model.crop)
        data = library.validate_photos(Path(features.root), options, model.image_size, limits,
                                       crops=crops)  # fmt: skip
        if data.fingerprint != features.fingerprint:
            raise StorageError(
                f"the photos in {features.root} changed since they were validated — fix: run "
                "the flow again"
            )
        local = library.local_model_file(model.model_uri)
        _check_same_model(local, model)
        net, meta = library.load(local)
        result = library.predict_features(
            net, meta, data, model.model_uri, tta=tta, calibration=calibration,
            model_sha256=model.model_sha256,
        )  # fmt: skip
        storage.remove(record_uri(target))  # no record vouches for files half rewritten
        csv_options = options.model_copy(update={"format": "csv"})
        written = library.write_outputs(result, target, csv_options, Path(features.root))
        if extra != target:
            written += library.write_outputs(result, extra, options, Path(features.root))
        for uri in written:
            log.info("predictions written to %s", uri)
        write_record(target, model, features, tta, calibration, written, record)
    return ref.model_copy(update={"reused": False, "rows": len(result.frame), "written": written})


def _check_same_model(local: Path, model: ModelRef) -> None:
    """The model file is still the one resolve-model read (its image size, crops, sha256)."""
    if file_sha256(local) != model.model_sha256:
        raise StorageError(
            f"the model file {redact_uri(model.model_uri)} changed since resolve-model read it "
            "(its run was extended meanwhile?) — fix: run the flow again"
        )


# --- the record beside the predictions: which model file wrote them ----------------------------


class PredictionsRecord(BaseModel):
    """`{name}.record.json`: what the predictions at `{name}.csv` (and the files beside it) were
    computed from. Written after them, removed before they are rewritten."""

    model_config = ConfigDict(extra="forbid")

    model_uri: str
    model_sha256: str
    epoch: int | None
    fingerprint: str
    tta: str
    calibration: bool
    written: list[str]  # every file: the CSV, the format's output, the events sidecars


def record_uri(target: str) -> str:
    """`{fp}.csv` -> `{fp}.record.json`."""
    return target.removesuffix(".csv") + ".record.json"


def read_record(target: str) -> PredictionsRecord | None:
    """The record of the predictions at `target`; None when there is none (written before
    records were, or removed while they are rewritten) or it cannot be read."""
    uri = record_uri(target)
    if not storage.exists(uri):
        return None
    try:
        return PredictionsRecord.model_validate_json(storage.read_text(uri))
    except ValueError:  # a record from another version, or damaged: compute again
        return None


def reusable(record: PredictionsRecord | None, model: ModelRef, features: FeaturesRef, tta: str,
             calibration: bool, wanted: list[str]) -> bool:  # fmt: skip
    """Whether `record` (read_record) says this model file (its sha256) wrote every file of
    `wanted` from this data with these options, and they are all there."""
    if record is None:
        return False
    if record.model_sha256 != model.model_sha256:
        log.info("%s was written by another model file (sha256 %s, now %s): predicting again",
                 wanted[0], record.model_sha256[:12], model.model_sha256[:12])  # fmt: skip
        return False
    listed = all(uri in record.written and _written(uri) for uri in wanted)
    return _same_source(record, model, features, tta, calibration) and listed


def _same_source(record: PredictionsRecord, model: ModelRef, features: FeaturesRef, tta: str,
                 calibration: bool) -> bool:  # fmt: skip
    return (record.model_sha256, record.fingerprint, record.tta, record.calibration) == (
        model.model_sha256, features.fingerprint, tta, calibration)  # fmt: skip


def write_record(target: str, model: ModelRef, features: FeaturesRef, tta: str, calibration: bool,
                 written: list[str], earlier: PredictionsRecord | None = None) -> None:  # fmt: skip
    """The record of `written` beside `target`; joined with the files the `earlier` record
    lists when the same model file wrote them from the same data (one format, then another)."""
    if earlier is not None and _same_source(earlier, model, features, tta, calibration):
        written = list(dict.fromkeys([*earlier.written, *written]))
    record = PredictionsRecord(
        model_uri=model.model_uri, model_sha256=model.model_sha256, epoch=model.epoch,
        fingerprint=features.fingerprint, tta=tta, calibration=calibration, written=written,
    )  # fmt: skip
    storage.write_text(record_uri(target), record.model_dump_json(indent=2) + "\n")


def _crops(threshold: float | None, margin: float | None, mode: str):  # noqa: ANN202 - library.Crops
    """The library's crop settings of a ModelRef's fields (None: whole frames)."""
    if threshold is None or margin is None or mode == "none":
        return None
    from camtrap.predict import Crops

    return Crops(threshold, margin, mode)


def _written(uri: str) -> bool:
    """A package (library.OUTPUT_SUFFIX) is there once its descriptor is (written last); a file
    once it exists."""
    if uri.endswith("-camtrap-dp"):
        return storage.exists(storage.join(uri, "datapackage.json"))
    return storage.exists(uri)


@task(name="report-predictions", cache_policy=NO_CACHE, timeout_seconds=600, **IO_TASK)
def report_predictions(predictions: PredictionsRef, model: ModelRef) -> str:
    """A markdown artifact: where the predictions are, from which model, how many photos each
    class is the top-1 prediction for, and the least confident photos."""
    frame = pd.read_csv(
        io.BytesIO(storage.read_bytes(predictions.output_uri)), dtype={"id": str},
        keep_default_na=False,
    )  # fmt: skip
    if "failure" in frame.columns:  # photos that could not be read: no probabilities to show
        frame = frame[frame["failure"] == ""].drop(columns="failure").reset_index(drop=True)
        frame = frame.astype({c: float for c in frame.columns if c != "id"})
    markdown = report.predictions_markdown(
        frame,
        output_uri=predictions.output_uri,
        reused=predictions.reused,
        model_uri=model.model_uri,
        run_id=model.run_id,
        epoch=model.epoch,
        temperature=model.temperature,
        tta=predictions.tta,
        calibration=predictions.calibration,
    )
    create_markdown_artifact(
        markdown=markdown,
        key=artifact_key(model.run_id, "predictions"),
        description=f"{model.run_id}: predictions for {len(frame)} photos",
    )
    return predictions.output_uri
