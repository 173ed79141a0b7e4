"""Process-group helpers for torchrun: one code path for 1 or K processes, CPU (gloo) or GPU (NCCL).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs as a single process.
"""
from __future__ import annotations

import datetime
import gc
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

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


def collective_timeout() -> datetime.timedelta:
    """How long a collective may wait for the slowest rank: SCORE_SDE_DIST_TIMEOUT_MIN minutes (default 60).

    Rank 0 alone writes checkpoints and draws snapshot samples while the others wait in a barrier;
    NCCL's 10-minute default would abort long snapshot sampling of large models."""
    minutes = float(os.environ.get("SCORE_SDE_DIST_TIMEOUT_MIN", "60"))
    if minutes <= 0:
        raise ValueError(f"SCORE_SDE_DIST_TIMEOUT_MIN={minutes} must be a positive number of minutes")
    return datetime.timedelta(minutes=minutes)


def loopback_interface() -> Optional[str]:
    """Name of this host's loopback interface ('lo' on Linux), or None where it cannot be listed."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in names if n.startswith("lo")), None)


def pin_gloo_to_loopback() -> None:
    """Single-node gloo: connect ranks over loopback unless GLOO_SOCKET_IFNAME says otherwise.

    Without it gloo binds the address the host name resolves to; in containers that is often an
    external interface whose traffic to itself is filtered, and the connect then waits for the whole
    collective timeout instead of failing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    single_node = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) == world
    if single_node and "GLOO_SOCKET_IFNAME" not in os.environ:
        name = loopback_interface()
        if name is not None:
            os.environ["GLOO_SOCKET_IFNAME"] = name


def setup(preference: str = "auto") -> DistInfo:
    """Join the torchrun process group if launched under torchrun; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            pin_gloo_to_loopback()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=collective_timeout())
        _OWNED_GROUP[0] = True
    return DistInfo(rank, world, local_rank, device)


_OWNED_GROUP = [False]  # whether setup() created the default group (a caller's own group is left alone)


def cleanup() -> None:
    """Destroy the process group setup() created, after freeing DDP wrappers that still hold it: a
    reducer destroyed after its group, at interpreter exit, can abort the process."""
    if _OWNED_GROUP[0] and dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
    _OWNED_GROUP[0] = False


def barrier(info: DistInfo) -> None:
    """Wait for every rank; NCCL is told this rank's GPU (otherwise it guesses one, which can hang)."""
    if info.distributed:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def forked_rng(info: DistInfo):
    """A context whose draws leave the global RNG (CPU, and this rank's CUDA device) as they found it."""
    return torch.random.fork_rng(devices=[info.device] if info.device.type == "cuda" else [])


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
    """Concatenate tensors whose first dimension may differ across ranks, in rank order, on every rank.

    A rank with nothing to contribute may pass any 0-row tensor (e.g. ``torch.empty(0)``): the trailing
    shape and dtype are taken from the ranks that have rows. With NCCL the exchange goes through the
    rank's CUDA device; the result comes back on ``x``'s device. Call it after the per-rank loops,
    never inside one: every rank must reach it exactly once per call site.
    """
    if not info.distributed:
        return x
    meta: List[Any] = [None] * info.world_size
    dist.all_gather_object(meta, (int(x.shape[0]), tuple(x.shape[1:]), str(x.dtype).split(".")[-1]))
    filled = [m for m in meta if m[0] > 0]
    if not filled:
        return x
    tail, dtype = filled[0][1], getattr(torch, filled[0][2])
    if any(m[1] != tail or m[2] != filled[0][2] for m in filled):
        raise ValueError(f"all_gather_cat: ranks hold rows of different shapes/dtypes {meta}; "
                         "every rank must produce items of one shape and dtype")
    comm = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
    sizes = [m[0] for m in meta]
    padded = torch.zeros((max(sizes), *tail), dtype=dtype, device=comm)
    if x.shape[0] > 0:
        padded[: x.shape[0]] = x.to(comm, dtype)
    out = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes)], dim=0).to(x.device)


def gather_over_shards(fn: Callable[[range], torch.Tensor], n: int, batch_size: int,
                       info: DistInfo) -> torch.Tensor:
    """Results of ``fn`` for items ``range(n)``, split across ranks, in item order, on every rank.

    This rank calls ``fn(indices)`` on its contiguous share (``shard_indices``) in batches of at most
    ``batch_size``; ``fn`` returns one row per index. No collective runs inside the loop, so ranks
    may take different numbers of batches or solver steps (adaptive ODE solvers do); the results
    are exchanged once, after every rank has finished its loop.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    shard = shard_indices(int(n), info)
    rows = [fn(shard[i:i + batch_size]) for i in range(0, len(shard), batch_size)]
    local = torch.cat(rows) if rows else torch.empty(0)
    if rows and local.shape[0] != len(shard):
        raise ValueError(f"fn returned {local.shape[0]} rows for {len(shard)} indices; return one row per index")
    return all_gather_cat(local, info)


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
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if hasattr(model, "prediction"):
        ddp.prediction = model.prediction  # score functions read what the network predicts
    return ddp


def all_reduce_mean(values: dict, info: DistInfo) -> dict:
    """Mean over ranks of a dict of floats (for logging); one collective, every rank must call it."""
    if not info.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=info.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


# ----------------------------------------------------------------------------- precision / compile / layout
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on a CUDA device that supports it, else 'fp32'. 'bf16' off CUDA runs as 'fp32'
    (CPU bf16 autocast is slower than fp32 on most x86 CPUs and not what the targets were set for)."""
    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise ValueError(f"training.precision={precision!r}; choose one of {PRECISIONS}")
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    bf16_ok = on_cuda and torch.cuda.is_bf16_supported()
    if precision == "bf16" and on_cuda and not bf16_ok:
        raise ValueError(f"training.precision='bf16' but {torch.cuda.get_device_name(device)} does not support "
                         "bfloat16; use 'fp32' or 'auto'")
    if precision == "auto":
        return "bf16" if bf16_ok else "fp32"
    return precision if on_cuda else "fp32"


def use_channels_last(config_value: Any, image_data: bool) -> bool:
    """training.channels_last (True/False) for image batches; 1-D data ignores it."""
    if not isinstance(config_value, bool):
        raise ValueError(f"training.channels_last must be True or False, got {config_value!r}")
    return config_value and image_data


def to_memory_format(batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The batch in channels-last layout when asked (4-D image batches only)."""
    if channels_last and batch.dim() == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch


def wrap_for_training(model: torch.nn.Module, info: DistInfo, compile: bool = False) -> torch.nn.Module:
    """DDP (K > 1), then torch.compile when asked. Checkpoints always use ``unwrap(wrapped)``."""
    wrapped = wrap_model(model, info)
    if compile:
        if not hasattr(torch, "compile"):
            raise ValueError("training.compile=True needs torch >= 2.0; set training.compile=False")
        wrapped = torch.compile(wrapped)
    return wrapped
