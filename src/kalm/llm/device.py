"""Where the model runs and in which precision.

One device per command: every tensor built for the model is moved to the model's own device
(`model_device`), so grounding, imagination and the LLM-as-policy baseline run on a GPU as they do
on the CPU. bf16 is chosen by measurement, not assumed: on CPUs without native bf16 units (AVX2
only) a bf16 matmul is an order of magnitude slower than fp32, while on AVX-512-BF16/AMX CPUs and
on GPUs it is faster.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch

_PROBE_CACHE: dict[str, dict[str, Any]] = {}
PROBE_SIZE = 512
BF16_MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by this much: noise must not flip the choice


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): CUDA when present, else the CPU; anything else as torch spells it."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:N)"
                         ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA device")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's weights: where its inputs have to be."""
    return next(model.parameters()).device


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def matmul_gflops(device: torch.device, bf16: bool, size: int = PROBE_SIZE,
                  reps: int = 2) -> float:
    """GFLOP/s of size x size fp32 matmuls, plain or under bf16 autocast as training runs them
    (the cast of the inputs is part of the cost)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    ctx = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16
           else nullcontext())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with ctx, torch.no_grad():
        a @ b  # warm-up: kernel selection, allocation
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        elapsed = max(time.perf_counter() - t0, 1e-9)
    return 2 * size**3 * reps / elapsed / 1e9


def bf16_probe(device: torch.device) -> dict[str, Any]:
    """Whether bf16 autocast pays off on this device, measured once per process."""
    key = str(device)
    if key in _PROBE_CACHE:
        return _PROBE_CACHE[key]
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        info: dict[str, Any] = {"device": key, "use_bf16": bool(ok),
                                "reason": "CUDA with bf16 support" if ok
                                else "this CUDA device has no bf16"}
    else:
        fp32 = matmul_gflops(device, bf16=False)
        bf16 = matmul_gflops(device, bf16=True)
        ok = bf16 > BF16_MIN_SPEEDUP * fp32
        info = {"device": key, "use_bf16": bool(ok), "fp32_gflops": round(fp32, 2),
                "bf16_gflops": round(bf16, 2), "matmul": f"{PROBE_SIZE}x{PROBE_SIZE}",
                "reason": f"bf16 autocast {'is' if ok else 'is not'} more than "
                          f"{BF16_MIN_SPEEDUP}x faster than fp32 here"}
    _PROBE_CACHE[key] = info
    return info


def resolve_bf16(setting: bool | str, device: torch.device) -> tuple[bool, dict[str, Any]]:
    """(use bf16, what decided it); true/false force the choice, `auto` measures."""
    if setting == "auto":
        info = bf16_probe(device)
        return bool(info["use_bf16"]), info
    if isinstance(setting, bool):
        return setting, {"device": str(device), "use_bf16": setting, "reason": "forced"}
    raise ValueError(f"bf16 must be true, false or auto, not {setting!r}")
