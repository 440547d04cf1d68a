"""Images per second of the data path: the seed's per-epoch PIL loading vs camtrap's image cache.

Compared, on the same generated 960x540 JPEGs (quality 85, ~100 KB, photo-like), on the same
cores, producing the same tensors (normalised float32, (B, 3, s, s)):

  reference  the seed's path: a DataLoader (batch 64, one worker per core, started each epoch
             as the seed's are) over a Dataset whose item is
             `seed_transform(s, mean, std)(images.open_rgb(path))`: every image decoded,
             resized, converted and normalised again in every epoch.
  camtrap    the cached path: `CachedBatches` over the dataset's uint8 pack + `make_loader`
             (no workers) + `DeviceNormalize` on the CPU. The pack is built first (validate ->
             prepare -> cache_images, cold cache): a one-time cost, reported in the table as
             its own images/s, not part of the loader's speed.

With --crop best|all (data.crop) both paths read MegaDetector crops instead: a detections.json
is written with one box per image (best) or two (all: each box a sample), 1 image in 10
without one (its whole frame); the reference crops each image in every epoch
(images.crop_pixels, as the cache does once).

One batch of each path is checked to be equal (within 1e-6) before anything is timed. The
reference is timed over --ref-epochs full epochs, the cached loader over --cached-epochs full
epochs; each figure is the mean images/s. ratio = camtrap images/s / reference images/s
(the target is >= 20 on 2 cores). The last line printed is the JSON result.

    .venv/bin/python bench/data_path.py                 # 400 images, ~35 s on 2 cores
    .venv/bin/python bench/data_path.py --n 1000 --cached-epochs 10       # ~1 minute
    .venv/bin/python bench/data_path.py --crop all                        # crops, 2 per image
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _common import (
    ReferenceImages,
    Timer,
    cold_cache_dir,
    cores,
    data_stages,
    emit,
    machine,
    print_table,
    split_items,
    temp_dir,
    write_dataset,
)
from torch.utils.data import DataLoader

from camtrap.config import build_config
from camtrap.loader import CachedBatches, DeviceNormalize, make_loader, seed_transform


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="images (960x540 JPEGs)")
    parser.add_argument("--size", type=int, default=224, help="image size of the recipe")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=cores(), help="reference workers")
    parser.add_argument("--cached-workers", type=int, default=0, help="cached loader workers")
    parser.add_argument("--ref-epochs", type=int, default=1)
    parser.add_argument("--cached-epochs", type=int, default=5)
    parser.add_argument("--crop", choices=["none", "best", "all"], default="none",
                        help="data.crop: whole frames, or MegaDetector crops")  # fmt: skip
    parser.add_argument(
        "--keep", help="work in this new folder and keep it (default: a temp dir, removed)"
    )
    return parser.parse_args()


def time_epochs(epochs: int, one_epoch) -> list[float]:
    seconds = []
    for _ in range(epochs):
        with Timer() as timer:
            one_epoch()
        seconds.append(timer.seconds)
    return seconds


DETECTIONS = "detections.json"


def write_detections(root: Path, boxes_per_image: int, seed: int = 0) -> None:
    """A MegaDetector file for the dataset at `root`: `boxes_per_image` animal boxes (10-40% of
    the frame's side) per image, none for 1 image in 10."""
    rng = np.random.default_rng(seed)
    files = [line.split(",")[1] for line in (root / "train_features.csv").read_text()
             .splitlines()[1:]]  # fmt: skip
    images = []
    for file in files:
        detections = []
        for k in range(boxes_per_image if rng.random() >= 0.1 else 0):
            w, h = rng.uniform(0.1, 0.4, size=2)
            x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            box = [round(float(v), 4) for v in (x, y, w, h)]
            detections.append({"category": "1", "conf": 0.9 - 0.3 * k, "bbox": box})
        images.append({"file": file, "detections": detections})
    doc = {"info": {"format_version": "1.4"}, "detection_categories": {"1": "animal"},
           "images": images}  # fmt: skip
    (root / DETECTIONS).write_text(json.dumps(doc))


def main() -> None:
    args = parse_args()
    with temp_dir("camtrap-bench-data-path-", args.keep) as base:
        cold_cache_dir(base)
        written = write_dataset(base / "data", args.n, sizes=((960, 540),))
        overrides = {"data.image_size": args.size}
        if args.crop != "none":
            write_detections(base / "data", 2 if args.crop == "all" else 1)
            overrides |= {"data.detections": DETECTIONS, "data.crop": args.crop}
        config = build_config("part1", overrides=overrides)
        stages = data_stages(config, base / "data", base / "runs")
        pack = stages.report.pack
        items = split_items(stages.run_dir, pack, stages.data.classes)
        mean, std = config.data.mean, config.data.std

        reference = DataLoader(
            ReferenceImages(
                [str(base / "data" / f) for f in items["filepath"]],
                items["label_idx"].tolist(),
                seed_transform(args.size, mean, std),
                [None if b is None else (*b, config.data.crop_margin) for b in items["box"]],
            ),
            batch_size=args.batch,
            shuffle=False,
            num_workers=args.workers,
        )
        cached = make_loader(
            CachedBatches(pack, items["row"].tolist(), items["label_idx"].tolist()),
            args.batch,
            num_workers=args.cached_workers,
        )
        to_input = DeviceNormalize(mean, std, torch.device("cpu"))

        # The same work: the first batch of each path holds the same tensors.
        ref_x, ref_y = next(iter(reference))
        images, cached_y = next(iter(cached))
        cached_x = to_input(images)
        difference = (ref_x - cached_x).abs().max().item()
        assert ref_x.shape == cached_x.shape, (ref_x.shape, cached_x.shape)
        assert ref_x.dtype == cached_x.dtype == torch.float32
        assert torch.equal(ref_y, cached_y)
        assert difference <= 1e-6, f"the two paths differ by {difference}"

        def reference_epoch() -> None:
            for x, _ in reference:
                assert x.dtype == torch.float32

        def cached_epoch() -> None:
            for images, _ in cached:
                x = to_input(images)
                assert x.dtype == torch.float32

        ref_seconds = time_epochs(args.ref_epochs, reference_epoch)
        cached_epoch()  # warm-up: the pack's pages into the page cache, as in any later epoch
        cached_seconds = time_epochs(args.cached_epochs, cached_epoch)

    n = len(items)
    ref_ips = n * len(ref_seconds) / sum(ref_seconds)
    cached_ips = n * len(cached_seconds) / sum(cached_seconds)
    build_s = stages.seconds
    ratio = cached_ips / ref_ips
    print_table(
        f"data path: {n} samples (crop {args.crop}) of 960x540 -> {args.size}px, batch "
        f"{args.batch}, {cores()} cores",
        [
            ("JPEG size (mean, KB)", written["mean_kb"]),
            ("max |reference - cached| on batch 1", difference),
            ("cache build: validate (s)", stages.validate_s),
            ("cache build: prepare (s)", stages.prepare_s),
            ("cache build: cache_images (s)", stages.cache_s),
            ("cache build: images decoded", stages.decoded),
            ("cache build (one time, images/s)", n / build_s),
            (f"reference PIL loader, {args.workers} workers (images/s)", ref_ips),
            (
                f"reference epoch (s, mean of {len(ref_seconds)})",
                sum(ref_seconds) / len(ref_seconds),
            ),
            (f"camtrap cached loader, {args.cached_workers} workers (images/s)", cached_ips),
            (
                f"camtrap epoch (s, mean of {len(cached_seconds)})",
                sum(cached_seconds) / len(cached_seconds),
            ),
            ("ratio camtrap / reference (target >= 20)", ratio),
        ],
    )
    emit(
        {
            "bench": "data_path",
            "ratio": ratio,
            "target": ">= 20",
            "images": n,
            "crop": args.crop,
            "image_size": args.size,
            "batch": args.batch,
            "reference_images_per_s": ref_ips,
            "cached_images_per_s": cached_ips,
            "reference_epoch_s": ref_seconds,
            "cached_epoch_s": cached_seconds,
            "build_images_per_s": n / build_s,
            "build_s": build_s,
            "validate_s": stages.validate_s,
            "prepare_s": stages.prepare_s,
            "cache_s": stages.cache_s,
            "decoded": stages.decoded,
            "max_abs_difference": difference,
            "jpeg_kb": written["mean_kb"],
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
