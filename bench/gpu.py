"""swin_t training throughput on one CUDA GPU, through camtrap's own training code.

Measured (each configuration on a fresh model, `models.build_model("swin_t", 8, "none", 0.2,
224)`, synthetic normalised 224 px batches already on the GPU):

  train images/s   camtrap.engine.train_one_epoch (autocast + GradScaler as configured by
                   precision_for / make_scaler, AdamW): --warmup steps, then --steps timed
  eval images/s    camtrap.engine.infer, the same way (batch = the train batch)
  MFU              model FLOPs per step (torch.utils.flop_counter.FlopCounterMode, counted once
                   per image in eager mode and scaled by the batch) / step time / the GPU's peak
                   dense bf16/fp16 TFLOPS (a table by GPU name: H100/H200 989; --peak-tflops
                   for another GPU)
  peak MiB         camtrap.device.memory_report after the configuration (peak allocated)

over batch 64/128/256 x fp16 + GradScaler / bf16 x channels_last on/off (eager), and
torch.compile on/off for --compile-batch (channels_last on; bf16, plus fp16 with
--compile-all). Beside them: the cached loader's images/s (CachedBatches over a real 224 px
pack + make_loader with pinned memory + DeviceNormalize to cuda), a GradScaler resume check
(scaler.state_dict() saved with torch.save, loaded into a fresh scaler: same scale) and the
memory report. ratio = cached loader images/s / best train images/s: above 1, the loader is not
the bottleneck. The last line printed is the JSON result.

Sized to finish in ~6 minutes on an H200 (--budget-s stops starting new configurations once
spent). Without CUDA it says so and exits 0. `--dry-run-cpu` runs every code path on the CPU at
toy sizes (numbers meaningless) to check the script itself.

    .venv/bin/python bench/gpu.py
    .venv/bin/python bench/gpu.py --batches 128 --no-compile          # quicker
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import Timer, cold_cache_dir, data_stages, emit, split_items, temp_dir, write_dataset
from torch.utils.flop_counter import FlopCounterMode

from camtrap.config import build_config
from camtrap.device import make_scaler, memory_report, precision_for
from camtrap.engine import forward_loss, infer, train_one_epoch
from camtrap.loader import CachedBatches, DeviceNormalize, make_loader
from camtrap.models import build_model

# Peak dense bf16/fp16 tensor TFLOPS (no sparsity), by a name torch.cuda.get_device_name() holds.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,  # SXM; the PCIe card is ~756: pass --peak-tflops
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
}
NUM_CLASSES = 8


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile-batch", type=int, default=128)
    parser.add_argument("--compile-all", action="store_true", help="compile fp16 too")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--loader-images", type=int, default=512, help="images in the pack")
    parser.add_argument("--loader-epochs", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOPS")
    parser.add_argument("--budget-s", type=float, default=240, help="start nothing after this")
    parser.add_argument("--dry-run-cpu", action="store_true", help="toy sizes on the CPU")
    args = parser.parse_args()
    if args.dry_run_cpu:
        args.batches, args.size, args.warmup, args.steps = [2], 32, 1, 1
        args.compile_batch, args.no_compile = 2, True
        args.loader_images, args.loader_epochs = 16, 2
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in PEAK_TFLOPS.items() if key in name), None)


def new_model(args: argparse.Namespace, device: torch.device, channels_last: bool):
    torch.manual_seed(0)
    model = build_model("swin_t", NUM_CLASSES, "none", 0.2, args.size)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=layout)


def flops_per_image(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Model FLOPs of one image: forward (eval) and forward + backward (train), eager."""
    model = new_model(args, device, channels_last=False)
    precision = precision_for(device, True, "bfloat16")
    batch = 2
    x = torch.randn(batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        forward_loss(model.eval(), x, y, precision)
    forward = counter.get_total_flops() / batch
    with FlopCounterMode(display=False) as counter:
        _, loss = forward_loss(model.train(), x, y, precision)
        loss.backward()
    train = counter.get_total_flops() / batch
    del model
    return {"forward": forward, "train": train}


def measure(
    args: argparse.Namespace,
    device: torch.device,
    batch: int,
    dtype: str,
    channels_last: bool,
    compiled: bool,
) -> dict[str, Any]:
    """Train and eval images/s of one configuration, through train_one_epoch and infer."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = new_model(args, device, channels_last)
    forward_model = torch.compile(model) if compiled else model
    precision = precision_for(device, True, dtype)
    scaler = make_scaler(precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-8)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, args.size, args.size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)

    def same(images: torch.Tensor) -> torch.Tensor:  # the batch is already the model's input
        return images

    def train(steps: int) -> float:
        sync(device)
        started = time.perf_counter()
        train_one_epoch(forward_model, [(x, y)] * steps, optimizer, scaler, same, precision)
        sync(device)
        return time.perf_counter() - started

    def evaluate(steps: int) -> float:
        sync(device)
        started = time.perf_counter()
        infer(forward_model, [(x, y)] * steps, same, precision)
        sync(device)
        return time.perf_counter() - started

    compile_s = train(args.warmup)  # includes the compile of the training graph, if any
    train_s = train(args.steps)
    compile_s += evaluate(args.warmup)
    eval_s = evaluate(args.steps)
    result = {
        "batch": batch,
        "dtype": dtype,
        "channels_last": channels_last,
        "compile": compiled,
        "train_images_per_s": batch * args.steps / train_s,
        "eval_images_per_s": batch * args.steps / eval_s,
        "train_step_s": train_s / args.steps,
        "eval_step_s": eval_s / args.steps,
        "warmup_s": compile_s,
        "scale": scaler.get_scale() if precision.use_scaler else None,
        "memory": memory_report(device),
    }
    return result


def build_pack(args: argparse.Namespace, base: Path) -> tuple[Any, Any, Any]:
    """A real pack for the loader: generated JPEGs -> validate -> prepare -> cache_images.
    Done before CUDA is touched (it forks a process pool). Returns (config, dataset, seconds)."""
    config = build_config("part1", overrides={"data.image_size": args.size})
    cold_cache_dir(base)
    write_dataset(base / "data", args.loader_images)
    stages = data_stages(config, base / "data", base / "runs")
    pack = stages.report.pack
    items = split_items(stages.run_dir, pack, stages.data.classes)
    dataset = CachedBatches(pack, items["row"].tolist(), items["label_idx"].tolist())
    return config, dataset, stages.seconds


def loader_images_per_s(
    args: argparse.Namespace, device: torch.device, config: Any, dataset: CachedBatches
) -> dict[str, Any]:
    """The cached loader feeding the device: CachedBatches + make_loader (pinned on CUDA) +
    DeviceNormalize to the device, with 0 and 2 workers."""
    to_input = DeviceNormalize(config.data.mean, config.data.std, device)
    batch = max(args.batches)
    results = {}
    for workers in (0, 2):
        loader = make_loader(dataset, batch, num_workers=workers, pin_memory=device.type == "cuda")
        for images, _ in loader:  # warm-up: start the workers, page the pack in
            to_input(images)
        sync(device)
        with Timer() as timer:
            for _ in range(args.loader_epochs):
                for images, labels in loader:
                    to_input(images)
                    labels.to(device, non_blocking=True)
            sync(device)
        results[workers] = len(dataset) * args.loader_epochs / timer.seconds
        del loader
    return {"batch": batch, "images_per_s": results}


def scaler_resume_check(device: torch.device) -> dict[str, Any]:
    """GradScaler state survives a save/load (as in state/last.pt): a fresh scaler given the
    saved state has the same scale and growth tracker."""
    precision = precision_for(device, True, "float16")
    model = torch.nn.Linear(16, NUM_CLASSES).to(device)
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = make_scaler(precision)
    x = torch.randn(8, 16, device=device)
    y = torch.randint(0, NUM_CLASSES, (8,), device=device)
    for step in range(3):
        _, loss = forward_loss(model, x, y, precision)
        if step == 1:
            loss = loss * float("inf")  # an overflow: the scaler backs off
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    buffer = io.BytesIO()
    torch.save({"scaler": scaler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, map_location="cpu", weights_only=True)
    fresh = make_scaler(precision)
    fresh.load_state_dict(state["scaler"])
    ok = fresh.get_scale() == scaler.get_scale() and fresh.state_dict() == scaler.state_dict()
    assert ok, (fresh.state_dict(), scaler.state_dict())
    return {"enabled": scaler.is_enabled(), "scale": scaler.get_scale(), "equal": ok}


def configurations(args: argparse.Namespace) -> list[tuple[int, str, bool, bool]]:
    """(batch, dtype, channels_last, compile): eager at --compile-batch first, then compiled at
    that batch (the pair to compare), then eager at the other batches; --budget-s cuts the
    tail, never the comparison."""
    eager = [
        (batch, dtype, channels_last, False)
        for batch, dtype, channels_last in itertools.product(
            args.batches, ("float16", "bfloat16"), (True, False)
        )
    ]
    first = [c for c in eager if c[0] == args.compile_batch]
    rest = [c for c in eager if c[0] != args.compile_batch]
    if args.no_compile:
        return first + rest
    dtypes = ("bfloat16", "float16") if args.compile_all else ("bfloat16",)
    return first + [(args.compile_batch, dtype, True, True) for dtype in dtypes] + rest


def print_results(rows: list[dict[str, Any]], peak: float | None, flops: dict[str, float]):
    header = (
        f"{'batch':>5} {'dtype':>8} {'NHWC':>5} {'compile':>7} {'train img/s':>11} "
        f"{'eval img/s':>10} {'train MFU':>9} {'eval MFU':>8} {'peak MiB':>9} {'warm-up s':>9}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['batch']:>5} {r['dtype']:>8} {r['channels_last']!s:>5} "
                  f"{r['compile']!s:>7}  {r['error']}")  # fmt: skip
            continue
        print(
            f"{r['batch']:>5} {r['dtype']:>8} {r['channels_last']!s:>5} {r['compile']!s:>7} "
            f"{r['train_images_per_s']:>11,.0f} {r['eval_images_per_s']:>10,.0f} "
            f"{_pct(r.get('train_mfu')):>9} {_pct(r.get('eval_mfu')):>8} "
            f"{r['memory'].get('peak_mib', r['memory'].get('rss_mib', 0)):>9,.0f} "
            f"{r['warmup_s']:>9.1f}"
        )
    print("-" * len(header))
    peak_text = f"{peak:.0f} TFLOPS peak" if peak else "peak unknown (pass --peak-tflops)"
    print(
        f"FLOPs per image: train {flops['train'] / 1e9:.1f} G, eval {flops['forward'] / 1e9:.1f} "
        f"G; MFU against {peak_text}"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main() -> None:
    args = parse_args()
    if not args.dry_run_cpu and not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU and none is visible: nothing measured.")
        emit({"bench": "gpu", "ratio": None, "skipped": "no CUDA GPU"})
        return
    with temp_dir("camtrap-bench-gpu-") as base:
        run(args, base)


def run(args: argparse.Namespace, base: Path) -> None:
    started = time.perf_counter()
    config, dataset, build_s = build_pack(args, base)
    device = torch.device("cpu" if args.dry_run_cpu else "cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as fit.fit sets it
    peak = peak_tflops(args, device)
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    flops = flops_per_image(args, device)
    scaler = scaler_resume_check(device)
    print(f"GradScaler resume check: {scaler}", flush=True)
    loader = loader_images_per_s(args, device, config, dataset)
    print(f"cached loader: {loader}", flush=True)
    rows: list[dict[str, Any]] = []
    for batch, dtype, channels_last, compiled in configurations(args):
        base = {"batch": batch, "dtype": dtype, "channels_last": channels_last}
        base["compile"] = compiled
        if time.perf_counter() - started > args.budget_s:
            rows.append({**base, "error": "skipped: --budget-s spent"})
            continue
        try:
            row = measure(args, device, batch, dtype, channels_last, compiled)
        except torch.OutOfMemoryError:
            rows.append({**base, "error": "out of memory"})
            continue
        except Exception as err:  # noqa: BLE001 - report it, go on with the others
            rows.append({**base, "error": f"{type(err).__name__}: {err}"[:200]})
            continue
        if peak:
            row["train_mfu"] = flops["train"] * row["train_images_per_s"] / (peak * 1e12)
            row["eval_mfu"] = flops["forward"] * row["eval_images_per_s"] / (peak * 1e12)
        rows.append(row)
        print(
            f"  batch {batch} {dtype} NHWC={channels_last} compile={compiled}: "
            f"train {row['train_images_per_s']:,.0f} img/s, eval "
            f"{row['eval_images_per_s']:,.0f} img/s",
            flush=True,
        )
    print_results(rows, peak, flops)
    done = [r for r in rows if "error" not in r]
    best = max(done, key=lambda r: r["train_images_per_s"]) if done else None
    loader_best = max(loader["images_per_s"].values())
    print(
        f"cached loader to {device.type} (batch {loader['batch']}): "
        + ", ".join(f"{w} workers {v:,.0f} img/s" for w, v in loader["images_per_s"].items())
    )
    if best:
        print(
            f"best train: {best['train_images_per_s']:,.0f} img/s (batch {best['batch']} "
            f"{best['dtype']} NHWC={best['channels_last']} compile={best['compile']})"
        )
    print(f"memory now: {memory_report(device)}; total {time.perf_counter() - started:.0f}s")
    ratio = loader_best / best["train_images_per_s"] if best else None
    emit(
        {
            "bench": "gpu",
            "ratio": ratio,
            "ratio_is": "cached loader images/s / best train images/s (> 1: not the bottleneck)",
            "device": name,
            "peak_tflops": peak,
            "flops_per_image": flops,
            "loader_images_per_s": {str(k): v for k, v in loader["images_per_s"].items()},
            "pack_build_s": build_s,
            "scaler_resume": scaler,
            "results": rows,
            "seconds": time.perf_counter() - started,
        }
    )


if __name__ == "__main__":
    sys.exit(main())
