"""The device a run uses, its mixed precision, and its memory: one place for what differs between
CPU and CUDA, so the training and evaluation code has one path for both.

AMP: autocast + GradScaler on CUDA (fp16 with loss scaling, or bf16 without where the GPU has it);
on CPU always off (bf16 autocast is ~20x slower than fp32 on the CPUs we run tests on)."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

import psutil
import torch

from camtrap.errors import ConfigError

log = logging.getLogger("camtrap")


def resolve_device(name: str) -> torch.device:
    """train.device (or predict's --device) as a torch device: "auto" is CUDA when visible."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
