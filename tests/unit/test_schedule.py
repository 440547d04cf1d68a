"""camtrap.schedule: warm-up then cosine decay, per optimizer step, resumed from its count."""

import math

import pytest
import torch
from torch import nn

from camtrap.config import build_config
from camtrap.schedule import StepSchedule, lr_factor, make_schedule


def test_warm_up_ramps_linearly_then_cosine_decays_to_zero():
    # 10 steps, 2 of warm-up: lr/2, lr, then half a cosine over the 8 steps left.
    factors = [lr_factor(step, 10, 2, "cosine") for step in range(11)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[6] == pytest.approx(0.5)  # halfway through the decay: cos(pi/2) = 0
    assert factors[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))  # 0.0190
    assert factors[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:], strict=False))
    assert [lr_factor(s, 10, 2, "none") for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(0, 10, 0, "cosine") == 1.0  # no warm-up: the decay starts at lr


def test_step_schedule_sets_the_optimizer_rate_and_resumes_from_its_count():
    def optimizer():
        return torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)

    opt = optimizer()
    schedule = StepSchedule(opt, 1e-3, total_steps=10, warmup_steps=2, schedule="cosine")
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(6):
        schedule.step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-3 * lr_factor(s, 10, 2, "cosine") for s in range(7)])
    resumed_opt = optimizer()
    resumed = StepSchedule(resumed_opt, 1e-3, 10, 2, "cosine")
    resumed.load_state_dict(schedule.state_dict())
    assert schedule.state_dict() == {"steps_done": 6}
    assert resumed_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_part1_has_no_schedule_and_part2_counts_warm_up_in_steps():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-5)
    assert make_schedule(opt, build_config("part1").train, 100) is None
    part2 = build_config("part2", overrides={"model.init_from": "x.pth"}).train
    schedule = make_schedule(opt, part2, 100)
    assert (schedule.total_steps, schedule.warmup_steps) == (15 * 100, 100)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5 / 100)  # the first warm-up step
