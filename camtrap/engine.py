"""One epoch of training or evaluation. Returns what it saw (targets, probabilities, loss); writes
nothing. AMP has one code path: autocast and GradScaler are switched by `enabled=`."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psutil
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

log = logging.getLogger("camtrap")


@dataclass(frozen=True)
class Precision:
    """Mixed precision settings for one device. On CPU AMP is always off (bf16 autocast is ~20x
    slower than fp32 on the CPUs we run tests on)."""

    device_type: str
    enabled: bool
    dtype: torch.dtype

    @property
    def use_scaler(self) -> bool:
        # bf16 has fp32's range: no loss scaling needed. fp16 underflows without it.
        return self.enabled and self.dtype == torch.float16


def precision_for(device: torch.device, amp: bool, dtype_name: str = "float16") -> Precision:
    enabled = amp and device.type == "cuda"
    dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float16
    if enabled and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bfloat16; using float16 with loss scaling")
        dtype = torch.float16
    return Precision(device.type, enabled, dtype)


def make_scaler(precision: Precision) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(precision.device_type, enabled=precision.use_scaler)


@dataclass
class EpochOutputs:
    """Everything one pass over a loader produced, on the CPU."""

    targets: np.ndarray  # (n,) int
    probs: np.ndarray  # (n, n_classes) float32, softmax of the logits
    loss: float  # mean per-sample cross entropy, as optimised
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.targets) / self.seconds if self.seconds > 0 else 0.0


# A loader's images -> the model's input on the device (camtrap.data.DeviceNormalize).
ToInput = Callable[[torch.Tensor], torch.Tensor]


class _Accumulator:
    """Collects per-batch results on the device; one transfer to the CPU at the end of the epoch
    (no per-step .item() synchronisation)."""

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.probs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        self.loss_sum = self.loss_sum + loss.detach().float() * targets.shape[0]
        self.probs.append(torch.softmax(logits.detach().float(), dim=1))
        self.targets.append(targets.detach())

    def finish(self, started: float) -> EpochOutputs:
        if not self.targets:
            raise ValueError("the loader yielded no batches")
        targets = torch.cat(self.targets).cpu().numpy().astype(np.int64)
        probs = torch.cat(self.probs).cpu().numpy().astype(np.float32)
        loss = float(self.loss_sum) / len(targets)
        return EpochOutputs(targets, probs, loss, time.perf_counter() - started)


def forward_loss(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, precision: Precision
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and mean cross entropy, under autocast when AMP is on (the one AMP path)."""
    with torch.autocast(precision.device_type, dtype=precision.dtype, enabled=precision.enabled):
        logits = model(images)
        # cross entropy in fp32 whatever the logits' dtype: fp16 log-softmax loses precision
        loss = nn.functional.cross_entropy(logits.float(), targets)
    return logits, loss


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    to_input: ToInput,
    precision: Precision,
    progress: bool = False,
    desc: str = "train",
) -> EpochOutputs:
    model.train()
    acc = _Accumulator()
    started = time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False):
        targets = labels.to(precision.device_type, non_blocking=True)
        logits, loss = forward_loss(model, to_input(images), targets, precision)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        acc.add(logits, targets, loss)
    return acc.finish(started)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    to_input: ToInput,
    precision: Precision,
    progress: bool = False,
    desc: str = "val",
) -> EpochOutputs:
    model.eval()
    acc = _Accumulator()
    started = time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False):
        targets = labels.to(precision.device_type, non_blocking=True)
        logits, loss = forward_loss(model, to_input(images), targets, precision)
        acc.add(logits, targets, loss)
    return acc.finish(started)


def memory_report(device: torch.device) -> dict[str, float]:
    """GPU memory (allocated / reserved / peak, MiB) on CUDA; process resident memory on CPU."""
    mib = 1024**2
    if device.type == "cuda":
        return {
            "allocated_mib": torch.cuda.memory_allocated(device) / mib,
            "reserved_mib": torch.cuda.memory_reserved(device) / mib,
            "peak_mib": torch.cuda.max_memory_allocated(device) / mib,
        }
    return {"rss_mib": psutil.Process().memory_info().rss / mib}


def log_memory(point: str, device: torch.device) -> dict[str, float]:
    report = memory_report(device)
    log.info("memory %-22s %s", point, "  ".join(f"{k}={v:,.0f}" for k, v in report.items()))
    return report


def release_memory(device: torch.device) -> None:
    """The seed's per-epoch cleanup of GPU memory: Python garbage first (tensors held only by
    reference cycles), then the CUDA caching allocator. On CPU there is nothing to hand back,
    and a full collection costs about half a second of every epoch."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
