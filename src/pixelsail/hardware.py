"""What the machine can do fast: the mixed-precision choice for training and inference."""
from __future__ import annotations

import contextlib

import torch


def fast_bf16(device: torch.device | str) -> bool:
    """True where bf16 matmuls run natively: CUDA with bf16 support, or a CPU with AVX512-BF16/AMX.

    On a CPU without them (AVX2 only) bf16 autocast is emulated and was measured ~40x slower than fp32 here.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """``precision``: "bf16" (always), "fp32" (never) or "auto" (bf16 where it is fast). None means no autocast."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if fast_bf16(device) else None
    raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    device = torch.device(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one), for reports of measured numbers."""
    import platform
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    try:
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
