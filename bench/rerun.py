"""What a rerun costs: camtrap's data stages on a cold cache vs on unchanged data vs on 1% more.

The data stages are those of `camtrap run` before training, on a local folder (no fetch):
stages.validate (reads and hashes every image it has not read unchanged before: the image
cache's file-hash index, camtrap.imagecache_hashes; decodes those the cache has not seen, into
a delta pack), stages.prepare (split.csv, run.json) and stages.cache_images (the dataset's
uint8 pack: reused if present and intact, else copied from other packs plus decoded). Three
passes over one generated dataset (960x540 and 640x360 JPEGs), each timed in full:

  first        a cold image cache: every image is decoded once.
  rerun        the same data again: no image should be read or decoded, the pack is reused.
  incremental  --add-fraction more images (new rows in both CSVs, new JPEGs): only those
               should be decoded; the rest of the new pack is copied from the cache.

Each pass reports the images decoded (delta packs written by validation + BuildReport.decoded)
and copied. ratio = rerun seconds / first seconds (target <= 0.10); incremental_ratio =
incremental seconds / first seconds (target <= 0.10). The last line printed is the JSON result.

    .venv/bin/python bench/rerun.py                  # 500 images at 224 px, ~40 s
    .venv/bin/python bench/rerun.py --n 2000         # ~75 s
"""

from __future__ import annotations

import argparse
import math

from _common import (
    Stages,
    cold_cache_dir,
    cores,
    data_stages,
    emit,
    machine,
    print_table,
    temp_dir,
    write_dataset,
)

from camtrap.config import build_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="images in the first dataset")
    parser.add_argument("--add-fraction", type=float, default=0.01, help="images added, share")
    parser.add_argument("--size", type=int, default=224, help="image size of the recipe")
    parser.add_argument(
        "--keep", help="work in this new folder and keep it (default: a temp dir, removed)"
    )
    return parser.parse_args()


def describe(name: str, stages: Stages) -> list[tuple[str, object]]:
    report = stages.report
    return [
        (f"{name}: validate (s)", stages.validate_s),
        (f"{name}: prepare (s)", stages.prepare_s),
        (f"{name}: cache_images (s)", stages.cache_s),
        (f"{name}: total (s)", stages.seconds),
        (
            f"{name}: decoded in validate / in cache build",
            f"{stages.decoded_in_validate} / {report.decoded}",
        ),
        (f"{name}: rows copied / pack reused", f"{report.copied} / {report.reused}"),
    ]


def summary(stages: Stages) -> dict[str, object]:
    return {
        "s": stages.seconds,
        "validate_s": stages.validate_s,
        "prepare_s": stages.prepare_s,
        "cache_s": stages.cache_s,
        "decoded": stages.decoded,
        "copied": stages.report.copied,
        "reused": stages.report.reused,
    }


def main() -> None:
    args = parse_args()
    added = max(1, math.ceil(args.n * args.add_fraction))
    config = build_config("part1", overrides={"data.image_size": args.size})
    with temp_dir("camtrap-bench-rerun-", args.keep) as base:
        cold_cache_dir(base)
        written = write_dataset(base / "data", args.n)
        first = data_stages(config, base / "data", base / "runs")
        rerun = data_stages(config, base / "data", base / "runs")
        write_dataset(base / "data", args.n + added, start=args.n)
        incremental = data_stages(config, base / "data", base / "runs")
        pack_mb = incremental.report.pack.path.stat().st_size / 1e6
    assert first.decoded == args.n, first.decoded
    assert rerun.decoded == 0 and rerun.report.reused, (rerun.decoded, rerun.report)
    assert incremental.decoded == added, incremental.decoded
    ratio = rerun.seconds / first.seconds
    incremental_ratio = incremental.seconds / first.seconds
    print_table(
        f"data stages: {args.n} images (+{added}) at {args.size}px, {cores()} cores",
        [
            ("JPEG size (mean, KB)", written["mean_kb"]),
            ("pack size after the increment (MB)", pack_mb),
            *describe("first", first),
            *describe("rerun", rerun),
            *describe(f"+{added} images", incremental),
            ("ratio rerun / first (target <= 0.10)", ratio),
            ("incremental_ratio (+1%) / first (target <= 0.10)", incremental_ratio),
        ],
    )
    emit(
        {
            "bench": "rerun",
            "ratio": ratio,
            "incremental_ratio": incremental_ratio,
            "target": "<= 0.10 (both)",
            "images": args.n,
            "added": added,
            "image_size": args.size,
            "pack_mb": pack_mb,
            "first": summary(first),
            "rerun": summary(rerun),
            "incremental": summary(incremental),
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
