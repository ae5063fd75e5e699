"""Precision chosen per machine, never assumed.

On CPUs with native bf16 (``avx512_bf16`` / AMX) a bf16 matmul runs ~4x faster than fp32; on AVX2-only
CPUs it runs ~100x slower. ``auto`` therefore picks bf16 autocast only where the hardware does it
natively (CUDA with bf16 support, or such a CPU), and fp32 elsewhere. An explicit choice always wins.

>>> resolve_autocast_dtype("fp32", "cpu") is None
True
"""

from __future__ import annotations

import contextlib
import functools
import platform
import time
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_capability() -> str:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        return "unknown"


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_fast() -> bool:
    """True when this CPU multiplies bf16 natively. Reads the flags; where they say nothing
    (not Linux), times one small matmul in each dtype once and caches the answer."""
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    n = 256
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    timings = []
    for a, b in ((a32, b32), (a16, b16)):
        a @ b
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        timings.append(time.perf_counter() - t0)
    return timings[1] < timings[0]


def resolve_autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, found {precision!r}")
    kind = torch.device(device).type
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu":
        return torch.bfloat16 if cpu_bf16_is_fast() else None
    return None


def autocast(device: str | torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


_PEAKS: dict[tuple[str, str, int, int, int], float] = {}


def matmul_peak(device: torch.device, dtype: torch.dtype | None = None, n: int | None = None, reps: int = 1,
                trials: int = 3) -> float:
    """Dense matmul FLOP/s of ``device`` for ``dtype`` (None: fp32), measured once and cached: the best,
    over ``trials``, of the mean time of ``reps`` products of two n×n matrices. This is the MFU
    denominator, so MFU is always against what this machine really does in this precision."""
    device = torch.device(device)
    dtype = dtype or torch.float32
    n = n or (1024 if device.type == "cpu" else 4096)
    key = (str(device), str(dtype), n, reps, trials)
    if key not in _PEAKS:
        g = torch.Generator(device=device).manual_seed(0)  # never touch the global RNG
        a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(trials):
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            synchronize(device)
            best = min(best, (time.perf_counter() - t0) / reps)
        _PEAKS[key] = 2 * n**3 / best
    return _PEAKS[key]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_machine() -> str:
    dev = default_device()
    if dev.type == "cuda":
        where = f"CUDA {torch.cuda.get_device_name()}"
    else:
        where = (f"CPU {platform.machine()} capability {cpu_capability()}, "
                 f"native bf16 {'yes' if cpu_bf16_is_fast() else 'no'}, {torch.get_num_threads()} threads")
    auto = resolve_autocast_dtype("auto", dev)
    return f"torch {torch.__version__}, {where}, auto precision {str(auto).replace('torch.', '') if auto else 'fp32'}"
