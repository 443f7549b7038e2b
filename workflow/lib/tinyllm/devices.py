"""Devices and precision: the device a run uses, the dtype it can train in, the peak FLOP/s for MFU."""

from __future__ import annotations

import time

import torch

from tinyllm.errors import DeviceError

# Nominal dense bf16 tensor-core peaks (FLOP/s) of common GPUs; others get a measured matmul peak.
GPU_BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" is cuda when available, else cpu; a named device must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but torch sees no CUDA device: use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r} requested but MPS is not available here: use cpu or auto")
    return device


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is slow emulation."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str | None]:
    """The autocast dtype to train in, and a note when it differs from the one asked for."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype == torch.bfloat16:
        if device.type == "cpu" and not cpu_has_bf16_matmul():
            return torch.float32, "this CPU has no bf16 matmul units (AMX/AVX512-BF16): training in float32"
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float32, "this GPU does not support bf16: training in float32"
    if dtype != torch.float32 and device.type not in ("cpu", "cuda"):
        return torch.float32, f"no mixed precision on {device.type}: training in float32"
    return dtype, None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer measures the work and not its queueing."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(dtype: torch.dtype, device: torch.device, size: int = 1024, repeats: int = 5) -> float:
    """The best FLOP/s of a size x size matmul in dtype on device, with the current thread count (~0.2 s)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def seconds() -> float:
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        return time.perf_counter() - start

    seconds()  # warms up the kernels
    return 2 * size**3 / min(seconds() for _ in range(repeats))


def peak_flops(dtype: torch.dtype, device: torch.device) -> tuple[float, str]:
    """Peak FLOP/s for MFU and where it comes from: a GPU's nominal bf16 figure when known, else measured."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        for model, flops in GPU_BF16_PEAK_FLOPS.items():
            if model in name:
                return flops, f"nominal {model}"
    return matmul_peak_flops(dtype, device), f"measured {str(dtype).removeprefix('torch.')} matmul"
