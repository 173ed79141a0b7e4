"""Evaluation jobs on held-out data: the eval loss, bits/dim through the probability-flow ODE, and
DDPM's variational bound. Each takes the run's EvalContext (weights loaded) and returns its report."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from .. import datasets, dequantization, distributed, likelihood, losses, shards
from . import spec as spec_lib
from .eval_context import EvalContext, batches
from .spec import Spec, as_spec

log = logging.getLogger(__name__)
VLB_TERMS = ("total", "prior", "diffusion", "decoder")


def eval_loss(ctx: EvalContext) -> Dict[str, float]:
    """Mean DSM loss of the EMA weights over the whole eval split (losses.get_step_fn(train=False))."""
    cfg, info = ctx.config, ctx.info
    tr = cfg.training
    precision = distributed.resolve_precision(tr.precision, info.device)  # auto: bf16 on CUDA
    step_fn = losses.get_step_fn(ctx.sde, train=False, precision=precision, **spec_lib.step_options(cfg))
    ds, scaler = ctx.split("test"), datasets.get_data_scaler(cfg)
    torch.manual_seed(distributed.rank_seed(ctx.seed, info.rank))
    total = torch.zeros(2, dtype=torch.float64)
    for batch in batches(ds, distributed.shard_indices(len(ds), info), cfg.eval.batch_size, ctx.bar("eval loss")):
        out = step_fn(ctx.state, scaler(batch.to(info.device)))
        total += torch.tensor([out["loss"] * batch.shape[0], batch.shape[0]], dtype=torch.float64)
    total = distributed.all_reduce_sum(total.to(info.device), info).cpu()
    return {"loss": float(total[0] / total[1]), "num_examples": int(total[1])}


def bits_per_dim(nll: torch.Tensor, config: Any, shape: Tuple[int, ...]) -> torch.Tensor:
    """Per-example bits/dim of the [0,1]-dequantized data; toys (no levels): nll / (d ln 2)."""
    data = as_spec(config).data
    if not data.is_discrete:
        return nll / (math.prod(shape) * math.log(2.0))
    levels = data.quantization
    return torch.as_tensor(likelihood.bits_per_dim(nll, shape, num_levels=levels["num_levels"],
                                                   data_scale=levels["data_scale"]))


def dequantizer_options(spec: Spec) -> Dict[str, Any]:
    """dequantization.discrete_nll's data options: the levels in model space (DataSpec.quantization),
    eval.dequantization and its sigma (None: a quarter of the bin width)."""
    levels, sigma = spec.data.quantization, spec.eval.dequantization_sigma
    if spec.eval.dequantization == "truncated_normal" and sigma is None:
        sigma = dequantization.bin_width(levels["num_levels"], levels["data_scale"]) / 4
    return dict(levels, dequantizer=spec.eval.dequantization, sigma=sigma)


def bound_items(ctx: EvalContext) -> Tuple[Any, int, int]:
    """(eval.bpd_dataset's bin centres, how many the bounds score, batch size): the first
    eval.bpd_num_batches batches of eval.batch_size items (0: the whole split)."""
    ev = ctx.config.eval
    ds, limit = ctx.split(ev.bpd_dataset, centres=True), ev.bpd_num_batches
    return ds, len(ds) if not limit else min(len(ds), limit * ev.batch_size), ev.batch_size


def eval_bpd(ctx: EvalContext, score_fn: Callable, store: Optional[shards.ShardStore] = None) -> Dict[str, float]:
    """Bits/dim on eval.bpd_dataset via the probability-flow ODE with the eval.likelihood protocol, averaged
    over eval.bpd_num_repeats passes (fresh dequantization noise and probes each); the standard error is
    over the examples' per-pass means.

    Discrete data are dequantized by eval.dequantization (score_sde.dequantization: uniform, or the
    truncated normal at eval.dequantization_sigma); with eval.bpd_dequant_samples = K > 1 each item is
    dequantized K times and its code length is the importance-weighted bound over the K draws.

    Batch k = r * num_batches + j (pass r, items [j*B, (j+1)*B)) seeds its dequantization noise and trace
    probes from (config.seed, k): results do not depend on the number of processes, and with a `store` a
    killed job resumes at its first missing batch with identical results (score_sde.shards)."""
    cfg, info = ctx.config, ctx.info
    ds, n, bs = bound_items(ctx)
    options, scaler = cfg.eval.likelihood.options(), datasets.get_data_scaler(cfg)
    discrete = cfg.data.is_discrete
    if discrete and cfg.eval.dequantization == "truncated_normal" and cfg.data.uniform_dequantization:
        log.warning("eval.dequantization='truncated_normal' on a model trained on uniformly dequantized data: "
                    "a valid but loose bound; 'uniform' fits such a model (docs/likelihood.md)")
    num_batches, repeats, draws = -(-n // bs), cfg.eval.bpd_num_repeats, cfg.eval.bpd_dequant_samples

    def batch(k: int) -> Dict[str, torch.Tensor]:
        j = k % num_batches
        y = scaler(torch.stack([ds[i] for i in range(j * bs, min(n, (j + 1) * bs))]).to(info.device))
        gen = shards.batch_generator(ctx.seed, shards.STREAM_BPD, k)   # dequantization noise, then probes
        if discrete:
            nats, nfe = dequantization.discrete_nll(ctx.sde, score_fn, y, draws=draws, generator=gen,
                                                    **dequantizer_options(cfg), **options)
        else:   # toys: the density itself, each draw the same point
            nll, _, nfe = likelihood.get_likelihood_fn(ctx.sde, **options)(
                score_fn, y.repeat_interleave(draws, dim=0), generator=gen)
            nats = likelihood.importance_weighted_nll(nll.detach().double().reshape(-1, draws))
        return {"nll": nats.detach().double(), "nfe": torch.tensor([float(nfe)], dtype=torch.float64)}

    out = shards.run_batches(batch, num_batches * repeats, info, store, ctx.bar("bits/dim"))
    nll = out.get("nll", torch.zeros(0, dtype=torch.float64)).reshape(repeats, -1)   # [repeats, examples]
    return bpd_report(cfg, nll, out.get("nfe", torch.zeros(0, dtype=torch.float64)), math.prod(ctx.shape))


def bpd_report(cfg: Spec, nll: torch.Tensor, nfe: torch.Tensor, d: int) -> Dict[str, Any]:
    """bpd.json's fields from the code lengths [repeats, examples] in nats, and a log line."""
    bpd = nll / (d * math.log(2.0))
    per_example = bpd.mean(dim=0)
    result = {"bits_per_dim": float(bpd.mean()) if bpd.numel() else float("nan"),
              "bits_per_dim_stderr": float(per_example.std() / math.sqrt(len(per_example)))
              if len(per_example) > 1 else 0.0, "nll_nats": float(nll.mean()) if nll.numel() else float("nan"),
              "num_examples": int(nll.shape[1]), "nfe_mean": float(nfe.mean()) if len(nfe) else 0.0}
    if cfg.data.is_discrete:
        result.update(dequantization=cfg.eval.dequantization)
        if cfg.eval.dequantization == "truncated_normal":
            result.update(dequantization_sigma=dequantizer_options(cfg)["sigma"])
    if nll.shape[0] > 1:
        result.update(num_repeats=nll.shape[0], bits_per_dim_passes=[float(b) for b in bpd.mean(dim=1)])
    if cfg.eval.bpd_dequant_samples > 1:
        result.update(dequant_samples=cfg.eval.bpd_dequant_samples,
                      bound="importance-weighted over the dequantization draws")
    bound = f", {cfg.eval.dequantization} dequantization" if cfg.data.is_discrete else ""
    log.info("bits/dim %.4f ± %.4f on %d %s items (probability-flow ODE%s, %.0f NFE per batch)",
             result["bits_per_dim"], result["bits_per_dim_stderr"], result["num_examples"], cfg.eval.bpd_dataset,
             bound, result["nfe_mean"])
    return result


def vlb_variance(spec: Spec) -> str:
    """eval.vlb_variance, else learned for model.learned_variance networks and beta (Ho et al.) otherwise."""
    return spec.eval.vlb_variance or ("learned" if spec.model.learned_variance else "beta")


def eval_vlb(ctx: EvalContext) -> Dict[str, Any]:
    """DDPM's variational bound (likelihood.ddpm_vlb, Ho et al. 2020 eq. 5) on the bin centres of
    eval.bpd_dataset: per-term nats and bits/dim; discretized decoder on image levels, Gaussian on toys.
    Bits/dim = total / (d ln 2): a code length of the discrete data, comparable with the ODE's bits/dim."""
    cfg, info = ctx.config, ctx.info
    ds, n, bs = bound_items(ctx)
    variance, discrete = vlb_variance(cfg), cfg.data.is_discrete
    options = dict(decoder="discretized" if discrete else "gaussian", variance=variance, **cfg.data.quantization)
    if variance == "learned":
        model_fn, prediction = losses.learned_variance_fn(ctx.sde, ctx.model, continuous=False,
                                                          prediction=cfg.model.prediction), "eps"
    else:
        model_fn, prediction = ctx.score_fn(), "score"
    gen = torch.Generator(device=info.device).manual_seed(distributed.rank_seed(ctx.seed, info.rank))
    scaler, parts = datasets.get_data_scaler(cfg), []
    for batch in batches(ds, distributed.shard_indices(n, info), bs, ctx.bar("DDPM bound")):
        terms = likelihood.ddpm_vlb(ctx.sde, model_fn, scaler(batch.to(info.device)), prediction=prediction,
                                    generator=gen, **options)
        parts.append(torch.stack([terms[k].double() for k in VLB_TERMS], dim=1))
    local = torch.cat(parts) if parts else torch.zeros(0, len(VLB_TERMS), dtype=torch.float64)
    nats = distributed.all_gather_cat(local.to(info.device), info).cpu()     # [examples, terms]
    bits = nats / (math.prod(ctx.shape) * math.log(2.0))
    out: Dict[str, Any] = {"bits_per_dim": float(bits[:, 0].mean()), "bits_per_dim_stderr": float(
        bits[:, 0].std() / math.sqrt(len(bits))) if len(bits) > 1 else 0.0, "num_examples": int(len(bits)),
        "nfe": int(ctx.sde.N), **{k: v for k, v in options.items() if k != "num_levels" or discrete}}
    for j, name in enumerate(VLB_TERMS):
        out[f"{name}_nats"] = float(nats[:, j].mean())
        out[f"{name}_bits_per_dim"] = float(bits[:, j].mean())
    log.info("DDPM bound (sigma^2 = %s): %.4f bits/dim (prior %.4f, diffusion %.4f, decoder %.4f)", variance,
             *(out[f"{k}_bits_per_dim"] for k in VLB_TERMS))
    return out
