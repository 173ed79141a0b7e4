"""Evaluation and sampling of trained checkpoints: eval loss, bits/dim, samples with ANY sampler, metrics.

`evaluate(spec, workdir)` takes the newest checkpoint, or, when a range is set, the checkpoints whose
training STEP lies in [eval.begin_ckpt, eval.end_ckpt] (score_sde_pytorch counts checkpoint numbers
instead), and writes,
under `<workdir>/<eval_folder>/ckpt_<step>/`: loss.json, bpd.json, vlb.json (eval.enable_vlb) and one folder per sampler
configuration `<method>_<hash of its options>/` holding samples.npz, samples.png and report.json.
`sample(spec, workdir)` draws eval.num_samples samples from the newest checkpoint.
Every file is written by rank 0 only; a report is written last, so it marks finished work and
re-running skips it. Runs under torchrun: samples and bpd examples are split across ranks and
gathered after the per-rank loops.

This module is the protocol only; the jobs live in score_sde/pipeline/ (eval_context: context,
checkpoints, reports; eval_likelihood: loss, bits/dim, DDPM bound; eval_sampling: samples and their
metrics) and the metrics in score_sde/metrics.py.
"""
from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm

from . import checkpoint, distributed, metrics, schedule_store, shards, workdir_lock
from .pipeline.eval_context import (EvalContext, build_context, checkpoints_in_range, load_ema_weights,  # noqa: F401
                                    load_imported, run_once)
from .pipeline.eval_context import batches as _batches, split as _split  # noqa: F401
from .pipeline.eval_likelihood import VLB_TERMS, eval_bpd, eval_loss, eval_vlb, vlb_variance  # noqa: F401
from .pipeline.eval_likelihood import bits_per_dim as _bits_per_dim  # noqa: F401
from .pipeline.eval_sampling import (REFERENCE_SPLITS, draw_samples, num_reference, reference_split,  # noqa: F401
                                     sample_metrics, sampler_from_config, sampler_settings, sampling_job,
                                     save_picture)
from .metrics import check_inception_path  # noqa: F401
from .pipeline.spec import Spec

_Context, _context, _run_once = EvalContext, build_context, run_once  # the names before the move


def _reference_stats(ctx: EvalContext, net, fc, ref):
    """The reference split's Inception features, cached per run (metrics.reference_features)."""
    return metrics.reference_features(ctx.config.eval, net, fc, ref, ctx.data)


def evaluate_checkpoint(ctx: EvalContext, folder: str, step: int, source: str) -> None:
    """Loss, bits/dim, the DDPM bound and sampling for the weights loaded in ctx, as the config enables."""
    ev, base = ctx.config.eval, {"checkpoint_step": step, "checkpoint_checksum": ctx.checkpoint_id, "seed": ctx.seed}
    if ev.enable_loss:
        run_once(ctx, os.path.join(folder, "loss.json"), base, lambda: eval_loss(ctx))
    if ev.enable_bpd:
        settings = dict(base, dataset=ev.bpd_dataset, likelihood=ev.likelihood.to_dict(),
                        num_repeats=ev.bpd_num_repeats, num_batches=ev.bpd_num_batches,
                        batch_size=ev.batch_size,
                        **({"dequant_samples": ev.bpd_dequant_samples} if ev.bpd_dequant_samples > 1 else {}),
                        **({"dequantization": ev.dequantization, "dequantization_sigma": ev.dequantization_sigma}
                           if ev.dequantization != "uniform" else {}))
        store = shards.ShardStore(os.path.join(folder, "bpd_shards"), settings, ctx.checkpoint_id)
        if run_once(ctx, os.path.join(folder, "bpd.json"), settings, lambda: eval_bpd(ctx, ctx.score_fn(), store)) \
                and ctx.info.is_main:
            store.clear()  # the report is written: the per-batch shards are no longer needed
    if ev.enable_vlb:  # issue 12: the DDPM bound next to the ODE bits/dim
        settings = dict(base, dataset=ev.bpd_dataset, variance=vlb_variance(ctx.config),
                        num_batches=ev.bpd_num_batches, batch_size=ev.batch_size)
        run_once(ctx, os.path.join(folder, "vlb.json"), settings, lambda: eval_vlb(ctx))
    if ev.enable_sampling:
        sampling_job(ctx, folder, step, source, with_metrics=True)


def _checks(spec: Spec) -> None:
    """Fail before any work on settings that would fail later (the spec checked the rest)."""
    if spec.eval.enable_sampling and metrics.inception_enabled(spec.eval):
        if spec.data.is_toy:
            raise ValueError("eval.enable_fid/enable_is/enable_kid apply to image data sets only; set them False")
        check_inception_path(spec)


def evaluate(config: Any, workdir: str, eval_folder: str = "eval", allow_fingerprint_mismatch: bool = False) -> None:
    """Evaluate the newest checkpoint, or every checkpoint with step in [eval.begin_ckpt, eval.end_ckpt]
    when a range is set, or eval.import_ckpt. Holds the eval folder's lock (score_sde.workdir_lock)."""
    spec = schedule_store.resolve(config, workdir)  # sampling.schedule="optimized" -> the stored file
    _checks(spec)
    ctx = build_context(spec)
    try:
        with workdir_lock.hold_on_main(os.path.join(workdir, eval_folder), ctx.info):
            _evaluate(ctx, workdir, eval_folder, allow_fingerprint_mismatch)
        distributed.barrier(ctx.info)  # no rank tears the group down while another still uses it
    finally:
        distributed.cleanup()


def _evaluate(ctx: EvalContext, workdir: str, eval_folder: str, allow_fingerprint_mismatch: bool = False) -> None:
    config, root = ctx.config, os.path.join(workdir, eval_folder)
    if ctx.info.is_main:
        checkpoint.remove_stale_tmp(root)
    imported = config.eval.import_ckpt
    if imported:
        step = load_imported(ctx, str(imported))
        stem = os.path.splitext(os.path.basename(str(imported)))[0]
        evaluate_checkpoint(ctx, os.path.join(root, f"imported_{stem}"), step, str(imported))
        return
    chosen = checkpoints_in_range(workdir, config.eval.steps_range)
    for step, path in tqdm(chosen, desc="checkpoints", dynamic_ncols=True) if ctx.bar("c") and len(chosen) > 1 \
            else chosen:
        loaded = load_ema_weights(ctx, path, allow_fingerprint_mismatch)
        evaluate_checkpoint(ctx, os.path.join(root, f"ckpt_{loaded}"), loaded, path)


def sample(config: Any, workdir: str, eval_folder: str = "eval", allow_fingerprint_mismatch: bool = False) -> str:
    """eval.num_samples samples from the newest checkpoint (or eval.import_ckpt) with the configured
    sampler: `<workdir>/<eval_folder>/sample_<step>/<method>_<tag>/` (samples.npz, samples.png, report.json)."""
    ctx = build_context(schedule_store.resolve(config, workdir))  # sampling.schedule="optimized" -> the file
    try:
        with workdir_lock.hold_on_main(os.path.join(workdir, eval_folder), ctx.info):
            out = _sample(ctx, workdir, eval_folder, allow_fingerprint_mismatch)
        distributed.barrier(ctx.info)
        return out
    finally:
        distributed.cleanup()


def _sample(ctx: EvalContext, workdir: str, eval_folder: str, allow_fingerprint_mismatch: bool = False) -> str:
    if ctx.info.is_main:
        checkpoint.remove_stale_tmp(os.path.join(workdir, eval_folder))
    imported = ctx.config.eval.import_ckpt
    path = str(imported) if imported else checkpoint.latest_checkpoint(workdir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints; train first (--mode train) or set "
                                f"eval.import_ckpt")
    step = load_imported(ctx, path) if imported else load_ema_weights(ctx, path, allow_fingerprint_mismatch)
    return sampling_job(ctx, os.path.join(workdir, eval_folder, f"sample_{step}"), step, path, with_metrics=False)
