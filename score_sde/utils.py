"""Small tensor helpers shared across the package."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def batch_broadcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector `v` of shape [B] to [B, 1, ..., 1] so it broadcasts against `x`."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


def randn(shape: Sequence[int], generator: Optional[torch.Generator] = None,
          device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Standard normal draws that honour a generator living on another device than the target.

    A CPU generator drives CUDA sampling reproducibly: draw where the generator lives, then move.
    """
    dtype = dtype or torch.get_default_dtype()
    if generator is None:
        return torch.randn(*shape, device=device, dtype=dtype)
    gen_device = generator.device
    out = torch.randn(*shape, generator=generator, device=gen_device, dtype=dtype)
    return out.to(device) if device is not None else out


def randn_like(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """`torch.randn_like` that accepts a generator (possibly on another device)."""
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def rand_like(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform [0, 1) draws shaped like `x`, drawn on the generator's device."""
    if generator is None:
        return torch.rand_like(x)
    return torch.rand(*x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def check_time(x: torch.Tensor, t: torch.Tensor) -> None:
    """Raise a clear error unless `t` is a floating tensor of shape [batch] matching `x`."""
    if not torch.is_tensor(t) or t.dim() != 1 or t.shape[0] != x.shape[0]:
        shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f"t must be a tensor of shape [batch]=[{x.shape[0]}], got {shape}; "
                         f"pass one time per sample, e.g. torch.full((x.shape[0],), t0)")
