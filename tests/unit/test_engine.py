import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from camtrap.device import make_scaler, memory_report, precision_for
from camtrap.engine import infer, train_one_epoch


def test_amp_is_off_on_cpu_even_when_asked():
    p = precision_for(torch.device("cpu"), amp=True)
    assert not p.enabled and not p.use_scaler
    assert not make_scaler(p).is_enabled()


def test_fp16_amp_uses_a_scaler_bf16_does_not():
    # Built by hand: what precision_for returns on a GPU (no GPU needed to check the rule).
    from camtrap.device import Precision

    assert Precision("cuda", True, torch.float16).use_scaler
    assert not Precision("cuda", True, torch.bfloat16).use_scaler
    assert not Precision("cuda", False, torch.float16).use_scaler


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


def test_memory_report_on_cpu_is_process_rss():
    report = memory_report(torch.device("cpu"))
    assert set(report) == {"rss_mib"} and report["rss_mib"] > 10
