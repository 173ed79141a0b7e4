"""The keyed training data stream: which items, augmentation and loss noise each optimizer step sees.

Randomness of training is keyed, not carried: every draw is seeded from (config.seed, what, where).
Data order depends on (seed, epoch); an item's augmentation (dequantization noise, flips), its loss
noise (the time u, the normal for EDM's log-normal sigma, the perturbation z) and, for labelled data,
its classifier-free label-dropout uniform depend on (seed, its global stream position
p = step*B + rank*B/K + i). So the global batch of step s, and the noise each of its items gets, are
the same for any number of processes K: K ranks reproduce one process on the same global batch up to
the order of float additions (DDP averages the K per-chunk mean gradients = the full-batch mean
gradient). Only the network's dropout is keyed by (seed, step, rank) (`seed_step`): equality across K
needs dropout 0, and otherwise holds in distribution. A run resumed at step s reproduces the
uninterrupted run without restoring any RNG state, with any K.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch

from .distributed import DistInfo

_MASK64 = (1 << 64) - 1
STREAM_NOISE, STREAM_EPOCH, STREAM_ITEM, STREAM_LOSS, STREAM_LABEL = 1, 2, 3, 4, 5


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def keyed_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixed from the run seed and integer keys (splitmix64 chain); distinct keys -> unrelated seeds."""
    h = _splitmix64(int(seed) & _MASK64)
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK64))
    return h >> 1


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the dropout (and any other unkeyed draw) of rank `rank` at optimizer step `step`."""
    return keyed_seed(seed, STREAM_NOISE, step, rank)


def seed_step(seed: int, step: int, info: DistInfo) -> None:
    """Seed torch's global generators (CPU and CUDA) for this rank's unkeyed draws (dropout) at `step`."""
    torch.manual_seed(step_seed(seed, step, info.rank))


class LossNoise(NamedTuple):
    """Per-item loss draws of a batch: u (B,) uniform time, z like the batch, normal (B,) for 'lognormal';
    drop (B,) uniforms deciding classifier-free label dropout (labelled data only, else None)."""
    u: torch.Tensor
    z: torch.Tensor
    normal: torch.Tensor
    drop: Optional[torch.Tensor] = None

    def to(self, device, dtype: Optional[torch.dtype] = None) -> "LossNoise":
        return LossNoise(*(None if v is None else v.to(device, dtype) for v in self))


def item_noise(seed: int, position: int, shape: Tuple[int, ...]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, z, normal) of the item at stream `position`, from a CPU generator keyed (seed, STREAM_LOSS, position)."""
    g = torch.Generator().manual_seed(keyed_seed(seed, STREAM_LOSS, position))
    u = torch.rand((), generator=g)
    normal = torch.randn((), generator=g)
    return u, torch.randn(tuple(shape), generator=g), normal


def item_drop(seed: int, position: int) -> torch.Tensor:
    """The label-dropout uniform of the item at stream `position`, keyed (seed, STREAM_LABEL, position):
    its label goes to the null class when it is below training.label_dropout, on any number of ranks."""
    return torch.rand((), generator=torch.Generator().manual_seed(keyed_seed(seed, STREAM_LABEL, position)))


def local_batch_size(global_batch: int, info: DistInfo) -> int:
    """Per-rank batch of a GLOBAL batch size; an error unless it divides evenly."""
    global_batch = int(global_batch)
    if global_batch < 1:
        raise ValueError(f"training.batch_size must be a positive integer, got {global_batch}")
    if global_batch % info.world_size:
        raise ValueError(f"training.batch_size={global_batch} is the GLOBAL batch and must be divisible by the "
                         f"number of processes ({info.world_size}); use a multiple of {info.world_size} "
                         f"or launch a different --nproc_per_node/--nnodes")
    return global_batch // info.world_size


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler (for ``DataLoader(batch_sampler=...)``): this rank's items of every optimizer step.

    The data stream is the concatenation of per-epoch permutations of range(n), epoch e shuffled with
    ``keyed_seed(seed, STREAM_EPOCH, e)``. Step s takes stream positions [s*B, (s+1)*B) (B = global
    batch, epochs run into each other, nothing is dropped) and rank r the contiguous r-th block of B/K
    of them. Yields lists of ``(position, index)`` keys for ``KeyedItems``; starting at ``start_step``
    needs no saved state, so resuming at any step with any K continues the same stream.
    """

    def __init__(self, n_items: int, global_batch: int, seed: int, info: DistInfo, start_step: int = 0,
                 num_steps: Optional[int] = None):
        if n_items < 1:
            raise ValueError("the training set is empty; check config.data (dataset, root, num_train)")
        self.n, self.global_batch, self.seed = int(n_items), int(global_batch), int(seed)
        self.local = local_batch_size(global_batch, info)
        self.offset = info.rank * self.local
        self.start_step, self.num_steps = int(start_step), num_steps
        self._perms: dict = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(keyed_seed(self.seed, STREAM_EPOCH, epoch))
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def keys(self, step: int) -> List[tuple]:
        """(stream position, item index) pairs of this rank at optimizer step `step`."""
        first = step * self.global_batch + self.offset
        return [(p, int(self._perm(p // self.n)[p % self.n])) for p in range(first, first + self.local)]

    def __iter__(self):
        step = self.start_step
        while self.num_steps is None or step < self.start_step + self.num_steps:
            yield self.keys(step)
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("StepBatches is endless; pass num_steps for a finite length")
        return int(self.num_steps)


class KeyedItems(torch.utils.data.Dataset):
    """Wraps a data set so that item randomness (dequantization noise, flips) is keyed by stream position.

    ``items[(position, index)]`` seeds torch's CPU generator from (seed, position) and returns
    ``dataset[index]``: the same item gets the same augmentation whichever rank, DataLoader worker or
    process count loads it. (It reseeds the CPU generator of the loading process; ``seed_step`` runs
    after loading.) With ``with_noise`` it returns ``(item, u, z, normal)`` (``item_noise``), plus the
    label-dropout uniform ``drop`` (``item_drop``) for a labelled ``(image, label)`` item, which the
    default collate turns into a batch and the per-item loss noise (see ``split_batch``).
    """

    def __init__(self, dataset, seed: int, with_noise: bool = False):
        self.dataset, self.seed, self.with_noise = dataset, int(seed), bool(with_noise)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        position, index = key
        torch.default_generator.manual_seed(keyed_seed(self.seed, STREAM_ITEM, position))
        item = self.dataset[index]
        if not self.with_noise:
            return item
        if not isinstance(item, tuple):
            return (item, *item_noise(self.seed, position, tuple(item.shape)))
        # (image, label) for labelled data sets: also the label-dropout draw
        return (item, *item_noise(self.seed, position, tuple(item[0].shape)), item_drop(self.seed, position))


def split_batch(collated) -> Tuple[torch.Tensor, LossNoise]:
    """(batch, LossNoise) from a collated ``KeyedItems(..., with_noise=True)`` batch."""
    x, *noise = collated
    return (tuple(x) if isinstance(x, list) else x), LossNoise(*noise)
