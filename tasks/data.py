"""Data tasks: fetch the CSVs (or a features CSV alone, for predict-swin), fetch the images,
validate and split, cache the decoded images.

Each is cached on its inputs, its source and the data's state at the URI (S3 ETags), so a rerun
on unchanged data shows them as Cached and goes straight to training. Each retries 3 times with
exponential backoff and jitter, except on bad data (DataError), which no retry can fix."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from camtrap import imagecache, runfolder, storage
from camtrap.config import DataConfig, PredictOptions, RunConfig
from camtrap.dataset import fetch
from camtrap.storage import mirror
from tasks.logs import library_logs
from tasks.policies import CODE_AND_INPUTS, IO_TASK, RemoteState
from tasks.refs import DataSnapshot, ImageCacheRef, RunRef
from tasks.runs import data_cache_dir, holding_lease, run_ref

log = logging.getLogger("camtrap")


# The state functions below feed RemoteState cache keys (camtrap.storage.mirror.fetch_state: a
# local folder's sizes and modification times; S3's ETags, or no key while the local copy is
# stale).
def _metadata_state(inputs: dict[str, Any]) -> str | None:
    uri = inputs["data_uri"]
    return mirror.fetch_state(uri, fetch.state_names(uri, inputs["data"]), data_cache_dir(uri))


def _detections_state(inputs: dict[str, Any]) -> str | None:
    uri = inputs["snapshot"].data_uri
    return mirror.fetch_state(uri, [inputs["detections"]], data_cache_dir(uri))


def _images_state(inputs: dict[str, Any]) -> str | None:
    snapshot: DataSnapshot = inputs["snapshot"]
    if not storage.is_remote(snapshot.data_uri):
        names = fetch.listed_images(Path(snapshot.root), snapshot.data_uri, inputs["data"])
        return mirror.fetch_state(snapshot.data_uri, names, Path(snapshot.root))
    return mirror.fetch_state(snapshot.data_uri, None, data_cache_dir(snapshot.data_uri))


@task(
    name="fetch-metadata",
    cache_policy=RemoteState(state_fn=_metadata_state),
    timeout_seconds=600,  # the CSVs, the COCO JSON or the Camtrap DP tables
    **IO_TASK,
)
def fetch_metadata(data_uri: str, data: DataConfig) -> DataSnapshot:
    """The files that describe the dataset (in data.format, or the one found there) into the
    local cache (ETag-keyed); a local folder is used in place."""
    with library_logs():
        report = fetch.fetch_metadata(data_uri, data_cache_dir(data_uri), data)
    return DataSnapshot(data_uri=data_uri, root=str(report.root), csv_digest=report.digest)


@task(
    name="fetch-detections",
    cache_policy=RemoteState(state_fn=_detections_state),
    timeout_seconds=600,  # one JSON: MegaDetector's output for a large dataset is 100s of MB
    **IO_TASK,
)
def fetch_detections(snapshot: DataSnapshot, detections: str) -> DataSnapshot:
    """The MegaDetector output the crops come from (data.detections, --detections) beside the
    metadata, ETag-keyed; its digest goes into the snapshot, so a changed file is new data."""
    with library_logs():
        report = fetch.fetch_detections(snapshot.data_uri, data_cache_dir(snapshot.data_uri),
                                        detections)  # fmt: skip
    return snapshot.model_copy(update={"detections_digest": report.digest})


def _features_csv_state(inputs: dict[str, Any]) -> str | None:
    uri = inputs["data_uri"]
    return mirror.fetch_state(uri, [inputs["features_csv"]], data_cache_dir(uri))


@task(
    name="fetch-features",
    cache_policy=RemoteState(state_fn=_features_csv_state),
    timeout_seconds=600,  # one CSV
    **IO_TASK,
)
def fetch_features(data_uri: str, features_csv: str) -> DataSnapshot:
    """A features CSV alone (photos to label: no labels CSV) into the local cache, as
    fetch_metadata does; its images follow with fetch_images(snapshot, DataConfig(
    format="conservision", features_csv=features_csv))."""
    with library_logs():
        report = mirror.fetch_files(data_uri, [features_csv], data_cache_dir(data_uri))
    if report.missing:
        raise storage.StorageNotFound(
            f"{storage.join(data_uri, features_csv)} does not exist — fix: put {features_csv} "
            f"(columns id, filepath, optional site) at {data_uri}, or pass features_csv"
        )
    return DataSnapshot(data_uri=data_uri, root=str(report.root), csv_digest=report.digest)


def _photos_state(inputs: dict[str, Any]) -> str | None:
    uri = inputs["data_uri"]
    return mirror.fetch_state(uri, None, data_cache_dir(uri))


@task(name="resolve-input", cache_policy=NO_CACHE, timeout_seconds=600, **IO_TASK)
def resolve_input(data_uri: str, options: PredictOptions) -> str:
    """How the photos at `data_uri` are listed: `options.input`, or for auto the features CSV
    if there is one, else a Camtrap DP package, the COCO file, or every image under it."""
    from camtrap.dataset.photos import resolve_input as resolve

    with library_logs():
        return resolve(data_uri, options.input, options.features_csv, options.annotations)


@task(
    name="fetch-photos",
    cache_policy=RemoteState(state_fn=_photos_state),
    timeout_seconds=4 * 3600,  # a first fetch of a large card or package over a slow link
    **IO_TASK,
)
def fetch_photos(data_uri: str, options: PredictOptions) -> DataSnapshot:
    """The photos of a folder, a COCO file or a Camtrap DP package (options.input, resolved)
    and what lists them, into the local cache (ETag-keyed); a local folder is used in place."""
    with library_logs():
        root = fetch.fetch_photos(data_uri, data_cache_dir(data_uri), options)
        state = mirror.fetch_state(data_uri, None, data_cache_dir(data_uri)) or ""
    return DataSnapshot(data_uri=data_uri, root=str(root), csv_digest=state,
                        images_digest=state, input=options.input)  # fmt: skip


@task(
    name="fetch-images",
    cache_policy=RemoteState(state_fn=_images_state),
    timeout_seconds=4 * 3600,  # a first fetch of a large dataset over a slow link
    **IO_TASK,
)
def fetch_images(snapshot: DataSnapshot, data: DataConfig) -> DataSnapshot:
    """Every image the dataset lists (train_features.csv, the COCO JSON, the Camtrap DP media
    table, the class folders), in parallel, into the local cache; only files whose ETag changed
    since the last fetch are downloaded. Missing ones are left for validation to report (with
    their line or record)."""
    with library_logs():
        names = fetch.listed_images(Path(snapshot.root), snapshot.data_uri, data)
        report = mirror.fetch_files(snapshot.data_uri, names, snapshot.root)
        log.info(
            "images from %s: %d downloaded, %d unchanged in the cache, %d not found",
            snapshot.data_uri, len(report.downloaded), len(report.reused), len(report.missing),
        )  # fmt: skip
    return snapshot.model_copy(update={"images_digest": report.digest})


@task(
    name="validate-and-split",
    cache_policy=CODE_AND_INPUTS,
    timeout_seconds=2 * 3600,  # decodes every image not yet in the image cache
    **IO_TASK,
)
def validate_and_split(
    snapshot: DataSnapshot,
    config: RunConfig,
    output_uri: str,
    run_id: str | None = None,
    force: bool = False,
) -> RunRef:
    """Validate the dataset (every problem at once: DataError, not retried), derive the run id
    (config + data fingerprint), and start the run folder in output_uri with split.csv and a
    `running` run.json. A finished run is left untouched."""
    from camtrap import stages  # loads torch: here, not at the top (tasks/__init__.py)

    with library_logs():
        if config.data.cache_mirror:
            pull_image_cache(config, output_uri)
        data = stages.validate(config, Path(snapshot.root))
        run_id = runfolder.resolve_run_id(config, data.fingerprint, run_id, force)
        run = run_ref(output_uri, config.output.stage, run_id)
        if remote_status(run, config) == "up-to-date":
            return run
        with holding_lease(run):
            runfolder.reconcile(run.run_uri, run.local_dir)
            stages.prepare(config, data, Path(run.local_dir))
            runfolder.push(run.local_dir, run.run_uri)
    return run


def remote_status(run: RunRef, config: RunConfig) -> str:
    """`up-to-date` (finished with at least config's epochs), `running` (started, or finished
    with fewer epochs: it is extended), or `new` (no split.csv in output_uri yet). A run started
    with another config (an explicit run id reused) is a ConfigError."""
    status = runfolder.remote_status(run.run_uri)
    if status == "new":
        return status
    info = runfolder.remote_run_json(run.run_uri)
    if "config" in info:
        runfolder.refuse_changes(info["config"], config.model_dump(mode="json"), run.run_uri)
    return "up-to-date" if runfolder.up_to_date(info, config.train.epochs) else "running"


@task(name="run-status", cache_policy=NO_CACHE, timeout_seconds=300, **IO_TASK)
def run_status(run: RunRef, config: RunConfig) -> str:
    """The run's status in output_uri now (the split task's result may come from the cache)."""
    return remote_status(run, config)


@task(name="cache-images", cache_policy=NO_CACHE, timeout_seconds=2 * 3600, **IO_TASK)
def cache_images(
    snapshot: DataSnapshot, config: RunConfig, run: RunRef, output_uri: str
) -> ImageCacheRef:
    """Every image of the run decoded once into the local image cache (rows validation decoded
    are copied, not decoded again), checked against its sha256. Not cached by Prefect:
    reusing an intact cache is this task's fast path. With data.cache_mirror the pack is also
    kept under {output_uri}/cache/, for workers on other machines (see `pull_image_cache`)."""
    from camtrap import stages  # loads torch: here, not at the top (tasks/__init__.py)

    with library_logs():
        report = stages.cache_images(config, Path(run.local_dir), Path(snapshot.root))
        if config.data.cache_mirror:
            _push(report.pack, mirror_uri(config, output_uri))
    return ImageCacheRef(
        manifest=str(report.pack.manifest_path),
        images=len(report.pack),
        decoded=report.decoded,
        copied=report.copied,
        reused=report.reused,
    )


def mirror_uri(config: RunConfig, output_uri: str) -> str:
    """{output_uri}/cache/{store}: packs as in the local store, and `latest`, the key of the
    newest pack pushed."""
    return storage.join(output_uri, "cache", imagecache.store_dir(config.data.image_size).name)


def pull_image_cache(config: RunConfig, output_uri: str) -> None:
    """Before validation on a machine whose cache lacks it: download the newest mirrored pack,
    so validation and the cache step find its images decoded already."""
    mirror = mirror_uri(config, output_uri)
    if not storage.exists(storage.join(mirror, "latest")):
        return
    key = storage.read_text(storage.join(mirror, "latest")).strip()
    store = imagecache.store_dir(config.data.image_size)
    if (store / f"{key}.json").exists():
        return
    manifest = storage.read_text(storage.join(mirror, f"{key}.json"))
    local = imagecache.new_download_path(store)
    storage.download_file(storage.join(mirror, f"{key}.u8"), local)
    if imagecache.adopt(store, key, manifest, local) is None:
        log.warning("the image cache at %s/%s does not match its manifest; not used", mirror, key)
    else:
        log.info("image cache %s downloaded from %s", key, mirror)


def _push(pack: imagecache.Pack, mirror: str) -> None:
    """Upload the pack (rows, manifest, then the `latest` pointer) unless the mirror has it;
    the pack it replaces as `latest` is deleted."""
    key = pack.path.stem
    latest = storage.join(mirror, "latest")
    previous = storage.read_text(latest).strip() if storage.exists(latest) else None
    if previous == key:
        return
    storage.upload_file(pack.path, storage.join(mirror, f"{key}.u8"))
    storage.upload_file(pack.manifest_path, storage.join(mirror, f"{key}.json"))
    storage.write_text(latest, key)
    if previous:
        storage.remove(storage.join(mirror, f"{previous}.json"))
        storage.remove(storage.join(mirror, f"{previous}.u8"))
    log.info("image cache mirrored to %s/%s", mirror, key)
