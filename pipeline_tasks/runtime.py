"""Where and how a stage computes: the device, its name and the numeric precision, said out loud.

``device: auto`` takes the GPU when there is one and otherwise runs on the CPU with one
warning per process; ``device: cuda`` without a GPU is an error that says so. ``precision:
auto`` is bf16 autocast on GPUs with native bf16, fp16 autocast with a gradient scaler on
older GPUs (``torch.cuda.is_bf16_supported()`` alone counts emulation, which is slow), and fp32
on the CPU. The training loops hand the precision to Lightning Fabric by its names.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch

log = logging.getLogger(__name__)
Precision = Literal["fp32", "bf16", "fp16"]
FABRIC_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_warned: set[str] = set()


class DeviceError(ValueError):
    """A device or precision the machine cannot provide; the message names the setting to change."""


@dataclass(frozen=True)
class Runtime:
    """A resolved device and precision. ``fell_back``: ``auto`` found no GPU."""

    device: torch.device
    device_name: str
    precision: Precision
    fell_back: bool = False

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for fp32."""
        return _DTYPES[self.precision]

    @property
    def fabric_precision(self) -> str:
        return FABRIC_PRECISION[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to ``dtype`` on this device (a no-op context for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> dict[str, str]:
        """``{"device", "device_name", "precision"}`` for records, MLflow and summaries."""
        return {"device": str(self.device), "device_name": self.device_name, "precision": self.precision}


def _native_bf16() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no emulation argument
        return torch.cuda.get_device_capability()[0] >= 8


def choose_precision(precision: str, device: torch.device, setting: str) -> Precision:
    """``auto``/``bf16``/``fp16``/``fp32`` -> what runs on ``device``; ``setting`` names the
    params key in messages (e.g. ``pretrain.precision``)."""
    if device.type != "cuda":
        if precision == "fp16":
            raise DeviceError(f"{setting}: fp16 needs a CUDA GPU and this stage runs on the CPU; set "
                              f"{setting}: auto (fp32 on the CPU) or bf16")
        return "bf16" if precision == "bf16" else "fp32"
    if precision in ("auto", "bf16") and not _native_bf16():
        if precision == "bf16":
            _warn_once(f"{setting}: bf16 asked, but {torch.cuda.get_device_name(device)} has no native bf16; "
                       "using fp16 autocast with a gradient scaler")
        return "fp16"
    return "bf16" if precision == "auto" else precision  # type: ignore[return-value]


def resolve_runtime(device: str, precision: str = "auto", stage: str = "pretrain") -> Runtime:
    """The device and precision ``stage`` runs on, from its ``device`` and ``precision``
    settings. Raises ``DeviceError`` for ``cuda`` without a GPU; ``auto`` without one warns once."""
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise DeviceError(f"{stage}.device: cuda, but no CUDA GPU is visible to PyTorch {torch.__version__} "
                          f"(CUDA build {torch.version.cuda or 'none'}); set {stage}.device: auto or cpu, "
                          "or check the driver with nvidia-smi")
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"{stage}.device: {device!r} is not auto, cpu or cuda")
    on_gpu = device != "cpu" and cuda
    target = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    fell_back = device == "auto" and not cuda
    if fell_back:
        _warn_once("device: auto found no CUDA GPU; training and scoring run on the CPU (set device: cpu to "
                   "say so and silence this warning)")
    name = torch.cuda.get_device_name(target) if target.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return Runtime(target, name, choose_precision(precision, target, f"{stage}.precision"), fell_back)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)
