"""Resumable batch jobs: each batch's result is a shard file, so a killed job restarts where it stopped.

A long evaluation (50k samples, full-test-set bits/dim) is cut into global batches j = 0..J-1 whose
random draws are keyed by (seed, stream, j) (``batch_generator``), not carried from batch to batch:
a batch gives the same result whether it runs first, after a restart, or on another rank. Rank r runs
its contiguous block of batches (distributed.shard_indices); each finished batch is written atomically
to ``<folder>/shard_<j>.pt`` with the job's settings hash and the checkpoint's checksum. On a rerun,
shards whose hash and checksum match are loaded instead of recomputed (others are recomputed and
overwritten); the results are concatenated in batch order on every rank, and ``clear`` deletes the
shards once the job's report is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import zipfile
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from . import distributed
from .atomic import atomic_write
from .data_stream import keyed_seed

log = logging.getLogger(__name__)
_UNREADABLE = (OSError, RuntimeError, EOFError, ValueError, IndexError, KeyError, pickle.UnpicklingError,
               zipfile.BadZipFile)
STREAM_SAMPLES, STREAM_BPD = 11, 12
Tensors = Dict[str, torch.Tensor]


def settings_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the job's settings (JSON, sorted keys): what a shard must have been computed under."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def batch_generator(seed: int, stream: int, index: int, device: Any = "cpu") -> torch.Generator:
    """A generator keyed by (seed, stream, batch index) on `device`."""
    return torch.Generator(device=device).manual_seed(keyed_seed(seed, stream, index))


class ShardStore:
    """Shard files of one job under `folder`, valid for one (settings hash, checkpoint checksum)."""

    def __init__(self, folder: str, settings: Mapping[str, Any], checkpoint_id: str):
        self.folder, self.key = folder, {"settings_hash": settings_hash(settings), "checkpoint": str(checkpoint_id)}

    def path(self, index: int) -> str:
        return os.path.join(self.folder, f"shard_{int(index):06d}.pt")

    def load(self, index: int) -> Optional[Tensors]:
        """The stored tensors of batch `index`, or None when absent, unreadable or from other settings."""
        path = self.path(index)
        if not os.path.isfile(path):
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except _UNREADABLE as e:  # a torn or foreign file: recompute the batch
            log.warning("recomputing batch %d: shard %s is unreadable (%s)", index, path, type(e).__name__)
            return None
        if not isinstance(blob, dict) or blob.get("key") != self.key:
            return None
        return blob["tensors"]

    def save(self, index: int, tensors: Tensors) -> None:
        os.makedirs(self.folder, exist_ok=True)
        with atomic_write(self.path(index), "wb") as f:
            torch.save({"key": self.key, "tensors": {k: v.detach().cpu() for k, v in tensors.items()}}, f)

    def clear(self) -> None:
        """Delete the shard folder (after the job's report is written)."""
        if os.path.isdir(self.folder):
            shutil.rmtree(self.folder)


def run_batches(fn: Callable[[int], Tensors], num_batches: int, info: distributed.DistInfo,
                store: Optional[ShardStore] = None, progress: Optional[str] = None) -> Tensors:
    """``fn(j)`` for every global batch j, split across ranks, each tensor concatenated in batch order on
    every rank (CPU). With a store, batches already on disk are loaded, new ones saved as they finish.
    ``fn`` must return the same keys for every batch; rows are concatenated along dimension 0."""
    mine = distributed.shard_indices(int(num_batches), info)
    results: List[Tensors] = []
    indices = mine
    if progress:
        from tqdm.auto import tqdm
        indices = tqdm(mine, desc=progress, leave=False, dynamic_ncols=True)
    resumed = 0
    for j in indices:
        out = store.load(j) if store is not None else None
        if out is None:
            out = {k: v.detach() for k, v in fn(j).items()}
            if store is not None:
                store.save(j, out)
        else:
            resumed += 1
        results.append({k: v.cpu() for k, v in out.items()})
    if resumed:
        log.info("resumed %d of %d batches from %s", resumed, len(mine), store.folder)
    keys = sorted(results[0]) if results else []
    keys = distributed.broadcast_object(keys, info) if info.distributed else keys
    gathered: Tensors = {}
    for k in keys:
        local = torch.cat([r[k] for r in results]) if results else torch.empty(0)
        comm = local.to(info.device) if info.distributed else local
        gathered[k] = distributed.all_gather_cat(comm, info).cpu()
    return gathered
