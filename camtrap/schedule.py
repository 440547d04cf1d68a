"""The learning rate per optimizer step: a linear warm-up, then constant or a cosine decay to 0.

The rate is a function of the step count alone, so the count (in state/last.pt) is the whole
state: a resumed run goes on with exactly the rates an uninterrupted run used. (Not a torch
LRScheduler: those warn when fp16's GradScaler skips the first optimizer.step, and a stateful
lambda would bring an old step total back on resume.)"""

from __future__ import annotations

import math
from typing import Any

import torch

from camtrap.config import TrainConfig


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The learning rate of optimizer step `step` (0-based) as a share of train.lr: (step + 1) /
    warmup_steps during the warm-up, then 1 ("none") or half a cosine from 1 at the warm-up's
    end to 0 at step `total_steps` ("cosine"; the last step, total_steps - 1, is just above 0)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "none":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class StepSchedule:
    """Sets the optimizer's learning rate before each step; `step()` after each training step."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        total_steps: int,
        warmup_steps: int,
        schedule: str,
    ) -> None:
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.steps_done = 0
        self._apply()

    def lr(self) -> float:
        """The rate of the next step."""
        factor = lr_factor(self.steps_done, self.total_steps, self.warmup_steps, self.schedule)
        return self.base_lr * factor

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()

    def step(self) -> None:
        self.steps_done += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self._apply()


def make_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> StepSchedule | None:
    """The schedule `config` asks for, None for a constant rate (part1: the optimizer's lr is
    never touched)."""
    if config.schedule == "none" and config.warmup_epochs == 0:
        return None
    warmup = round(config.warmup_epochs * steps_per_epoch)
    return StepSchedule(
        optimizer, config.lr, config.epochs * steps_per_epoch, warmup, config.schedule
    )
