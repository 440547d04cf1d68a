"""camtrap.device: AMP only on CUDA (fp16 with a scaler, bf16 without), memory reports."""

import torch

from camtrap.device import Precision, make_scaler, memory_report, precision_for


def test_amp_is_off_on_cpu_even_when_asked():
    p = precision_for(torch.device("cpu"), amp=True)
    assert not p.enabled and not p.use_scaler
    assert not make_scaler(p).is_enabled()


def test_fp16_amp_uses_a_scaler_bf16_does_not():
    # Built by hand: what precision_for returns on a GPU (no GPU needed to check the rule).

    assert Precision("cuda", True, torch.float16).use_scaler
    assert not Precision("cuda", True, torch.bfloat16).use_scaler
    assert not Precision("cuda", False, torch.float16).use_scaler


def test_memory_report_on_cpu_is_process_rss():
    report = memory_report(torch.device("cpu"))
    assert set(report) == {"rss_mib"} and report["rss_mib"] > 10
