"""Devices said out loud: a missing GPU is an error or one warning, never silence; the
precision follows what the GPU does natively."""

from __future__ import annotations

import logging

import pytest
import torch

from pipeline_tasks import runtime
from pipeline_tasks.runtime import DeviceError, choose_precision, resolve_runtime

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")


@needs_no_gpu
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match=r"finetune.device: cuda, but no CUDA GPU .*finetune.device: auto"):
        resolve_runtime("cuda", "auto", "finetune")


@needs_no_gpu
def test_auto_falls_back_to_the_cpu_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runtime, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="pipeline_tasks.runtime"):
        found = [resolve_runtime("auto", "auto", stage) for stage in ("pretrain", "finetune", "evaluate")]
    warnings = [r for r in caplog.records if "found no CUDA GPU" in r.getMessage()]
    assert len(warnings) == 1
    assert all(r.fell_back and r.device.type == "cpu" and r.precision == "fp32" for r in found)
    assert found[0].describe()["device"] == "cpu" and "CPU" in found[0].describe()["device_name"]
    caplog.clear()
    resolve_runtime("cpu", "auto", "pretrain")  # asked for: no warning
    assert not caplog.records


def test_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    monkeypatch.setattr(runtime, "_native_bf16", lambda: False)
    assert choose_precision("auto", cuda, "pretrain.precision") == "fp16"  # scaler, not emulated bf16
    assert choose_precision("bf16", cuda, "pretrain.precision") == "fp16"
    monkeypatch.setattr(runtime, "_native_bf16", lambda: True)
    assert choose_precision("auto", cuda, "pretrain.precision") == "bf16"
    assert choose_precision("fp32", cuda, "pretrain.precision") == "fp32"
    assert choose_precision("auto", cpu, "pretrain.precision") == "fp32"
    assert choose_precision("bf16", cpu, "pretrain.precision") == "bf16"
    with pytest.raises(DeviceError, match="evaluate.precision: fp16 needs a CUDA GPU"):
        choose_precision("fp16", cpu, "evaluate.precision")
