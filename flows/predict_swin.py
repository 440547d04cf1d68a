"""Flow `predict-swin`: label new photos with a trained model.

    resolve the model (default: the newest finished run of `stage`: {output_uri}/{stage}/
    latest.json) -> fetch the features CSV and its images -> validate them -> predict
    -> {output_uri}/predictions/{run_id}/{data fingerprint}.csv + a summary artifact

    python -m flows.predict_swin --data s3://camtrap-data/test --out s3://camtrap-runs/runs

runs it in this process (with no Prefect server configured, Prefect starts a temporary one).
Deployed, it is `prefect deployment run predict-swin/part1 --param data_uri=... --param ...`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, Literal

from prefect import flow, get_run_logger

from camtrap.config import (
    EVENT_RULES,
    PREDICT_FORMATS,
    PREDICT_INPUTS,
    TEST_FEATURES_CSV,
    TTA_CHOICES,
    DataConfig,
    PredictOptions,
    predict_options,
)
from camtrap.latest import latest_location
from camtrap.runfolder import check_run_id
from camtrap.storage.mirror import check_data_folder
from flows.local_prefect import run_main
from tasks.data import (
    fetch_detections,
    fetch_features,
    fetch_images,
    fetch_photos,
    resolve_input,
)
from tasks.gpu import gpu_slot
from tasks.predict import predict, report_predictions, resolve_model, validate_features


@flow(name="predict-swin", validate_parameters=True)
def predict_swin(
    data_uri: str,
    output_uri: str,
    model_uri: str | None = None,
    features_csv: str | None = None,
    tta: Literal["none", "hflip"] = "none",
    calibration: bool = True,
    stage: str = "part1",
    input: Literal["auto", "conservision", "folder", "coco", "camtrap-dp"] = "auto",
    annotations: str | None = None,
    format: Literal["csv", "megadetector", "camtrap-dp"] = "csv",
    taxonomy: str | None = None,
    event_gap_s: float | None = None,
    event_rule: Literal["mean", "max-animal"] | None = None,
    deployments: str | None = None,
    utc_offset: str | None = None,
    allow_http: bool = False,
    detections: str | None = None,
) -> str:
    """Class probabilities for every photo at `data_uri` (`input`: the features CSV
    `features_csv`, every image under it, the COCO file `annotations` or a Camtrap DP package;
    auto: the features CSV when named or there, else a package, else the folder), written to
    {output_uri}/predictions/{run_id}/{data fingerprint}.csv in the submission format, and for
    `format` megadetector / camtrap-dp that file (.json) or package (-camtrap-dp/) beside it. The
    model: `model_uri` (a model file, a run folder or a latest.json), by default the newest
    finished run of `stage` in output_uri. Returns the URI of `format`'s output."""
    logger = get_run_logger()
    check_run_id(stage)  # it becomes a path
    options = predict_options(
        input="conservision" if input == "auto" and features_csv else input,
        features_csv=features_csv or TEST_FEATURES_CSV, annotations=annotations, format=format,
        taxonomy=taxonomy, event_gap_s=event_gap_s, event_rule=event_rule,
        deployments=deployments, utc_offset=utc_offset, allow_http=allow_http,
        detections=detections,
    )  # fmt: skip
    model = resolve_model(model_uri or latest_location(output_uri, stage))
    options = options.model_copy(update={"input": resolve_input(data_uri, options)})
    check_format(options)
    if options.input == "conservision":
        snapshot = fetch_features(data_uri, options.features_csv)
        data = DataConfig(format="conservision", features_csv=options.features_csv)
        snapshot = fetch_images(snapshot, data).model_copy(update={"input": "conservision"})
    else:
        snapshot = fetch_photos(data_uri, options)
    if options.detections:  # a model trained on crops: the photos' MegaDetector output
        snapshot = fetch_detections(snapshot, options.detections)
    features = validate_features(
        snapshot, options, model.image_size, model.max_image_bytes, model.max_image_pixels,
        model.crop_threshold, model.crop_margin, model.crop,
    )  # fmt: skip
    logger.info("%d photos (data %s), model %s", features.images, features.fingerprint[:12],
                model.model_uri)  # fmt: skip
    with gpu_slot():  # one user of the GPU at a time, training runs included
        predictions = predict(model, features, output_uri, tta, calibration, options)
    report_predictions(predictions, model)
    return predictions.format_uri or predictions.output_uri


def check_format(options: PredictOptions) -> None:
    """A Camtrap DP package out needs one in, or the deployments of a new one: refused before
    any photo is fetched."""
    if options.format == "camtrap-dp" and options.input != "camtrap-dp" and not options.deployments:
        from camtrap.outputs import not_a_package

        raise not_a_package(f"{options.input} photos")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.predict_swin", description=__doc__)
    parser.add_argument("--data", required=True, help="data URI: s3://bucket/prefix or a folder")
    parser.add_argument(
        "--out", required=True, help="output URI: predictions go to OUT/predictions/RUN_ID/"
    )
    parser.add_argument(
        "--model", help="model file, run folder or latest.json (default OUT/STAGE/latest.json)"
    )
    parser.add_argument("--features", help=f"features CSV in --data (default {TEST_FEATURES_CSV})")
    parser.add_argument("--input", default="auto", choices=PREDICT_INPUTS)
    parser.add_argument("--annotations", help="the COCO Camera Traps JSON in --data")
    parser.add_argument("--format", default="csv", choices=PREDICT_FORMATS)
    parser.add_argument("--taxonomy", help="CSV class,scientificName (Camtrap DP output)")
    parser.add_argument("--event-gap-s", type=float, help="default: the model's run's")
    parser.add_argument("--event-rule", choices=EVENT_RULES, help="default: the model's run's")
    parser.add_argument("--deployments", help="deployments CSV: a new Camtrap DP package")
    parser.add_argument("--utc-offset", help="e.g. +02:00, for capture times without one")
    parser.add_argument("--allow-http", action="store_true", help="fetch http(s) media URLs")
    parser.add_argument("--detections", help="MegaDetector output in --data (crop models)")
    parser.add_argument("--tta", default="none", choices=TTA_CHOICES)
    parser.add_argument("--no-calibration", action="store_true")
    parser.add_argument("--stage", default="part1", help="whose latest.json (without --model)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    def prepare() -> Callable[[], Any]:
        check_run_id(args.stage)
        check_data_folder(args.data)  # a mistyped local folder: one line, before any server
        return lambda: predict_swin(
            args.data, args.out, args.model, args.features, args.tta, not args.no_calibration,
            args.stage, args.input, args.annotations, args.format, args.taxonomy,
            args.event_gap_s, args.event_rule, args.deployments, args.utc_offset,
            args.allow_http, args.detections, return_state=True,
        )  # fmt: skip

    return run_main(prepare)


if __name__ == "__main__":
    sys.exit(main())
