"""What training on the animal buys when the animal is small: whole frames vs detector crops.

One dataset, `camtrap demo-data --small-animals` (camtrap.demo_small): 960x540 frames in which
each animal's box covers about 2% of the frame, and a MegaDetector batch output file
(detections.json) with each animal's true box, a few misses and low-confidence false boxes.
The same recipe (preset smoke: resnet18 from scratch, 64 px, AdamW, same seed, same split,
same epochs) is trained twice through `stages.run_all`, as `camtrap train` runs it:

  frame  data.crop=none: each frame squashed to 64 x 64, the animal a smudge of ~9 x 9 px.
  crop   data.crop=best, data.detections=detections.json: each image's most confident animal
         box above data.detection_threshold (0.1), squared with data.crop_margin context;
         images without one (blanks, misses) keep their whole frame.

Each run's val accuracy is its best model's (best epoch by val accuracy) on the same random
val split of 80 images (the split depends on the ids, not on the crops). gain = crop val
accuracy - frame val accuracy (target >= 0.25, with the frame run near chance, 1 / 8). Six
epochs is where the crops have been learnt and the frames not yet: the frame run fits its train
split's backgrounds instead (train accuracy ~0.9, val near chance) and creeps up to 0.3-0.4 by
epoch 10-15. The last line printed is the JSON result.

    .venv/bin/python bench/crops.py                  # 8 classes x 40 images: ~2.5 minutes on
                                                     # 2 idle cores (9 while a test run shares them)
    .venv/bin/python bench/crops.py --seed 1 --verbose     # camtrap's log (each epoch) on stderr
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import Timer, cold_cache_dir, cores, emit, machine, print_table, temp_dir

from camtrap.cli import setup_logging
from camtrap.config import build_config
from camtrap.demo import SEED_CLASSES
from camtrap.demo_small import DETECTIONS_JSON, write_small_animals_dataset
from camtrap.stages import run_all

RECIPES: dict[str, dict[str, Any]] = {
    "frame": {"data.crop": "none"},
    "crop": {"data.crop": "best", "data.detections": DETECTIONS_JSON},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=40, help="images per class (8 classes)")
    parser.add_argument("--seed", type=int, default=0, help="the dataset's and the training's")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=64, help="image size of the recipe")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--verbose", action="store_true", help="camtrap's log on stderr")
    parser.add_argument(
        "--keep", help="work in this new folder and keep it (default: a temp dir, removed)"
    )
    return parser.parse_args()


def train_once(args: argparse.Namespace, recipe: str, data: Path, runs: Path) -> dict[str, Any]:
    """One run of the smoke recipe with `recipe`'s data settings: its best val metrics and
    its seconds (validation, cache build, training, evaluation)."""
    overrides = {
        "data.image_size": args.size,
        "train.epochs": args.epochs,
        "train.lr": args.lr,
        "train.seed": args.seed,
        "train.progress": False,
        "output.stage": f"crops-{recipe}",
        **RECIPES[recipe],
    }
    config = build_config("smoke", overrides=overrides)
    with Timer() as timer:
        summary = run_all(config, data, runs)
    return {**summary.val, "best_epoch": summary.best_epoch, "seconds": timer.seconds}


def main() -> None:
    args = parse_args()
    if args.verbose:
        setup_logging(verbose=False)
    with Timer() as total, temp_dir("camtrap-bench-crops-", args.keep) as base:
        cold_cache_dir(base)
        with Timer() as written:
            data = write_small_animals_dataset(base / "data", args.per_class, args.seed)
        results = {name: train_once(args, name, data, base / "runs") for name in RECIPES}
    frame, crop = results["frame"]["accuracy"], results["crop"]["accuracy"]
    n_images = args.per_class * len(SEED_CLASSES)
    chance = 1 / len(SEED_CLASSES)
    print_table(
        f"crops: {n_images} frames of 960x540 (animal ~2% of the frame) -> {args.size}px, "
        f"{args.epochs} epochs, {cores()} cores",
        [
            ("demo data written (s)", written.seconds),
            (f"frame: val accuracy (chance {chance:.3f})", frame),
            ("frame: best epoch", results["frame"]["best_epoch"]),
            ("frame: run (s)", results["frame"]["seconds"]),
            ("crop: val accuracy", crop),
            ("crop: best epoch", results["crop"]["best_epoch"]),
            ("crop: run (s)", results["crop"]["seconds"]),
            ("gain crop - frame (target >= 0.25)", crop - frame),
            ("whole bench (s)", total.seconds),
        ],
    )
    emit(
        {
            "bench": "crops",
            "frame_val_accuracy": frame,
            "crop_val_accuracy": crop,
            "gain": crop - frame,
            "target": ">= 0.25",
            "chance": chance,
            "images": n_images,
            "epochs": args.epochs,
            "image_size": args.size,
            "seed": args.seed,
            "frame": results["frame"],
            "crop": results["crop"],
            "data_s": written.seconds,
            "seconds": total.seconds,
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
