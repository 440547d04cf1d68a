"""camtrap.engine: one epoch of training or inference on tiny models; NaN and inf losses,
fp16 skipped steps, out-of-memory, label smoothing, outputs combined across ranks."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from camtrap.device import Precision, make_scaler, precision_for
from camtrap.engine import MAX_NONFINITE_IN_A_ROW, EpochOutputs, infer, train_one_epoch
from camtrap.errors import (
    CamtrapError,
    OutOfMemory,
    TrainingDiverged,
)


def _as_is(images: torch.Tensor) -> torch.Tensor:
    return images


def _loader(x, y, batch_size=2):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def test_predict_reports_mean_per_sample_loss_and_softmax():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    out = infer(model, _loader(x, y), _as_is, precision_for(torch.device("cpu"), False))
    # logits = x; CE([0,0], any) = ln 2; CE([1,0], 0) = ln(1 + e^-1)
    expected = (2 * np.log(2) + np.log(1 + np.exp(-1))) / 3
    assert out.loss == pytest.approx(expected, rel=1e-6)  # batches of 2 and 1, weighted by size
    assert out.probs[1] == pytest.approx([1 / (1 + np.exp(-1)), 1 - 1 / (1 + np.exp(-1))], rel=1e-6)
    assert out.targets.tolist() == [0, 0, 1]


def test_train_one_epoch_updates_weights_and_lowers_loss():
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    y = (x[:, 0] > 0).long()  # learnable: the sign of the first feature
    model = nn.Linear(4, 2)
    cpu = torch.device("cpu")
    precision = precision_for(cpu, amp=True)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = make_scaler(precision)
    losses = [
        train_one_epoch(model, _loader(x, y, 8), opt, scaler, _as_is, precision).loss
        for _ in range(5)
    ]
    assert losses[-1] < losses[0] * 0.8


def _outputs(targets, loss, seconds, skipped=0):
    probs = np.eye(3, dtype=np.float32)[targets]
    return EpochOutputs(np.asarray(targets), probs, loss, seconds, skipped, 0)


def test_combine_outputs_weights_the_loss_by_images():
    both = EpochOutputs.combine(
        [_outputs([0, 1], loss=1.0, seconds=2.0, skipped=1), _outputs([2], 4.0, 5.0, 1)]
    )
    assert both.targets.tolist() == [0, 1, 2]
    assert both.probs.shape == (3, 3) and both.probs[2].tolist() == [0, 0, 1]
    assert both.loss == pytest.approx((1.0 * 2 + 4.0 * 1) / 3)  # 2.0, not the mean 2.5
    assert both.seconds == 5.0
    assert both.skipped_steps == 1  # the same step skipped on every rank, counted once


# --- NaN / inf losses -----------------------------------------------------------------------------

CPU = Precision("cpu", False, torch.float32)


class NanOnCalls(nn.Module):
    """A linear layer whose output is NaN on the forward calls numbered in `bad` (1-based); the
    NaN comes through the layer, so backward would carry it into every gradient."""

    def __init__(self, weight: torch.Tensor, bad: set[int]) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
        self.bad = bad
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.linear(x)
        return out * float("nan") if self.calls in self.bad else out


def _data(batches: int, batch_size: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * batch_size, 3, generator=g)
    y = torch.randint(0, 2, (batches * batch_size,), generator=g)
    return x, y


def _ordered_loader(x, y, batch_size: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)  # in order: step k = batch k


def _model(bad: set[int]) -> NanOnCalls:
    weight = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    return NanOnCalls(weight, bad)


def _train(model, x, y, epoch=None, **kwargs):
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return train_one_epoch(
        model, _ordered_loader(x, y), optimizer, scaler, _as_is, CPU, epoch=epoch, **kwargs
    )


def test_nan_losses_in_a_row_raise_diverged_naming_epoch_step_and_fix():
    x, y = _data(batches=6)
    model = _model(bad={3, 4, 5})
    reference = _model(bad=set())
    _train(reference, x[:8], y[:8])  # steps 1-2 only: what the weights must still be

    with pytest.raises(TrainingDiverged) as err:
        _train(model, x, y, epoch=2)

    text = str(err.value)
    # steps 3, 4, 5 are NaN: the third in a row, step 5, stops training
    assert "epoch 2, step 5" in text and "loss was nan in 3 steps in a row" in text
    assert "steps 3-5 were not applied" in text
    assert "train.lr is 0.1" in text and "--set train.lr=0.01" in text and "bfloat16" in text
    assert isinstance(err.value, CamtrapError)
    assert model.calls == 5  # stopped at once, step 6 never ran
    assert torch.equal(model.linear.weight, reference.linear.weight)


def test_infinite_loss_counts_like_nan():
    x, y = _data(batches=3)
    x[4:] = float("inf")  # batches 2 and 3: inf inputs give inf/NaN logits
    with pytest.raises(TrainingDiverged, match="step 3"):
        _train(_model(bad=set()), x, y, epoch=1, max_nonfinite=2)


def test_fewer_nan_steps_than_the_limit_skip_them_and_keep_the_last_good_weights():
    assert MAX_NONFINITE_IN_A_ROW == 3
    x, y = _data(batches=3)
    model = _model(bad={2})
    reference = _model(bad=set())
    first = _train(reference, x[:4], y[:4])  # step 1 alone

    out = _train(model, x[:8], y[:8], epoch=1)  # step 1, then a NaN step 2

    # the NaN step changed nothing: not the weights, not AdamW's state
    assert torch.equal(model.linear.weight, reference.linear.weight)
    assert out.nonfinite_steps == 1 and out.skipped_steps == 0
    # its batch is left out: the outputs are step 1's alone, so metrics stay finite
    assert out.targets.tolist() == y[:4].tolist()
    assert out.loss == first.loss and np.isfinite(out.probs).all()


def test_a_finite_step_resets_the_run_of_nan_steps():
    x, y = _data(batches=7)
    # two runs of 2 NaN steps, split by the finite step 4: never 3 in a row
    out = _train(_model(bad={2, 3, 5, 6}), x, y, epoch=1)
    assert out.nonfinite_steps == 4
    assert out.targets.tolist() == torch.cat([y[0:4], y[12:16], y[24:28]]).tolist()


def test_an_epoch_without_one_finite_step_diverged_even_if_shorter_than_the_limit():
    x, y = _data(batches=2)
    message = "in epoch 4: the loss was not finite in any of its 2 steps"
    with pytest.raises(TrainingDiverged, match=message):
        _train(_model(bad={1, 2}), x, y, epoch=4)


# --- fp16: steps the GradScaler skips -------------------------------------------------------------


def test_fp16_scaler_skipped_steps_are_counted_and_not_divergence():
    # One sample per step, x = 4, zero weights: p = (0.5, 0.5), dL/dW = (p - onehot(0)) * 4
    # = (-2, 2). Scaled by 2^127 that is 2^128: inf in float32, so step 1 is skipped and the
    # scale halves; at 2^126 step 2's gradients fit and are applied: W = 0 - 0.1 * (-2, 2).
    model = nn.Linear(1, 2, bias=False)
    nn.init.zeros_(model.weight)
    x, y = torch.full((2, 1), 4.0), torch.zeros(2, dtype=torch.long)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, enabled=True)

    out = train_one_epoch(model, _ordered_loader(x, y, 1), optimizer, scaler, _as_is, CPU, epoch=1)

    assert out.skipped_steps == 1 and out.nonfinite_steps == 0
    assert scaler.get_scale() == 2.0**126
    assert model.weight.view(-1).tolist() == pytest.approx([0.2, -0.2], rel=1e-6)
    # a skipped step's loss was finite: its batch stays in the outputs
    assert out.targets.tolist() == [0, 0] and out.loss == pytest.approx(math.log(2), rel=1e-6)


# --- out of memory --------------------------------------------------------------------------------


class OutOfMemoryOnCall(nn.Module):
    """Raises torch's out-of-memory error on forward call `when` (1-based), as CUDA would."""

    def __init__(self, when: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 2)
        self.when = when
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.when:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.linear(x.float().flatten(1))


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    # the image cache's batch layout: uint8 (B, s, s, 3)
    return torch.zeros(n, 8, 8, 3, dtype=torch.uint8), torch.zeros(n, dtype=torch.long)


def test_out_of_memory_in_training_names_the_batch_and_frees_the_gradients():
    model = OutOfMemoryOnCall(when=2)  # step 1 leaves gradients; step 2 runs out of memory
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(OutOfMemory) as err:
        train_one_epoch(model, _ordered_loader(*_images(12), 6), optimizer, scaler, _as_is, CPU)
    text = str(err.value)
    assert "out of memory on cpu in a training step: a batch of 6 images of 8x8 px" in text
    assert "fix: lower train.batch_size (e.g. --set train.batch_size=3)" in text
    assert isinstance(err.value, CamtrapError)  # Prefect tasks do not retry these
    assert all(p.grad is None for p in model.parameters())
    # the torch error (and the step's tensors its traceback holds) is not kept alive
    assert err.value.__context__ is None and err.value.__cause__ is None


def test_out_of_memory_in_evaluation_points_at_eval_batch_size():
    with pytest.raises(OutOfMemory) as err:
        infer(OutOfMemoryOnCall(when=1), _ordered_loader(*_images(5), 5), _as_is, CPU)
    text = str(err.value)
    assert "in an evaluation step: a batch of 5 images of 8x8 px did not fit" in text
    assert "lower train.eval_batch_size (e.g. --set train.eval_batch_size=2)" in text


def test_label_smoothing_changes_the_train_loss_only():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 12, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    loader = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    model = nn.Linear(12, 4)
    torch.nn.init.normal_(model.weight, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay: losses comparable
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    identity = lambda x: x  # noqa: E731

    smoothed = train_one_epoch(model, loader, optimizer, scaler, identity, CPU,
                               label_smoothing=0.1)  # fmt: skip
    plain = train_one_epoch(model, loader, optimizer, scaler, identity, CPU)
    val = infer(model, loader, identity, CPU)

    log_p = torch.log_softmax(model(images), dim=1).detach().numpy()
    nll = -log_p[np.arange(6), labels.numpy()]
    # (1 - e) * (-log p_true) + e * mean over the classes of (-log p_k), e = 0.1
    expected = float(np.mean(0.9 * nll + 0.1 * -log_p.mean(axis=1)))
    assert smoothed.loss == pytest.approx(expected, rel=1e-5)
    assert plain.loss == pytest.approx(float(nll.mean()), rel=1e-5)
    assert abs(smoothed.loss - plain.loss) > 0.01
    assert val.loss == pytest.approx(float(nll.mean()), rel=1e-5)  # evaluation: plain
    np.testing.assert_allclose(smoothed.probs, val.probs, rtol=1e-5)
