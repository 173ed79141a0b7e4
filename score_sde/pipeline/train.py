"""Training loop: `train(config, workdir)`.

One code path for 1 or K torchrun processes (score_sde.distributed). Only rank 0 writes files.
Outputs under workdir: checkpoints/checkpoint_<step>.pth every training.snapshot_freq (and at the
last step), checkpoints-meta/checkpoint.pth every training.snapshot_freq_for_preemption,
tensorboard/ (loss, lr, grad_norm, eval loss, sample grids) and samples/iter_<step>/.

Repeatable by construction, for any number of processes K (score_sde.data_stream): the data stream,
each item's augmentation, its loss noise (t, z) and its label-dropout draw are pure functions of (seed,
stream position), shared by all K; only the network's dropout of step s on rank r is seeded with
(seed, s, r); evaluation/sampling run inside a forked RNG. No RNG state has to be restored: a run
killed at any point and restarted with the same K ends bitwise equal to an uninterrupted run, and K
processes equal one process on the same global batch up to float summation order (network dropout 0;
with it, in distribution).

The checkpoint side lives in train_state (save, resume, finite checks), logging and snapshot samples
in train_report; `score_sde.training` re-exports all of it under the old names.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from .. import builders, checkpoint, data_stream, datasets, distributed, losses, preemption, workdir_lock
from .spec import Spec, TrainingSpec, as_spec, step_options
from .train_report import Logger, log_snapshot, snapshot_missing
from .train_state import check_grad_norm, fingerprint_fields, resume, save, seed_everything

log = logging.getLogger(__name__)


def read_settings(config: Any) -> TrainingSpec:
    """The checked spec's training section (also checks the SDE, the sampler and the device)."""
    spec = as_spec(config)
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("config.device='cuda' but no CUDA device is visible; use --config.device=cpu or auto")
    return spec.training


def batch_iterator(ds: Dataset, global_batch: int, seed: int, start_step: int,
                   info: distributed.DistInfo, num_workers: int = 0
                   ) -> Iterator[Tuple[torch.Tensor, data_stream.LossNoise]]:
    """Endless iterator of this rank's (batch, loss noise) from `start_step` on: its block of every global
    batch of the K-invariant data stream (data_stream.StepBatches), items augmented and their loss noise
    drawn by stream position (data_stream.KeyedItems); `num_workers` loader processes (data.num_workers)."""
    sampler = data_stream.StepBatches(len(ds), global_batch, seed, info, start_step)
    loader = DataLoader(data_stream.KeyedItems(ds, seed, with_noise=True), batch_sampler=sampler,
                        num_workers=num_workers, persistent_workers=num_workers > 0)
    return map(data_stream.split_batch, loader)


def eval_batch(ds: Dataset, batch: int, seed: int, step: int):
    """A batch of the evaluation set for the eval loss at `step` (pure function of seed and step);
    (images, labels) for a labelled data set (data.num_classes)."""
    g = torch.Generator().manual_seed(seed * 7919 + step)
    idx = torch.randperm(len(ds), generator=g)[: min(batch, len(ds))]
    items = [ds[int(i)] for i in idx]
    if isinstance(items[0], tuple):
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
    return torch.stack(items)


def split_labels(batch: Any, spec: Spec, device: torch.device, train: bool,
                 drop: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(images, labels or None) of a batch; a training label goes to the null class when its item's
    keyed uniform `drop` (data_stream.item_drop, LossNoise.drop) is below training.label_dropout, so
    the same items lose their labels on any number of ranks."""
    if not isinstance(batch, (tuple, list)):
        return batch, None
    x, y = batch
    y = y.to(device)
    p = spec.training.label_dropout
    if train and p > 0:  # models.label.drop_labels' rule, with the per-item keyed draw
        if drop is None or drop.shape != y.shape:
            got = None if drop is None else tuple(drop.shape)
            raise ValueError(f"label dropout needs one keyed uniform per item (LossNoise.drop from data_stream."
                             f"KeyedItems(..., with_noise=True)), got {got} for labels {tuple(y.shape)}")
        y = torch.where(drop.to(device) < p, torch.full_like(y, spec.data.num_classes), y)
    return x, y


def prepare_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"cannot write to --workdir={workdir} ({e.strerror}); choose a writable folder") from None


def train(config: Any, workdir: str, progress: bool = True, allow_fingerprint_mismatch: bool = False) -> Dict[str, Any]:
    """Train the spec's model in workdir, resuming from the newest checkpoint there; returns the final state.

    Holds the workdir's lock (score_sde.workdir_lock) throughout; SIGTERM/SIGINT end the current step,
    save the preemption checkpoint and raise preemption.Preempted (docs/reliability.md)."""
    spec = as_spec(config)
    read_settings(spec)
    info = distributed.setup(spec.device)
    try:
        if info.is_main:
            prepare_workdir(workdir)
        with workdir_lock.hold_on_main(workdir, info), preemption.StopOnSignal() as stop:
            state = _train(spec, workdir, spec.training, info, stop, progress, allow_fingerprint_mismatch)
        distributed.barrier(info)  # no rank tears the group down while another still uses it
        return state
    finally:
        distributed.cleanup()


def _train(spec: Spec, workdir: str, s: TrainingSpec, info: distributed.DistInfo, stop: preemption.StopOnSignal,
           progress: bool = True, allow_fingerprint_mismatch: bool = False) -> Dict[str, Any]:
    local_batch = data_stream.local_batch_size(s.batch_size, info)
    if info.is_main:  # under the lock: no other writer can own these temp files
        for sub in ("checkpoints", "checkpoints-meta", "samples"):
            checkpoint.remove_stale_tmp(os.path.join(workdir, sub))
    distributed.barrier(info)
    train_ds, eval_ds = datasets.get_dataset(spec)
    scaler = datasets.get_data_scaler(spec)
    sde = builders.sde_from_config(spec)
    seed = spec.seed

    seed_everything(seed)  # identical initial weights on every rank
    state = builders.create_state(spec, info.device)
    seed_everything(distributed.rank_seed(seed, info.rank))
    resumed = last_good = resume(state, workdir, info, fingerprint_fields(spec), allow_fingerprint_mismatch)
    if resumed and info.is_main:
        log.info("resuming from %s (step %d)", resumed, state["step"])
    start = state["step"]
    precision = distributed.resolve_precision(s.precision, info.device)
    channels_last = distributed.use_channels_last(s.channels_last, len(train_ds.shape) == 3)
    if info.is_main:
        log.info("%d process(es) on %s, global batch %d (%d per process), precision %s, compile %s, "
                 "channels_last %s", info.world_size, info.device, s.batch_size, local_batch, precision,
                 s.compile, channels_last)
    state["model"] = distributed.wrap_for_training(state["model"], info, compile=s.compile)

    common = dict(step_options(spec), precision=precision)  # the objective: spec fields (issue 12)
    train_step = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(spec.optim), **common)
    eval_step = losses.get_step_fn(sde, train=False, **common)

    batches = batch_iterator(train_ds, s.batch_size, seed, start, info, spec.data.num_workers)
    logger = Logger(workdir, info, start, s.n_iters, progress)
    try:
        missing = snapshot_missing(workdir, s, start) if info.is_main else None  # rank 0's files decide
        if distributed.broadcast_object(missing, info):  # a SIGKILL hit the snapshot sampling after its save
            log_snapshot(logger, spec, sde, state, workdir, start, info)
        while state["step"] < s.n_iters:
            batch, noise = next(batches)  # loss noise keyed per item: the same for any process count
            batch, labels = split_labels(batch, spec, info.device, True, noise.drop)  # dropout keyed per item
            batch = distributed.to_memory_format(scaler(batch.to(info.device)), channels_last)
            data_stream.seed_step(seed, state["step"], info)  # dropout of this step/rank
            stats = train_step(state, batch, noise.to(info.device), labels=labels)
            step = state["step"]
            check_grad_norm(stats, step, last_good)  # free; the full finite check runs before each save
            logger.advance(stats["loss"])
            if step % s.log_freq == 0:
                stats["loss"] = float(distributed.all_reduce_sum(torch.tensor(stats["loss"], device=info.device),
                                                                 info)) / info.world_size
                logger.scalars(step, stats, "train/")
            if step % s.eval_freq == 0:
                with distributed.forked_rng(info):
                    torch.manual_seed(distributed.rank_seed(seed * 31 + step, info.rank))
                    eb, el = split_labels(eval_batch(eval_ds, local_batch, seed + info.rank, step), spec,
                                          info.device, False)
                    eb = scaler(eb.to(info.device))
                    logger.scalars(step, eval_step(state, eb, labels=el), "eval/")
            saved_meta = step % s.snapshot_freq_for_preemption == 0
            if saved_meta:
                last_good = save(state, spec, checkpoint.meta_checkpoint_path(workdir), info, last_good)
            if step % s.snapshot_freq == 0 or step == s.n_iters:
                last_good = save(state, spec, checkpoint.checkpoint_path(workdir, step), info, last_good)
                if s.snapshot_sampling:
                    log_snapshot(logger, spec, sde, state, workdir, step, info)
            if step < s.n_iters and stop.requested(info):  # (a stop at the last step just finishes)
                if not saved_meta:
                    save(state, spec, checkpoint.meta_checkpoint_path(workdir), info, last_good)
                raise preemption.Preempted(stop.signum, step, checkpoint.meta_checkpoint_path(workdir))
    finally:
        logger.close()
    state["model"] = distributed.unwrap(state["model"])
    return state
