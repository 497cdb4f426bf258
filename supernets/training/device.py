"""Where and in what precision training runs: device choice, autocast, grad scaling, memory format.

``device``: ``auto`` (CUDA when this process sees a GPU, else CPU), ``cpu`` or ``cuda``. ``precision``:
``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 adds a gradient scaler), or ``auto`` (bf16 on CUDA, fp32 on
CPU; measured on an H200 by ``experiments/benchmarks/gpu_check.py`` and on this project's CPUs by
``experiments/benchmarks/cpu_precision.py``). Channels-last memory format is used on the CPU always and on
CUDA for networks of fixed shapes, unless turned off (see ``Execution``). The checks raise
``DeviceError`` (a ``ValueError``), which the command line reports as one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device or precision this machine cannot provide; the message says what is available."""


def cuda_available() -> bool:
    return torch.cuda.is_available()


def cpu_bf16_native() -> bool:
    """Whether this CPU has native bf16 kernels (AVX-512 BF16 or AMX tiles). Without them CPU autocast to
    bf16 is emulated and slower than fp32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def resolve_device(name: str, index: int | None = None) -> torch.device:
    """The ``torch.device`` for a ``train.device`` value (``index``: the CUDA device of this rank)."""
    if name not in DEVICES:
        raise DeviceError(f"train.device: {name!r} is not allowed; allowed: {', '.join(DEVICES)}")
    if name == "cpu" or (name == "auto" and not cuda_available()):
        return torch.device("cpu")
    if not cuda_available():
        raise DeviceError("train.device is cuda but this machine has no CUDA device (torch "
                          f"{torch.__version__}, built {'with' if torch.backends.cuda.is_built() else 'without'} "
                          "CUDA); use device: auto or cpu")
    if index is None:
        index = torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(f"CUDA device {index} does not exist; this machine has {torch.cuda.device_count()}")
    return torch.device("cuda", index)


def resolve_precision(name: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for a ``train.precision`` value on ``device``."""
    if name not in PRECISIONS:
        raise DeviceError(f"train.precision: {name!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise DeviceError("train.precision fp16 needs CUDA (CPU autocast runs bf16); use bf16 or fp32")
    return name


@dataclass(frozen=True)
class Execution:
    """The resolved device, precision and memory format of one process."""

    device: torch.device
    precision: str = "fp32"
    # Channels-last for networks of fixed shapes (static networks, the supernet while only the resolution
    # varies).
    channels_last: bool = False
    # Channels-last for the supernet while subnets vary (and for the subnets evaluated during training).
    # Off on CUDA unless asked for: measured on an H200, cuDNN spends ~4.8 s on the first step of every new
    # channels-last bf16 subnet (its kernels are planned per shape) against 93 ms in the default format;
    # repeated subnets run at 59 vs 55 ms. On by default on the CPU, where it is faster for new shapes too.
    elastic_channels_last: bool = False

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto", channels_last: bool | None = None,
                index: int | None = None) -> Execution:
        """``channels_last``: None means the measured default -- on the CPU always (oneDNN's kernels work in
        channels-last; ``experiments/benchmarks/cpu_precision.py``), on CUDA for fixed shapes only; True or
        False applies everywhere."""
        dev = resolve_device(device, index)
        if channels_last is None:
            fixed, varying = True, dev.type == "cpu"
        else:
            fixed = varying = channels_last
        return cls(dev, resolve_precision(precision, dev), fixed, varying)

    def for_shapes(self, varying: bool) -> Execution:
        """This execution for networks whose shapes vary from step to step (``varying``) or not."""
        return replace(self, channels_last=self.elastic_channels_last) if varying else self

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Autocast to the precision's dtype (a no-op for fp32)."""
        dtype = _DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler for fp16 (``None`` otherwise: bf16 keeps fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def module(self, module: nn.Module) -> nn.Module:
        """``module`` moved to the device (and channels-last), in place."""
        return module.to(device=self.device, memory_format=self.memory_format)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch on the device in the memory format (non-blocking from pinned memory)."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=self.memory_format) if x.ndim == 4 else x

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return f"{name}, {self.precision}{', channels-last' if self.channels_last else ''}"


@contextlib.contextmanager
def inference_mode(execution: Execution) -> Iterator[None]:
    """No gradients and the execution's autocast, for evaluation and BN recalibration."""
    with torch.no_grad(), execution.autocast():
        yield
