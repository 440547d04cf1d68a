"""The small models the tasks exchange: URIs, paths and numbers, never DataFrames, tensors, models
or clients (Prefect hashes and stores them as task inputs and results)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSnapshot(_Model):
    """A dataset as fetched: its URI, the local folder holding the copy, and digests of what
    was fetched (S3 ETags), so downstream cache keys change exactly when the data does."""

    data_uri: str
    root: str  # local folder: the CSVs, and the images once fetch_images ran
    csv_digest: str
    images_digest: str = ""
    detections_digest: str = ""  # the MegaDetector output's (data.detections, --detections)
    input: str = ""  # photos to label: how they are listed (PredictOptions.input, resolved)


class RunRef(_Model):
    """One run's identity and places: the output folder and its local working copy."""

    run_id: str
    run_uri: str  # {output_uri}/{stage}/{run_id}
    local_dir: str  # == run_uri for a local output_uri
    lease_uri: str  # {output_uri}/{stage}/.leases/{run_id}.json: one writer per run


class ImageCacheRef(_Model):
    """A run's decoded images on this machine: the pack's manifest and how it was made."""

    manifest: str  # {CAMTRAP_CACHE_DIR}/images/.../{key}.json
    images: int
    decoded: int  # images decoded by this task (validation decodes new images first)
    copied: int  # rows copied from other packs
    reused: bool  # the pack was already there and intact


class TrainSummary(_Model):
    best_epoch: int
    best_value: float
    epochs_run: int
    resumed_from: int


class ValMetrics(_Model):
    """The best model's metrics on the val split."""

    metrics: dict[str, float]


class ModelRef(_Model):
    """The model file a prediction uses, and what the flow needs to know about it."""

    model_uri: str  # the file itself (resolved from a run folder or latest.json)
    run_id: str  # its run (the predictions folder); the file's stem outside a run folder
    file_name: str
    image_size: int
    max_image_bytes: int
    max_image_pixels: int
    epoch: int | None
    temperature: float
    # of the file's bytes as resolve-model fetched them: what a reused predictions file must have
    # been computed from (its name is the run's and the data's, which a rewritten model keeps)
    model_sha256: str
    # a model trained on crops (data.crop best or all): its run's threshold, margin and crop;
    # None: frames
    crop_threshold: float | None = None
    crop_margin: float | None = None
    crop: str = "none"


class FeaturesRef(_Model):
    """A validated features CSV and its images, on this machine."""

    root: str
    features_csv: str
    fingerprint: str
    images: int
    input: str = "conservision"  # how the photos are listed (PredictOptions.input, resolved)
    annotations: str | None = None
    detections: str | None = None  # the MegaDetector output the crops came from
    failed: int = 0  # photos that could not be read: listed in the outputs


class PredictionsRef(_Model):
    output_uri: str
    rows: int
    reused: bool  # the file was there already (same model file's sha256, data and options)
    tta: str
    calibration: bool
    format: str = "csv"
    format_uri: str = ""  # the chosen format's file or package (output_uri itself for csv)
    # every file written: the submission CSV (output_uri, which the report reads), the chosen
    # format's and the events sidecars
    written: list[str] = []
