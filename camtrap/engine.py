"""One epoch of training or evaluation. Returns what it saw (targets, probabilities, loss); writes
nothing. AMP has one code path: autocast and GradScaler are switched by `enabled=`.

Numerics are loud: a step whose loss is NaN or infinite is not applied (the weights stay the last
good ones) and is counted; `MAX_NONFINITE_IN_A_ROW` of them in a row raise TrainingDiverged. A
batch that does not fit in memory raises OutOfMemory naming its size."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from camtrap.device import Precision
from camtrap.errors import OutOfMemory, TrainingDiverged
from camtrap.ranks import all_finite

log = logging.getLogger("camtrap")

# A lone NaN/inf loss is survivable (one odd batch, an fp16 overflow in the forward pass): skip
# the step and go on. Three in a row means the weights or the learning rate are the problem;
# stopping then costs at most three wasted steps instead of an epoch of skipped ones.
MAX_NONFINITE_IN_A_ROW = 3

_FIX_DIVERGED = (
    "lower train.lr (e.g. --set train.lr={lower:g}); with train.amp keep amp_dtype float16 and its "
    "GradScaler, or use train.amp_dtype=bfloat16 (float16 overflows where bfloat16 does not)"
)

T = TypeVar("T")


@dataclass
class EpochOutputs:
    """Everything one pass over a loader produced, on the CPU.

    In training, the batches of steps not applied because their loss was not finite are left
    out of targets, probs and loss (their probabilities are NaN and would make every metric
    NaN); `nonfinite_steps` counts them. Steps fp16's GradScaler skipped (scaled gradients
    overflowed, the loss itself finite) are normal, kept, and counted in `skipped_steps`."""

    targets: np.ndarray  # (n,) int
    probs: np.ndarray  # (n, n_classes) float32, softmax of the logits
    loss: float  # mean per-sample cross entropy, as optimised
    seconds: float
    skipped_steps: int = 0  # GradScaler (fp16) found inf/NaN gradients: no update, scale lowered
    nonfinite_steps: int = 0  # loss NaN/inf: no update, batch left out of the outputs

    @property
    def images_per_second(self) -> float:
        return len(self.targets) / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def combine(cls, parts: Sequence[EpochOutputs]) -> EpochOutputs:
        """Several training processes' outputs of one epoch as one: images in rank order, the
        loss averaged over every image, the slowest rank's time. Step counts are the same on
        every rank (gradients are averaged and a non-finite loss skips a step everywhere): the
        largest is kept."""
        n = [len(p.targets) for p in parts]
        return cls(
            targets=np.concatenate([p.targets for p in parts]),
            probs=np.concatenate([p.probs for p in parts]),
            loss=float(sum(p.loss * k for p, k in zip(parts, n, strict=True)) / sum(n)),
            seconds=max(p.seconds for p in parts),
            skipped_steps=max(p.skipped_steps for p in parts),
            nonfinite_steps=max(p.nonfinite_steps for p in parts),
        )


# A loader's images -> the model's input on the device (camtrap.loader.DeviceNormalize).
ToInput = Callable[[torch.Tensor], torch.Tensor]
# A loader's images and the step (1-based) -> the model's augmented input (camtrap.augment).
Augment = Callable[[torch.Tensor, int], torch.Tensor]


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

    def finish(
        self, started: float, skipped_steps: int = 0, nonfinite_steps: int = 0
    ) -> EpochOutputs:
        if not self.targets:
            raise ValueError("the loader yielded no batches")
        targets = torch.cat(self.targets).cpu().numpy().astype(np.int64)
        probs = torch.cat(self.probs).cpu().numpy().astype(np.float32)
        loss = float(self.loss_sum) / len(targets)
        seconds = time.perf_counter() - started
        return EpochOutputs(targets, probs, loss, seconds, skipped_steps, nonfinite_steps)


def forward_loss(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    precision: Precision,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and mean cross entropy (with `label_smoothing` and per-class `class_weight`:
    training only; weighted, the mean is over the weights, as torch's), under autocast when
    AMP is on (the one AMP path)."""
    with torch.autocast(precision.device_type, dtype=precision.dtype, enabled=precision.enabled):
        logits = model(images)
        # cross entropy in fp32 whatever the logits' dtype: fp16 log-softmax loses precision
        loss = nn.functional.cross_entropy(
            logits.float(), targets, weight=class_weight, label_smoothing=label_smoothing
        )
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
    *,
    epoch: int | None = None,
    max_nonfinite: int = MAX_NONFINITE_IN_A_ROW,
    augment: Augment | None = None,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
    after_step: Callable[[], None] | None = None,
) -> EpochOutputs:
    """One step per batch of `loader`. `epoch` (1-based) names where, in errors and logs.

    `augment(images, step)` makes the model's input instead of `to_input`; `label_smoothing`
    and `class_weight` (train.class_weights, camtrap.balance) apply to the optimised loss (the
    reported train loss is that loss); `after_step` runs after every batch's step, applied or
    not (a learning-rate schedule: the rate is then a function of the step count alone).

    A step whose loss is not finite is not applied; `max_nonfinite` of them in a row, or an
    epoch with no finite step at all, raise TrainingDiverged. A batch that does not fit in
    memory raises OutOfMemory."""
    model.train()
    acc = _Accumulator()
    guard = _NonFiniteGuard(max_nonfinite, epoch, optimizer)
    scale = _ScaleWatch(scaler)
    skipped = 0
    started = time.perf_counter()
    for step, (images, labels) in enumerate(
        tqdm(loader, desc=desc, disable=not progress, leave=False), start=1
    ):
        targets = labels.to(precision.device_type, non_blocking=True)
        make_input = to_input if augment is None else partial(augment, step=step)
        run = partial(_train_step, model, images, targets, optimizer, scaler, make_input,
                      precision, label_smoothing, class_weight)  # fmt: skip
        logits, loss = _fits_in_memory("train", images, model, precision.device_type, run)
        if after_step is not None:
            after_step()
        if logits is None:
            guard.not_finite(step, loss.item())
            continue
        guard.finite()
        skipped += scale.lowered()
        acc.add(logits, targets, loss)
    if guard.total and not acc.targets:
        raise guard.nothing_applied()
    return acc.finish(started, skipped, guard.total)


def _train_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    to_input: ToInput,
    precision: Precision,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One optimisation step: (logits, loss), detached; logits is None when the loss was not
    finite and the step was not applied (gradients cleared, weights and scaler untouched)."""
    logits, loss = forward_loss(model, to_input(images), targets, precision, label_smoothing,
                                class_weight)  # fmt: skip
    optimizer.zero_grad(set_to_none=True)
    # The one host sync per step we pay on purpose (correctness first): whether the step may
    # touch the weights must be known before optimizer.step, and without a GradScaler (fp32,
    # bf16) nothing else keeps a NaN out of them. Checked before backward, so a bad step costs
    # no backward pass and does not lower fp16's loss scale. (fp16's scaler.step syncs anyway.)
    # With several training processes every rank must agree (camtrap.ranks.all_finite).
    if not all_finite(loss):
        return None, loss.detach()  # the forward graph is dropped on return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return logits.detach(), loss.detach()


class _NonFiniteGuard:
    """Counts the steps of an epoch whose loss was NaN/inf; raises TrainingDiverged at `limit`
    in a row. A finite step resets the run: isolated bad batches are survivable."""

    def __init__(self, limit: int, epoch: int | None, optimizer: torch.optim.Optimizer) -> None:
        if limit < 1:
            raise ValueError(f"max_nonfinite must be at least 1, not {limit}")
        self.limit = limit
        self.epoch = epoch
        self.optimizer = optimizer
        self.in_a_row = 0
        self.total = 0
        self.last_loss = float("nan")

    def finite(self) -> None:
        self.in_a_row = 0

    def not_finite(self, step: int, loss: float) -> None:
        self.in_a_row += 1
        self.total += 1
        self.last_loss = loss
        where = self._where(step)
        if self.in_a_row >= self.limit:
            first = step - self.in_a_row + 1
            raise TrainingDiverged(
                f"training diverged at {where}: the loss was {loss} in {self.in_a_row} steps in a "
                f"row (steps {first}-{step} were not applied; the weights are those from before "
                f"step {first}) — fix: {self._fix()}"
            )
        log.warning(
            "%s: loss %s, step not applied (%d in a row; %d in a row stop training)",
            where, loss, self.in_a_row, self.limit,
        )  # fmt: skip

    def nothing_applied(self) -> TrainingDiverged:
        """The error for an epoch shorter than `limit` in which no loss was finite."""
        where = f"epoch {self.epoch}" if self.epoch is not None else "this epoch"
        return TrainingDiverged(
            f"training diverged in {where}: the loss was not finite in any of its {self.total} "
            f"steps (last {self.last_loss}); none was applied — fix: {self._fix()}"
        )

    def _where(self, step: int) -> str:
        return f"epoch {self.epoch}, step {step}" if self.epoch is not None else f"step {step}"

    def _fix(self) -> str:
        lr = self.optimizer.param_groups[0]["lr"]
        return f"(train.lr is {lr:g}) " + _FIX_DIVERGED.format(lower=lr / 10)


class _ScaleWatch:
    """Counts the steps an fp16 GradScaler skipped. update() multiplies the scale by its
    backoff_factor (< 1) exactly when the step found inf/NaN gradients and skipped
    optimizer.step, and never lowers it otherwise; GradScaler keeps found_inf itself private."""

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self.scaler = scaler
        self.scale = scaler.get_scale() if scaler.is_enabled() else None

    def lowered(self) -> bool:
        """Whether the update just made lowered the scale (the step was skipped)."""
        if self.scale is None:
            return False
        # A host sync, but a cheap one: scaler.step has already waited for this step's check.
        scale = self.scaler.get_scale()
        lowered, self.scale = scale < self.scale, scale
        return lowered


@torch.no_grad()
def infer(
    model: nn.Module,
    loader: DataLoader,
    to_input: ToInput,
    precision: Precision,
    progress: bool = False,
    desc: str = "val",
) -> EpochOutputs:
    """The model's outputs on every batch of `loader`; OutOfMemory when a batch does not fit."""
    model.eval()
    acc = _Accumulator()
    started = time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False):
        targets = labels.to(precision.device_type, non_blocking=True)
        run = partial(_eval_step, model, images, targets, to_input, precision)
        logits, loss = _fits_in_memory("eval", images, model, precision.device_type, run)
        acc.add(logits, targets, loss)
    return acc.finish(started)


def _eval_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    to_input: ToInput,
    precision: Precision,
) -> tuple[torch.Tensor, torch.Tensor]:
    """forward_loss on a loader's batch, made the model's input first."""
    return forward_loss(model, to_input(images), targets, precision)


# --- out of memory ------------------------------------------------------------------------------


def _fits_in_memory(
    phase: str, images: torch.Tensor, model: nn.Module, device_type: str, step: Callable[[], T]
) -> T:
    """`step()`, with torch's out-of-memory error turned into OutOfMemory naming the batch."""
    try:
        return step()
    except torch.OutOfMemoryError:
        # Raised below, outside this handler: the torch error (its traceback holds the step's
        # activations) must be gone before the memory can be handed back.
        pass
    model.zero_grad(set_to_none=True)  # last step's gradients: not needed, often large
    gc.collect()
    if device_type == "cuda":
        torch.cuda.empty_cache()
    raise OutOfMemory(out_of_memory_message(phase, tuple(images.shape), device_type))


def out_of_memory_message(phase: str, shape: tuple[int, ...], device_type: str) -> str:
    """What did not fit (from the loader batch's shape) and which setting to lower."""
    n = shape[0] if shape else 0
    key = "train.batch_size" if phase == "train" else "train.eval_batch_size"
    fix = f"lower {key} (e.g. --set {key}={max(1, n // 2)})"
    if phase != "train":
        fix += "; it defaults to twice train.batch_size"
    step = "a training step" if phase == "train" else "an evaluation step"
    return (
        f"out of memory on {device_type} in {step}: {_describe_batch(shape)} did not fit "
        f"— fix: {fix}, or a smaller data.image_size"
    )


def _describe_batch(shape: tuple[int, ...]) -> str:
    n = shape[0] if shape else 0
    if len(shape) != 4:
        return f"a batch of {n} items of shape {tuple(shape[1:])}"
    # camtrap's loaders yield uint8 (B, s, s, 3) cache rows; a model's input is (B, 3, s, s)
    height, width = (shape[1], shape[2]) if shape[3] in (1, 3, 4) else (shape[2], shape[3])
    return f"a batch of {n} images of {height}x{width} px"
