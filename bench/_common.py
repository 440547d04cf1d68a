"""Helpers shared by the benchmarks in bench/: timing, a generated Conser-vision dataset of
photo-like JPEGs, peak memory, a child process to measure a stage alone, and the report
(a table, then one JSON object as the last line).

Not a benchmark itself. Every bench imports it as `from _common import ...`: run the benches as
`.venv/bin/python bench/NAME.py` (the script's folder is then on sys.path).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch.utils.data
from PIL import Image

from camtrap import runfolder, stages
from camtrap.config import FEATURES_CSV, LABELS_CSV
from camtrap.demo import SEED_CLASSES
from camtrap.images import crop_pixels, open_rgb

# The competition's two main frame sizes (width, height); the demo's 360x240 is left out.
FRAME_SIZES: tuple[tuple[int, int], ...] = ((960, 540), (640, 360))
JPEG_QUALITY = 85
GRAIN_SIGMA = 5  # sensor grain (pixel values): with it a 960x540 frame is a ~100 KB JPEG
IMAGE_DIR = "train_features"
MIB = 1024**2


def cores() -> int:
    """The cores this process may run on (what DataLoader workers and threads share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- timing --------------------------------------------------------------------------------


class Timer:
    """`with Timer() as t: ...` then `t.seconds` (perf_counter wall time)."""

    seconds: float = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


@contextmanager
def temp_dir(prefix: str, keep: str | None = None) -> Iterator[Path]:
    """A scratch folder, removed afterwards; or the folder `keep` (created, kept) if given."""
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def cold_cache_dir(base: Path) -> Path:
    """Point CAMTRAP_CACHE_DIR at an empty folder under `base`: the image cache starts cold and
    ~/.cache is never touched. Child processes inherit it."""
    path = base / "camtrap-cache"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["CAMTRAP_CACHE_DIR"] = str(path)
    return path


# --- a generated dataset --------------------------------------------------------------------


def _grain(seed: int) -> np.ndarray:
    """A grain field larger than any frame; each image takes a crop at a random offset (fresh
    gaussian noise per 960x540 frame would cost more than its JPEG encode)."""
    rng = np.random.default_rng([seed, 1 << 20])
    return np.rint(rng.normal(0.0, GRAIN_SIGMA, size=(600, 1024, 1))).astype(np.int16)


_GRAIN: dict[int, np.ndarray] = {}


def photo_jpeg(seed: int, index: int, size: tuple[int, int]) -> bytes:
    """A photo-like frame as JPEG bytes (quality 85): a vertical colour gradient, soft colour
    blotches, and sensor grain. Unique per (seed, index); same arguments, same bytes."""
    grain = _GRAIN.setdefault(seed, _grain(seed))
    rng = np.random.default_rng([seed, index])
    width, height = size
    top, bottom = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    t = np.linspace(0.0, 1.0, height)[:, None]
    rows = (top * (1 - t) + bottom * t).astype(np.uint8)
    base = Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows[:, None], (height, width, 3))))
    small = rng.integers(0, 256, size=(height // 24 + 1, width // 24 + 1, 3), dtype=np.uint8)
    blotches = Image.fromarray(small).resize(size, Image.BICUBIC)
    pixels = np.asarray(Image.blend(base, blotches, 0.25)).astype(np.int16)
    y0 = int(rng.integers(0, grain.shape[0] - height + 1))
    x0 = int(rng.integers(0, grain.shape[1] - width + 1))
    pixels += grain[y0 : y0 + height, x0 : x0 + width]
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=JPEG_QUALITY
    )
    return buffer.getvalue()


def _row(
    seed: int,
    index: int,
    n_sites: int,
    classes: Sequence[str],
    sizes: Sequence[tuple[int, int]],
) -> dict[str, Any]:
    """Image `index`'s id, size, site and class: a function of (seed, index) alone, so a dataset
    grown from n to n + k images keeps its first n rows."""
    rng = np.random.default_rng([seed, index, 7])
    return {
        "id": f"ZJ{index:06d}",
        "size": sizes[int(rng.integers(len(sizes)))],
        "site": f"S{int(rng.integers(n_sites)) + 1:04d}",
        "label": int(rng.integers(len(classes))),
    }


def _write_one(job: tuple[str, int, int, tuple[int, int]]) -> int:
    path, seed, index, size = job
    data = photo_jpeg(seed, index, size)
    Path(path).write_bytes(data)
    return len(data)


def write_dataset(
    root: Path,
    n: int,
    *,
    start: int = 0,
    n_sites: int = 148,
    seed: int = 0,
    classes: Sequence[str] = SEED_CLASSES,
    sizes: Sequence[tuple[int, int]] = FRAME_SIZES,
    workers: int | None = None,
) -> dict[str, float]:
    """Images start..n-1 of a generated dataset under `root` (Conser-vision layout: both CSVs,
    one-hot labels "1.0"/"0.0", train_features/<id>.jpg; frames drawn from `sizes`, half and
    half by default), written by a process pool. The CSVs are rewritten with all n rows, so
    `start=n_old` adds images to an existing dataset. Returns the count and mean size of the
    JPEGs written and the seconds taken."""
    started = time.perf_counter()
    root = Path(root)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rows = [_row(seed, i, n_sites, classes, sizes) for i in range(n)]
    jobs = [
        (str(root / IMAGE_DIR / f"{row['id']}.jpg"), seed, i, row["size"])
        for i, row in enumerate(rows)
        if i >= start
    ]
    workers = workers or cores()
    if workers > 1 and len(jobs) > 16:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            nbytes = pool.map(_write_one, jobs, chunksize=16)
    else:
        nbytes = [_write_one(job) for job in jobs]
    features = ["id,filepath,site"]
    features += [f"{r['id']},{IMAGE_DIR}/{r['id']}.jpg,{r['site']}" for r in rows]
    labels = ["id," + ",".join(classes)]
    for r in rows:
        onehot = ("1.0" if k == r["label"] else "0.0" for k in range(len(classes)))
        labels.append(r["id"] + "," + ",".join(onehot))
    (root / FEATURES_CSV).write_text("\n".join(features) + "\n")
    (root / LABELS_CSV).write_text("\n".join(labels) + "\n")
    return {
        "written": len(jobs),
        "mean_kb": float(np.mean(nbytes)) / 1000 if nbytes else 0.0,
        "seconds": time.perf_counter() - started,
    }


# --- camtrap's data stages ------------------------------------------------------------------


@dataclass
class Stages:
    """One pass of camtrap's data stages: validate -> prepare -> cache_images."""

    data: Any  # camtrap.dataset.LabelledData
    run_dir: Path
    report: Any  # camtrap.imagecache.BuildReport
    validate_s: float
    prepare_s: float
    cache_s: float
    decoded_in_validate: int  # rows of the delta packs this validation wrote

    @property
    def seconds(self) -> float:
        return self.validate_s + self.prepare_s + self.cache_s

    @property
    def decoded(self) -> int:
        """Images decoded by this pass: in validation (delta packs) plus in the pack build."""
        return self.decoded_in_validate + self.report.decoded


def delta_rows(store: Path) -> dict[str, int]:
    """Delta pack manifest name -> its number of rows, for the delta packs in `store` now."""
    if not store.is_dir():
        return {}
    return {p.name: len(json.loads(p.read_text())["ids"]) for p in store.glob("delta-*.json")}


def data_stages(config: Any, data_root: Path, runs_root: Path) -> Stages:
    """camtrap's data stages on a local folder (no fetch), each timed: stages.validate (which
    decodes images the cache has not seen into a delta pack), stages.prepare (split.csv) and
    stages.cache_images (the dataset's pack). The run folder is runs_root/{run id}, the id
    derived from the config and the data as `camtrap run` derives it: unchanged data, same
    folder."""
    from camtrap import imagecache, stages

    store = imagecache.store_dir(config.data.image_size)
    before = delta_rows(store)
    with Timer() as validate:
        data = stages.validate(config, data_root)
    new_deltas = {k: v for k, v in delta_rows(store).items() if k not in before}
    run_dir = Path(runs_root) / runfolder.run_id_for(config, data.fingerprint)
    with Timer() as prepare:
        stages.prepare(config, data, run_dir)
    with Timer() as cache:
        report = stages.cache_images(config, run_dir, data_root)
    return Stages(
        data,
        run_dir,
        report,
        validate.seconds,
        prepare.seconds,
        cache.seconds,
        sum(new_deltas.values()),
    )


def split_items(run_dir: Path, pack: Any, classes: Sequence[str]) -> pd.DataFrame:
    """split.csv with each image's row in `pack` and its class index: what fit.fit takes."""
    items, found = stages.split_items(Path(run_dir), pack)
    assert list(found) == list(classes), (found, classes)
    return items


# --- the seed's data path ---------------------------------------------------------------------


class ReferenceImages(torch.utils.data.Dataset):
    """The seed's dataset: item i = (transform(images.open_rgb(path i)), target i): every image
    decoded, resized and normalised again in every epoch. With `crops` (x, y, w, h, margin or
    None per item, as camtrap.imagecache.CacheEntry.crop), the image is cropped first, as a
    per-epoch crop loader would."""

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[int],
        transform: Any,
        crops: Sequence[tuple[float, ...] | None] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.transform = transform
        self.crops = list(crops) if crops is not None else [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, crop = open_rgb(self.paths[i]), self.crops[i]
        if crop is not None:
            image = image.crop(crop_pixels(image.width, image.height, crop))
        return self.transform(image), self.targets[i]


# --- memory ----------------------------------------------------------------------------------


def rss_mib() -> float:
    """This process's resident memory now."""
    return psutil.Process().memory_info().rss / MIB


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) in a fresh (spawned) Python process, so its memory and time are its
    own. `fn` must be importable: a module-level function of a bench script or of this module."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args, **kwargs).result()


# --- the report ----------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        return f"{value:.3g}"
    return str(value)


def print_table(title: str, rows: Sequence[tuple[str, Any]], note: str = "") -> None:
    """A two-column table: what was measured, its value (with its unit in the label)."""
    width = max(len(label) for label, _ in rows)
    values = [fmt(value) for _, value in rows]
    value_width = max(len(v) for v in values)
    rule = "-" * (width + value_width + 3)
    print(f"\n{title}\n{rule}")
    for (label, _), value in zip(rows, values, strict=True):
        print(f"{label:<{width}}   {value:>{value_width}}")
    print(rule)
    if note:
        print(note)


def emit(result: dict[str, Any]) -> None:
    """The machine-readable result: one JSON object, the last line the bench prints."""

    def short(value: Any) -> Any:
        if isinstance(value, float):
            return float(f"{value:.6g}")
        if isinstance(value, list | tuple):
            return [short(v) for v in value]
        if isinstance(value, dict):
            return {k: short(v) for k, v in value.items()}
        return value

    print(json.dumps({k: short(v) for k, v in result.items()}), flush=True)


def machine() -> dict[str, Any]:
    """Where the numbers came from: cores, torch's threads, and the load average (other
    processes on the same cores make every figure slower and noisier)."""
    return {
        "cores": cores(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0],
    }
