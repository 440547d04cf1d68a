"""What camtrap's epoch loop costs beyond the training itself: `fit.fit` vs a bare PyTorch loop.

Both train the same model (resnet18, random init from the same seed, 64 px, CPU) for one epoch
on the same images, in the same order, with the same batch sizes:

  bare     a minimal loop: AdamW + cross entropy over the train rows (the epoch-1 order of
           camtrap's EpochShuffle), then a no-grad pass over the val rows. Its input tensors
           are the dataset's cached pixels, normalised once and held in memory before the clock
           starts; nothing else (no metrics, no files).
  camtrap  `fit.fit` with preset "smoke" (train.epochs=1, no loader workers, CPU) into a fresh
           run folder: CachedBatches + make_loader + DeviceNormalize per batch, the per-epoch
           metrics and per-class tables, the background writes of the best model, resume
           state and CSVs, and the final model file - everything one epoch of a run does.

Both clocks include building the model and optimizer. The two are run alternately
(bare, camtrap, bare, camtrap, ... --repeats times) and the minimum of each is kept, to damp
noise from other processes. The epoch-1 train losses of the two are checked to be equal, so they
did the same work. ratio = camtrap seconds / bare seconds (target <= 1.03). The last line
printed is the JSON result.

    .venv/bin/python bench/loop_overhead.py                  # 300 images: ~1 minute on 2 cores
    .venv/bin/python bench/loop_overhead.py --n 2400         # an epoch of ~35 s on 2 idle cores

On a machine shared with other CPU-heavy processes the epoch times swing by 2-10x (torch's
threads wait on each other when a core is taken), far more than camtrap's overhead: compare runs
made while the load average (in the JSON) stays low.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import (
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
from torch import nn

from camtrap import fit
from camtrap.config import RunConfig, build_config
from camtrap.imagecache import Pack
from camtrap.loader import DeviceNormalize, EpochShuffle
from camtrap.models import build_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="images in the dataset")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternated")
    parser.add_argument(
        "--keep", help="work in this new folder and keep it (default: a temp dir, removed)"
    )
    return parser.parse_args()


def smoke_config() -> RunConfig:
    return build_config(
        "smoke",
        overrides={
            "train.epochs": 1,
            "train.device": "cpu",
            "train.progress": False,
            "data.num_workers": 0,
            "model.weights": "none",
        },
    )


def bare_epoch(
    config: RunConfig, items: pd.DataFrame, pack: Pack, classes: list[str]
) -> tuple[float, float]:
    """(seconds, mean train loss) of one epoch of a minimal loop over the same tensors."""
    cfg = config.train
    normalize = DeviceNormalize(config.data.mean, config.data.std, torch.device("cpu"))
    pixels = normalize(torch.from_numpy(np.array(pack.array())))  # every row, in memory
    train = items[items["split"] == "train"]
    val = items[items["split"] == "val"]
    train_rows = torch.tensor(train["row"].to_numpy())
    train_y = torch.tensor(train["label_idx"].to_numpy())
    val_rows = torch.tensor(val["row"].to_numpy())
    val_y = torch.tensor(val["label_idx"].to_numpy())
    shuffle = EpochShuffle(len(train), cfg.seed)
    shuffle.set_epoch(1)
    order = torch.as_tensor(list(shuffle))
    with torch.random.fork_rng(devices=[]), Timer() as timer:
        torch.manual_seed(cfg.seed)
        model = build_model(
            config.model.arch,
            len(classes),
            "none",
            config.model.drop_path,
            config.data.image_size,
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        model.train()
        loss_sum = 0.0
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            targets = train_y[batch]
            loss = nn.functional.cross_entropy(model(pixels[train_rows[batch]]), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            for start in range(0, len(val_rows), cfg.eval_batch()):
                rows = slice(start, start + cfg.eval_batch())
                nn.functional.cross_entropy(model(pixels[val_rows[rows]]), val_y[rows])
    return timer.seconds, loss_sum / len(order)


def camtrap_epoch(
    config: RunConfig, items: pd.DataFrame, pack: Pack, classes: list[str], run_dir: Path
) -> tuple[float, float]:
    """(seconds, mean train loss) of fit.fit for one epoch into a new run folder."""
    with Timer() as timer:
        result = fit.fit(config, items, classes, run_dir, pack)
    assert result.epochs_run == 1 and result.resumed_from == 0
    train = [h for h in result.history if h["split"] == "train"]
    return timer.seconds, float(train[0]["loss"])


def main() -> None:
    args = parse_args()
    config = smoke_config()
    with temp_dir("camtrap-bench-loop-", args.keep) as base:
        cold_cache_dir(base)
        write_dataset(base / "data", args.n)
        stages = data_stages(config, base / "data", base / "prepared")
        pack, classes = stages.report.pack, stages.data.classes
        items = split_items(stages.run_dir, pack, classes)
        counts = items["split"].value_counts()
        bare_s, camtrap_s, losses = [], [], []
        for k in range(args.repeats):
            seconds, bare_loss = bare_epoch(config, items, pack, classes)
            bare_s.append(seconds)
            print(f"bare    {k + 1}: {seconds:.2f}s  train loss {bare_loss:.6f}", flush=True)
            seconds, fit_loss = camtrap_epoch(config, items, pack, classes, base / f"run{k}")
            camtrap_s.append(seconds)
            print(f"camtrap {k + 1}: {seconds:.2f}s  train loss {fit_loss:.6f}", flush=True)
            losses.append(abs(fit_loss - bare_loss))
    # Same init, order, batches and arithmetic: the same losses (up to float reordering).
    assert max(losses) < 1e-3, f"the two loops did different work: loss differs by {losses}"
    ratio = min(camtrap_s) / min(bare_s)
    print_table(
        f"one epoch: resnet18 at {config.data.image_size}px on CPU, batch "
        f"{config.train.batch_size}, {counts['train']} train + {counts['val']} val images, "
        f"{cores()} cores",
        [
            ("bare loop (s, min)", min(bare_s)),
            ("camtrap fit.fit (s, min)", min(camtrap_s)),
            ("bare loop runs (s)", " ".join(f"{s:.2f}" for s in bare_s)),
            ("camtrap fit.fit runs (s)", " ".join(f"{s:.2f}" for s in camtrap_s)),
            ("camtrap overhead (s)", min(camtrap_s) - min(bare_s)),
            ("|train loss camtrap - bare| (max)", max(losses)),
            ("ratio camtrap / bare (target <= 1.03)", ratio),
        ],
    )
    emit(
        {
            "bench": "loop_overhead",
            "ratio": ratio,
            "target": "<= 1.03",
            "images": args.n,
            "train_images": int(counts["train"]),
            "val_images": int(counts["val"]),
            "bare_s": bare_s,
            "camtrap_s": camtrap_s,
            "bare_min_s": min(bare_s),
            "camtrap_min_s": min(camtrap_s),
            "loss_difference": max(losses),
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
