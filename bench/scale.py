"""camtrap at the competition's scale: cache build speed and memory, and an epoch before/after.

A generated dataset shaped like Conser-vision's (960x540 and 640x360 JPEGs, ~100 / ~45 KB,
148 sites, the two-CSV layout with 8 one-hot classes) is written by a process pool, then:

  build        validate -> prepare -> cache_images on a cold image cache, in a child process:
               images/s per core, the validation time, and the child's peak RSS (VmHWM).
  before       one epoch of the seed's path: resnet18 at 64 px on the CPU, batch 32, a
               DataLoader with --ref-workers workers decoding every JPEG (images.open_rgb +
               seed_transform), AdamW over the train rows, then a no-grad pass over the val
               rows (batch 64). With --ref-batches K > 0 (the default) only the first K train
               and K val batches are run and the epoch is extrapolated: the first batch (which
               includes the workers' start) + the mean of the next K-1 x the remaining batches.
               --ref-batches 0 runs the whole epoch.
  after        one epoch of `fit.fit` from the cache (preset "smoke", train.epochs=1, CPU,
               --fit-workers loader workers, default 0 so every read happens in the process
               measured), in a child process: its wall time and its peak RSS, beside the size
               of the cache file it trains from (training memory should not grow with it).

Both epochs include building the model. ratio = epoch seconds before / after. On a CPU the
seed's decoding workers share the cores with the model's compute, so the ratio is about
1 / (1 - the share of the seed's epoch spent decoding). The last line printed is the JSON
result.

    .venv/bin/python bench/scale.py                            # 1000 images, ~3 min
    .venv/bin/python bench/scale.py --n 16488 --ref-batches 40 # the competition's size: ~5 min
                                                               # to write the JPEGs, ~3 min to
                                                               # build the cache, and an epoch
                                                               # of fit of 516 batches (tens of
                                                               # minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from _common import (
    MIB,
    ReferenceImages,
    Timer,
    cold_cache_dir,
    cores,
    data_stages,
    emit,
    in_child,
    machine,
    peak_rss_mib,
    print_table,
    rss_mib,
    split_items,
    temp_dir,
    write_dataset,
)
from torch import nn
from torch.utils.data import DataLoader

from camtrap import fit, runfolder
from camtrap.config import RunConfig, build_config
from camtrap.imagecache import Pack
from camtrap.loader import seed_transform
from camtrap.models import build_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images (16488: the competition)")
    parser.add_argument("--sites", type=int, default=148)
    parser.add_argument("--ref-workers", type=int, default=2, help="workers of the seed path")
    parser.add_argument(
        "--ref-batches", type=int, default=8, help="seed path: batches timed (0: whole epoch)"
    )
    parser.add_argument("--fit-workers", type=int, default=0, help="fit's loader workers")
    parser.add_argument(
        "--keep", help="work in this new folder and keep it (default: a temp dir, removed)"
    )
    return parser.parse_args()


def smoke_config(fit_workers: int = 0) -> RunConfig:
    return build_config(
        "smoke",
        overrides={
            "train.epochs": 1,
            "train.device": "cpu",
            "train.progress": False,
            "model.weights": "none",
            "data.num_workers": fit_workers,
        },
    )


# --- the stages, each run in a child process -----------------------------------------------


def build_child(data_root: str, runs_root: str) -> dict[str, Any]:
    """validate -> prepare -> cache_images, cold; timings, decode count, peak RSS."""
    baseline = rss_mib()
    stages = data_stages(smoke_config(), Path(data_root), Path(runs_root))
    return {
        "validate_s": stages.validate_s,
        "prepare_s": stages.prepare_s,
        "cache_s": stages.cache_s,
        "decoded": stages.decoded,
        "run_dir": str(stages.run_dir),
        "pack": stages.report.pack,  # a Pack pickles: the children train from it
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak_rss_mib(),
        "loadavg_1m": os.getloadavg()[0],
    }


def _timed_batches(loader: DataLoader, limit: int, step) -> tuple[float, int, float]:
    """(seconds of the first batch, batches after it, their seconds), running `step` on each."""
    count = 0
    with Timer() as timer:
        iterator = iter(loader)
        step(*next(iterator))
    first = timer.seconds
    with Timer() as timer:
        for images, targets in iterator:
            if limit and count >= limit - 1:
                break
            step(images, targets)
            count += 1
    rest = timer.seconds
    return first, count, rest


def reference_child(
    data_root: str, run_dir: str, pack: Pack, workers: int, limit: int
) -> dict[str, Any]:
    """One epoch (or `limit` batches of each pass, extrapolated) of the seed's data path."""
    config = smoke_config()
    cfg = config.train
    classes = _classes(run_dir)
    items = split_items(Path(run_dir), pack, classes)
    transform = seed_transform(config.data.image_size, config.data.mean, config.data.std)

    def loader(split: str, batch: int, shuffle: bool) -> DataLoader:
        rows = items[items["split"] == split]
        paths = [str(Path(data_root) / f) for f in rows["filepath"]]
        dataset = ReferenceImages(paths, rows["label_idx"].tolist(), transform)
        return DataLoader(dataset, batch_size=batch, shuffle=shuffle, num_workers=workers)

    train, val = loader("train", cfg.batch_size, True), loader("val", cfg.eval_batch(), False)
    torch.manual_seed(cfg.seed)
    with Timer() as setup:
        model = build_model(
            config.model.arch, len(classes), "none", config.model.drop_path,
            config.data.image_size,
        )  # fmt: skip
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def train_step(images: torch.Tensor, targets: torch.Tensor) -> None:
        loss = nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def val_step(images: torch.Tensor, targets: torch.Tensor) -> None:
        with torch.no_grad():
            nn.functional.cross_entropy(model(images), targets)

    model.train()
    t_first, t_count, t_rest = _timed_batches(train, limit, train_step)
    model.eval()
    v_first, v_count, v_rest = _timed_batches(val, limit, val_step)
    train_s = t_first + (t_rest / t_count * (len(train) - 1) if t_count else 0.0)
    val_s = v_first + (v_rest / v_count * (len(val) - 1) if v_count else 0.0)
    return {
        "epoch_s": setup.seconds + train_s + val_s,
        "train_s": train_s,
        "val_s": val_s,
        "extrapolated": t_count + 1 < len(train) or v_count + 1 < len(val),
        "train_batches_timed": t_count + 1,
        "train_batches": len(train),
        "val_batches_timed": v_count + 1,
        "val_batches": len(val),
        "first_train_batch_s": t_first,
        "loadavg_1m": os.getloadavg()[0],
    }


def fit_child(run_dir: str, pack: Pack, out_dir: str, fit_workers: int) -> dict[str, Any]:
    """One epoch of fit.fit from the cache; wall time and peak RSS of this process."""
    classes = _classes(run_dir)
    items = split_items(Path(run_dir), pack, classes)
    baseline = rss_mib()
    with Timer() as timer:
        fit.fit(smoke_config(fit_workers), items, classes, Path(out_dir), pack)
    return {
        "epoch_s": timer.seconds,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak_rss_mib(),
        "pack_mib": pack.path.stat().st_size / MIB,
        "loadavg_1m": os.getloadavg()[0],
    }


def _classes(run_dir: str) -> list[str]:
    return runfolder.read_run_json(Path(run_dir))["classes"]


def main() -> None:
    args = parse_args()
    with temp_dir("camtrap-bench-scale-", args.keep) as base:
        cold_cache_dir(base)
        written = write_dataset(base / "data", args.n, n_sites=args.sites)
        print(f"wrote {written['written']} JPEGs in {written['seconds']:.0f}s", flush=True)
        build = in_child(build_child, str(base / "data"), str(base / "runs"))
        print(f"cache built in {build['validate_s'] + build['cache_s']:.1f}s", flush=True)
        before = in_child(
            reference_child, str(base / "data"), build["run_dir"], build["pack"],
            args.ref_workers, args.ref_batches,
        )  # fmt: skip
        print(f"seed-path epoch {before['epoch_s']:.1f}s", flush=True)
        after = in_child(
            fit_child, build["run_dir"], build["pack"], str(base / "fit"), args.fit_workers
        )
        print(f"cached fit epoch {after['epoch_s']:.1f}s", flush=True)
        pack_mib = after["pack_mib"]
    build_s = build["validate_s"] + build["cache_s"]
    per_core = args.n / build_s / cores()
    ratio = before["epoch_s"] / after["epoch_s"]
    how = (
        f"{before['train_batches_timed']}/{before['train_batches']} train + "
        f"{before['val_batches_timed']}/{before['val_batches']} val batches, extrapolated"
        if before["extrapolated"]
        else "whole epoch"
    )
    print_table(
        f"scale: {args.n} images, {args.sites} sites, resnet18 at 64px on CPU, {cores()} cores",
        [
            ("JPEGs written (s, not part of any figure)", written["seconds"]),
            ("JPEG size (mean, KB)", written["mean_kb"]),
            ("validation, cold cache (s)", build["validate_s"]),
            ("prepare (s)", build["prepare_s"]),
            ("cache_images (s)", build["cache_s"]),
            ("cache build, validate + cache (images/s per core)", per_core),
            ("cache build: peak RSS (MiB)", build["peak_rss_mib"]),
            ("cache build: RSS after imports (MiB)", build["baseline_rss_mib"]),
            (f"epoch before: seed path, {args.ref_workers} workers (s)", before["epoch_s"]),
            ("  how it was measured", how),
            (f"epoch after: fit from the cache, {args.fit_workers} workers (s)", after["epoch_s"]),
            ("training from the cache: peak RSS (MiB)", after["peak_rss_mib"]),
            ("training from the cache: RSS before fit (MiB)", after["baseline_rss_mib"]),
            ("cache file size (MiB)", pack_mib),
            ("ratio epoch before / after", ratio),
            (
                "load average after build / before / after (other processes)",
                f"{build['loadavg_1m']:.1f} / {before['loadavg_1m']:.1f} / "
                f"{after['loadavg_1m']:.1f}",
            ),
        ],
    )
    emit(
        {
            "bench": "scale",
            "ratio": ratio,
            "images": args.n,
            "sites": args.sites,
            "build_images_per_s_per_core": per_core,
            "validate_s": build["validate_s"],
            "prepare_s": build["prepare_s"],
            "cache_s": build["cache_s"],
            "decoded": build["decoded"],
            "build_peak_rss_mib": build["peak_rss_mib"],
            "build_baseline_rss_mib": build["baseline_rss_mib"],
            "epoch_before_s": before["epoch_s"],
            "epoch_before_extrapolated": before["extrapolated"],
            "epoch_after_s": after["epoch_s"],
            "train_peak_rss_mib": after["peak_rss_mib"],
            "train_baseline_rss_mib": after["baseline_rss_mib"],
            "pack_mib": pack_mib,
            "jpeg_kb": written["mean_kb"],
            "loadavg_1m_build_before_after": [
                build["loadavg_1m"],
                before["loadavg_1m"],
                after["loadavg_1m"],
            ],
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
