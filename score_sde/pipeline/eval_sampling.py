"""The sampling job: eval.num_samples samples with the spec's sampler, their picture, and their metrics
against a reference split, in `<folder>/<method>_<hash of its options>/` (samples.npz, samples.png,
report.json). Samples are split across ranks in keyed batches and resume from per-batch shards."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, Optional, Tuple

import torch

from .. import builders, datasets, distributed, images, metrics, report, shards
from . import spec as spec_lib
from .eval_context import EvalContext, run_once
from .spec import as_spec

log = logging.getLogger(__name__)
REFERENCE_SPLITS = spec_lib.SPLITS


def sampler_settings(config: Any, sde=None) -> Tuple[str, Dict[str, Any]]:
    """(method, options): every option the sampler takes, the spec's where set, else the sampler's own
    default (recorded, so a report shows every option)."""
    spec = as_spec(config)
    method = spec.sampling.method
    return method, {**spec_lib.sampler_defaults(method), **dict(spec.sampling.options)}


sampler_from_config = builders.build_sampler  # the spec's sampler for a shape (evaluation's old name)


def draw_samples(ctx: EvalContext, store: Optional[shards.ShardStore] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """eval.num_samples samples (model space, CPU) in global batches of eval.batch_size split across ranks,
    with the NFE of each batch call and the slowest rank's seconds. Batch j draws from a generator keyed
    (config.seed, j) (shards.batch_generator): the samples do not depend on the number of processes, and
    with a `store` a killed job resumes at its first missing batch with identical results."""
    cfg, info = ctx.config, ctx.info
    total, bs = int(cfg.eval.num_samples), int(cfg.eval.batch_size)
    score_fn, samplers = ctx.score_fn(), {}

    def batch(j: int) -> Dict[str, torch.Tensor]:
        b = min(bs, total - j * bs)
        if b not in samplers:
            samplers[b] = builders.build_sampler(cfg, ctx.sde, (b, *ctx.shape), device=info.device)
        with torch.no_grad():
            x, nfe = samplers[b](score_fn, generator=shards.batch_generator(ctx.seed, shards.STREAM_SAMPLES, j))
        return {"x": x.detach().float(), "nfe": torch.tensor([float(nfe)], dtype=torch.float64)}

    start = time.perf_counter()
    out = shards.run_batches(batch, -(-total // bs), info, store, ctx.bar("sampling"))
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=info.device)
    seconds = float(distributed.all_gather_cat(seconds, info).max())
    x = out.get("x", torch.zeros((0, *ctx.shape)))
    return x, out.get("nfe", torch.zeros(0, dtype=torch.float64)), seconds


def is_image(ctx: EvalContext) -> bool:
    return len(ctx.shape) == 3


def to_data_space(ctx: EvalContext, x: torch.Tensor) -> torch.Tensor:
    x = datasets.get_data_inverse_scaler(ctx.config)(x)
    return x.clamp(0.0, 1.0) if is_image(ctx) else x


def save_picture(ctx: EvalContext, x_data: torch.Tensor, path: str) -> Optional[str]:
    """PNG grid of images (first 64) or scatter plot of 2-D points; None for other data."""
    if is_image(ctx):
        images.save_image_grid(x_data[:64], path)
    elif ctx.shape == (2,):
        images.scatter_png(x_data.numpy(), path)
    else:
        return None
    return path


# ----------------------------------------------------------------------------------------------
# Metrics against a reference split
# ----------------------------------------------------------------------------------------------
def reference(ctx: EvalContext, name: str, limit: int) -> torch.Tensor:
    """Up to `limit` items of split `name` in data space (deterministic given config.seed)."""
    ds = ctx.split(name)
    torch.manual_seed(ctx.seed)
    return torch.stack([ds[i] for i in range(min(len(ds), limit))])


def reference_split(config: Any) -> str:
    """eval.reference_split: the split samples are compared with (SW2, FID)."""
    return as_spec(config).eval.reference_split


def num_reference(config: Any) -> int:
    """eval.num_reference: at most this many items of the reference split."""
    return as_spec(config).eval.num_reference


def sample_metrics(ctx: EvalContext, x_model: torch.Tensor, x_data: torch.Tensor) -> Dict[str, float]:
    """Sliced W2 to the reference split (with the other split's floor), exact NLL for toy_ring, FID/IS/KID."""
    cfg = ctx.config
    split = reference_split(cfg)
    other = REFERENCE_SPLITS[1 - REFERENCE_SPLITS.index(split)]
    ref, floor = reference(ctx, split, num_reference(cfg)), reference(ctx, other, x_data.shape[0])
    out = {**metrics.sliced_w2_to_reference(x_data, ref, floor, ctx.seed), "reference_split": split,
           "num_reference": int(ref.shape[0])}
    density = datasets.get_toy_density(cfg)
    if density is not None:  # exact density known: samples vs. held-out data, in model space
        out.update(metrics.density_gap(density.log_prob, x_model, datasets.get_data_scaler(cfg)(ref)))
    if metrics.inception_enabled(cfg.eval):
        out.update(metrics.inception_metrics(x_data, ref, cfg.eval, ctx.info.device, ctx.data,
                                             progress=ctx.bar("f") is not None))
    return out


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------
def job_settings(ctx: EvalContext, method: str, options: Dict[str, Any], step: int,
                 with_metrics: bool) -> Dict[str, Any]:
    """What the job's result depends on: a report with other settings is redone, not skipped."""
    ev = ctx.config.eval
    settings = {"sampler": method, "options": options, "num_samples": int(ev.num_samples),
                "seed": ctx.seed, "checkpoint_step": step, "checkpoint_checksum": ctx.checkpoint_id,
                "metrics": with_metrics, "fid": with_metrics and ev.enable_fid}
    if with_metrics and metrics.inception_enabled(ev):  # issue 14: what the Inception metrics depend on
        settings.update(inception={"is": ev.enable_is, "kid": ev.enable_kid, "rounding": ev.fid_rounding,
                                   "fid_stats": ev.fid_stats})
    if with_metrics:  # a different reference is a different result: not skipped as already done
        settings["reference"] = [reference_split(ctx.config), num_reference(ctx.config)]
    return settings


def sampling_job(ctx: EvalContext, folder: str, step: int, source: str, with_metrics: bool) -> str:
    """Draw samples with the configured sampler into `<folder>/<method>_<tag>/`; returns that folder."""
    method, options = sampler_settings(ctx.config, ctx.sde)
    out = os.path.join(folder, f"{method}_{report.options_tag(options)}")
    settings = job_settings(ctx, method, options, step, with_metrics)
    store = shards.ShardStore(os.path.join(out, "shards"), settings, ctx.checkpoint_id)

    def work() -> Dict[str, Any]:
        x, nfe, seconds = draw_samples(ctx, store)
        if not ctx.info.is_main:
            return {}
        x_data = to_data_space(ctx, x)
        report.save_npz(os.path.join(out, "samples.npz"), samples=x_data.numpy(), nfe=nfe.numpy())
        picture = save_picture(ctx, x_data, os.path.join(out, "samples.png"))
        result = {"sampler": method, "options": options, "checkpoint": source, "checkpoint_step": step,
                  "num_samples": int(x.shape[0]), "nfe": float(nfe.mean()), "nfe_max": float(nfe.max()),
                  "num_batches": int(nfe.numel()), "seconds": seconds, "world_size": ctx.info.world_size,
                  "picture": picture and os.path.basename(picture)}
        if with_metrics:
            result["metrics"] = sample_metrics(ctx, x, x_data)
        log.info("%s: %d samples, NFE %.1f, %.1fs %s", out, x.shape[0], result["nfe"], seconds,
                 result.get("metrics", ""))
        return result

    if run_once(ctx, os.path.join(out, "report.json"), settings, work) and ctx.info.is_main:
        store.clear()  # the report is written: the per-batch shards are no longer needed
    return out
