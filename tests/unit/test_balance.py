"""Class balance: the loss weights computed by hand, the balanced sampler's class counts,
its determinism per (seed, epoch) (so a resumed run draws what an uninterrupted one did) and its
split across training processes; the weighted loss the engine optimises."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from camtrap.balance import EFFECTIVE_BETA, BalancedSampler, class_counts, class_weights
from camtrap.device import precision_for
from camtrap.engine import forward_loss


def test_inverse_weights_give_every_class_the_same_total():
    counts = class_counts([0, 0, 0, 1, 2, 2], 4)  # class 3 has no train image
    assert counts.tolist() == [3, 1, 2, 0]
    # N / (C n_c) = 6 / (4 * n_c)
    assert class_weights(counts, "inverse").tolist() == [0.5, 1.5, 0.75, 0.0]
    assert class_weights(counts, "none") is None
    with pytest.raises(ValueError, match="not one of none, inverse, effective"):
        class_weights(counts, "sqrt")


def test_effective_number_weights_by_hand():
    counts = np.array([1000, 10])
    raw = [(1 - EFFECTIVE_BETA) / (1 - EFFECTIVE_BETA**n) for n in (1000, 10)]
    expected = [r * 2 / sum(raw) for r in raw]  # normalised to sum to C = 2
    assert class_weights(counts, "effective") == pytest.approx(expected)
    # with beta 0.999, 1000 images count as ~632 "effective" ones, 10 as ~9.96
    assert expected[1] / expected[0] == pytest.approx((1 - 0.999**1000) / (1 - 0.999**10))


def test_the_balanced_sampler_draws_each_class_about_equally():
    targets = [0] * 90 + [1] * 9 + [2] * 1  # long-tailed: 90 / 9 / 1
    sampler = BalancedSampler(targets, seed=7)
    sampler.set_epoch(1)
    order = list(sampler)
    assert len(order) == 100  # as many draws as images
    counts = Counter(targets[i] for i in order)
    assert set(counts) == {0, 1, 2}
    assert all(20 <= counts[c] <= 47 for c in (0, 1, 2))  # 33.3 expected each (binomial)
    assert set(i for i in order if targets[i] == 2) == {99}  # the rare class: its one image


def test_the_order_depends_on_seed_and_epoch_alone():
    targets = [0, 0, 1, 1, 1, 2]
    first, again = BalancedSampler(targets, 3), BalancedSampler(targets, 3)
    first.set_epoch(4)
    again.set_epoch(4)
    assert list(first) == list(again)  # a resumed run draws epoch 4 as before
    again.set_epoch(5)
    assert list(first) != list(again)


def test_ranks_split_one_order_and_take_the_same_number_of_steps():
    targets = [0] * 5 + [1] * 2
    whole = BalancedSampler(targets, 1, rank=0, world=2)
    other = BalancedSampler(targets, 1, rank=1, world=2)
    order = whole.order()
    assert len(whole) == len(other) == 4  # ceil(7 / 2)
    assert list(whole) == order[0::2] and list(other) == order[1::2]


def test_the_engine_optimises_the_weighted_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1, 1])
    weight = torch.tensor([0.25, 2.0])
    model = torch.nn.Identity()
    _, loss = forward_loss(model, logits, targets, precision_for(torch.device("cpu"), False),
                           class_weight=weight)  # fmt: skip
    nll = -torch.log_softmax(logits, dim=1)[torch.arange(3), targets]
    expected = (0.25 * nll[0] + 2.0 * nll[1] + 2.0 * nll[2]) / (0.25 + 2.0 + 2.0)
    assert loss.item() == pytest.approx(expected.item())
