"""Predict tasks: resolve the model (file, run folder or latest.json), validate the photos'
features CSV and images, predict into {output_uri}/predictions/{run_id}/{fingerprint}.csv, and the
artifact that summarises it.

The data tasks (fetch-features, fetch-images, validate-features) are cached as in train-swin: a
rerun on unchanged data shows them as Cached. The predictions file is named after the model's run
and the data's fingerprint, so the predict task finds the file a previous run wrote and reuses it
instead of computing it again."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

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
        _, meta = library.load(library.local_model_file(uri), device="cpu")
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
        run_id = json.loads(storage.read_text(run_json)).get("run_id")
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
    megadetector: the .json beside it, camtrap-dp: the package folder beside it."""
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
    (camtrap.outputs), each in one write; files already there (same run, data and options) are
    reused."""
    from camtrap import predict as library  # loads torch: here, not at the top (tasks/__init__.py)

    options = (options or PredictOptions()).model_copy(
        update={"input": features.input, "annotations": features.annotations,
                "features_csv": features.features_csv, "detections": features.detections}
    )  # fmt: skip
    target = predictions_uri(output_uri, model, features, tta, calibration)
    extra = predictions_uri(output_uri, model, features, tta, calibration, options.format)
    written = [target] if extra == target else [target, extra]
    ref = PredictionsRef(output_uri=target, rows=features.images, reused=True, tta=tta,
                         calibration=calibration, format=options.format, format_uri=extra,
                         written=written)  # fmt: skip
    with library_logs():
        if all(_written(uri, options.format) for uri in written):
            log.info("%s exists (same run, data and options): reused", written[-1])
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
        net, meta = library.load(local)
        result = library.predict_features(
            net, meta, data, model.model_uri, tta=tta, calibration=calibration,
            model_sha256=file_sha256(local),
        )  # fmt: skip
        csv_options = options.model_copy(update={"format": "csv"})
        written = library.write_outputs(result, target, csv_options, Path(features.root))
        if extra != target:
            written += library.write_outputs(result, extra, options, Path(features.root))
        for uri in written:
            log.info("predictions written to %s", uri)
    return ref.model_copy(update={"reused": False, "rows": len(result.frame), "written": written})


def _crops(threshold: float | None, margin: float | None, mode: str):  # noqa: ANN202 - library.Crops
    """The library's crop settings of a ModelRef's fields (None: whole frames)."""
    if threshold is None or margin is None or mode == "none":
        return None
    from camtrap.predict import Crops

    return Crops(threshold, margin, mode)


def _written(uri: str, fmt: str) -> bool:
    """A package is there once its descriptor is (written last); a file once it exists."""
    if fmt == "camtrap-dp" and not uri.endswith(".csv"):
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
