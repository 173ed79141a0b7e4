"""Process-group helpers for torchrun: one code path for 1 or K processes, CPU (gloo) or GPU (NCCL).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs as a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> if available else cpu; 'cpu'; 'cuda' (error when absent)."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={preference!r}; choose 'auto', 'cpu' or 'cuda'")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but no CUDA device is visible; use --config.device=cpu")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(preference: str = "auto") -> DistInfo:
    """Join the torchrun process group if launched under torchrun; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """A distinct, reproducible seed per rank."""
    return int(seed) + 1_000_003 * int(rank)


def split_count(n: int, info: DistInfo) -> int:
    """How many of n items this rank handles (as even as possible, lower ranks take the remainder)."""
    return n // info.world_size + (1 if info.rank < n % info.world_size else 0)


def shard_indices(n: int, info: DistInfo) -> range:
    """Contiguous block of range(n) for this rank; blocks concatenated in rank order give range(n)."""
    start = sum(n // info.world_size + (1 if r < n % info.world_size else 0) for r in range(info.rank))
    return range(start, start + split_count(n, info))


def all_gather_cat(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate tensors whose first dimension may differ across ranks, in rank order."""
    if not info.distributed:
        return x
    sizes: List[Any] = [None] * info.world_size
    dist.all_gather_object(sizes, int(x.shape[0]))
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes)], dim=0)


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        x = x.clone()
        dist.all_reduce(x)
    return x


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel when running under torchrun with K > 1 processes."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
