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
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from tqdm.auto import tqdm

from . import builders, checkpoint, datasets, distributed, images, inception, likelihood, losses, metrics, report, workdir_lock
from . import schedule_store, shards, training
from .models import compat
from .models.ema import ExponentialMovingAverage
from .pipeline import spec as spec_lib
from .pipeline.spec import Spec, as_spec
from .data_stream import keyed_seed

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Sampler from the spec
# ----------------------------------------------------------------------------------------------
def sampler_settings(config: Any, sde=None) -> Tuple[str, Dict[str, Any]]:
    """(method, options): every option the sampler takes, the spec's where set, else the sampler's own
    default (recorded, so a report shows every option)."""
    spec = as_spec(config)
    method = spec.sampling.method
    return method, {**spec_lib.sampler_defaults(method), **dict(spec.sampling.options)}


def sampler_from_config(config: Any, sde, shape: Sequence[int], device: Any = None,
                        dtype: torch.dtype = torch.float32) -> Callable:
    """The spec's sampler (sampling.method with the options it was given) for `shape`."""
    return training.build_sampler(as_spec(config), sde, shape, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Context: distributed info, SDE, model state, score function
# ----------------------------------------------------------------------------------------------
@dataclass
class _Context:
    config: Spec
    info: distributed.DistInfo
    sde: Any
    state: Dict[str, Any]
    shape: Tuple[int, ...]           # one item, no batch dimension
    seed: int
    data: Dict[Tuple[str, bool], Any] = field(default_factory=dict)   # splits built once per run
    checkpoint_id: str = ""          # checkpoint.content_id of the loaded weights (keys the done-cache)

    def split(self, name: str, dequantize: bool = False):
        """The data split `name` ('train' or 'test'), built on first use and kept for every checkpoint."""
        if (name, dequantize) not in self.data:
            self.data[name, dequantize] = _split(self.config, name, dequantize)
        return self.data[name, dequantize]

    @property
    def model(self) -> torch.nn.Module:
        return self.state["model"]

    def score_fn(self) -> Callable:
        self.model.eval()
        return builders.score_fn_from_model(self.config, self.sde, self.model)


def _context(spec: Spec) -> _Context:
    info = distributed.setup(spec.device)
    sde = builders.sde_from_config(spec)
    model = builders.build_model(spec, info.device)  # no optimizer: building Adam costs ~10 s of imports
    state = {"model": model, "ema": ExponentialMovingAverage(model.parameters(), spec.model.ema_rate),
             "optimizer": None, "step": 0}
    return _Context(spec, info, sde, state, spec.shape, spec.seed)


def _reset_ema(state: Dict[str, Any]) -> None:
    """Make the EMA equal to the loaded (EMA) weights, so EMA-swapping evaluation code is a no-op."""
    decay = getattr(state.get("ema"), "decay", 0.999)
    state["ema"] = ExponentialMovingAverage(state["model"].parameters(), decay)


def load_ema_weights(ctx: _Context, path: str, allow_fingerprint_mismatch: bool = False) -> int:
    """Load our checkpoint (weights-only, checksum and config fingerprint checked) and put its EMA
    weights into the model; returns its step."""
    from .training import fingerprint_fields
    ckpt = checkpoint.load_checkpoint(path, map_location="cpu", fingerprint_fields=fingerprint_fields(ctx.config),
                                      allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    builders.load_state(ctx.state, ckpt, path)
    ctx.checkpoint_id = checkpoint.content_id(path, ckpt)
    if "ema" in ckpt:
        ctx.state["ema"].copy_to(ctx.model.parameters())
    checkpoint.require_finite_weights(path, ctx.model)  # no "nan" metrics with exit status 0
    _reset_ema(ctx.state)
    return int(ckpt["step"])


def load_imported(ctx: _Context, path: str) -> int:
    """Load a score_sde_pytorch checkpoint's EMA weights through the models' compat importer."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"eval.import_ckpt={path!r} does not exist; point it at a score_sde_pytorch "
                                f"checkpoint_<n>.pth")
    converted = compat.load_score_sde_pytorch(path, ctx.model, which="ema")
    ctx.checkpoint_id = checkpoint.content_id(path)
    _reset_ema(ctx.state)
    return int(converted.get("step", 0))


def checkpoints_in_range(workdir: str, steps: Optional[Tuple[int, Optional[int]]]) -> List[Tuple[int, str]]:
    """Our numbered checkpoints with begin <= step <= end (end None: no upper bound), by step;
    steps None: the newest one only."""
    found = checkpoint.list_checkpoints(workdir)
    if steps is None:
        if not found:
            raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints; train first (--mode train) or "
                                    f"set eval.import_ckpt")
        return found[-1:]
    begin, end = steps
    chosen = [(s, p) for s, p in found if s >= begin and (end is None or s <= end)]
    if not chosen:
        raise FileNotFoundError(
            f"no checkpoint with training step in [{begin}, {end}] under {workdir}/checkpoints (found steps "
            f"{[s for s, _ in found]}); train first or set eval.begin_ckpt/eval.end_ckpt (they are steps)")
    return chosen


# ----------------------------------------------------------------------------------------------
# Data helpers
# ----------------------------------------------------------------------------------------------
def _batches(ds, indices: Sequence[int], batch_size: int, bar: Optional[str] = None) -> Iterator[torch.Tensor]:
    """Batches of ds[indices]; with a progress bar named `bar` (rank 0, eval.progress)."""
    indices = list(indices)
    starts = range(0, len(indices), batch_size)
    for start in tqdm(starts, desc=bar, leave=False, dynamic_ncols=True) if bar else starts:
        yield torch.stack([ds[i] for i in indices[start:start + batch_size]])


def _bar(ctx: "_Context", name: str) -> Optional[str]:
    """`name` when this process shows progress bars (rank 0 with eval.progress), else None."""
    return name if ctx.info.is_main and ctx.config.eval.progress else None


def _split(spec: Spec, name: str, dequantize: bool = False):
    """The 'train' or 'test'/'eval' split; images uniformly dequantized and unflipped if asked."""
    spec = as_spec(spec)
    if dequantize:
        spec = spec.replace(data={"uniform_dequantization": True, "random_flip": False})
    train, evals = datasets.get_dataset(spec.replace(data={"num_classes": None}))  # images only (issue 11)
    return train if name == "train" else evals


# ----------------------------------------------------------------------------------------------
# Eval loss and bits/dim
# ----------------------------------------------------------------------------------------------
def eval_loss(ctx: _Context) -> Dict[str, float]:
    """Mean DSM loss of the EMA weights over the whole eval split (losses.get_step_fn(train=False))."""
    cfg, info = ctx.config, ctx.info
    tr = cfg.training
    precision = distributed.resolve_precision(tr.precision, info.device)  # auto: bf16 on CUDA
    step_fn = losses.get_step_fn(ctx.sde, train=False, precision=precision, **spec_lib.step_options(cfg))
    ds, scaler = ctx.split("test"), datasets.get_data_scaler(cfg)
    torch.manual_seed(distributed.rank_seed(ctx.seed, info.rank))
    total = torch.zeros(2, dtype=torch.float64)
    for batch in _batches(ds, distributed.shard_indices(len(ds), info), cfg.eval.batch_size, _bar(ctx, "eval loss")):
        out = step_fn(ctx.state, scaler(batch.to(info.device)))
        total += torch.tensor([out["loss"] * batch.shape[0], batch.shape[0]], dtype=torch.float64)
    total = distributed.all_reduce_sum(total.to(info.device), info).cpu()
    return {"loss": float(total[0] / total[1]), "num_examples": int(total[1])}


def _bits_per_dim(nll: torch.Tensor, config: Any, shape: Tuple[int, ...]) -> torch.Tensor:
    """Per-example bits/dim of the [0,1]-dequantized data; toys (no levels): nll / (d ln 2)."""
    data = as_spec(config).data
    levels = data.num_levels
    if data.is_toy or not levels:
        return nll / (math.prod(shape) * math.log(2.0))
    scale = 2.0 if data.centered else 1.0
    return torch.as_tensor(likelihood.bits_per_dim(nll, shape, num_levels=int(levels), data_scale=scale))


def eval_bpd(ctx: _Context, score_fn: Callable, store: Optional[shards.ShardStore] = None) -> Dict[str, float]:
    """Bits/dim on eval.bpd_dataset via the probability-flow ODE with the eval.likelihood protocol, averaged
    over eval.bpd_num_repeats passes (fresh dequantization noise and probes each); the standard error is
    over the examples' per-pass means.

    Batch k = r * num_batches + j (pass r, items [j*B, (j+1)*B)) seeds its dequantization noise and trace
    probes from (config.seed, k): results do not depend on the number of processes, and with a `store` a
    killed job resumes at its first missing batch with identical results (score_sde.shards)."""
    cfg, info = ctx.config, ctx.info
    ds = ctx.split(cfg.eval.bpd_dataset, dequantize=True)
    bs, limit = cfg.eval.batch_size, cfg.eval.bpd_num_batches
    n = len(ds) if not limit else min(len(ds), limit * bs)
    nll_fn = likelihood.get_likelihood_fn(ctx.sde, **cfg.eval.likelihood.options())
    scaler = datasets.get_data_scaler(cfg)
    num_batches, repeats = -(-n // bs), cfg.eval.bpd_num_repeats

    def batch(k: int) -> Dict[str, torch.Tensor]:
        j = k % num_batches
        torch.manual_seed(keyed_seed(ctx.seed, shards.STREAM_BPD, k, 0))  # the items' dequantization noise
        x = torch.stack([ds[i] for i in range(j * bs, min(n, (j + 1) * bs))])
        gen = shards.batch_generator(ctx.seed, shards.STREAM_BPD, k)
        nll, _, nfe = nll_fn(score_fn, scaler(x.to(info.device)), generator=gen)
        return {"nll": nll.detach().double(), "nfe": torch.tensor([float(nfe)], dtype=torch.float64)}

    out = shards.run_batches(batch, num_batches * repeats, info, store, _bar(ctx, "bits/dim"))
    nll = out.get("nll", torch.zeros(0, dtype=torch.float64)).reshape(repeats, -1)   # [repeats, examples]
    nfe = out.get("nfe", torch.zeros(0, dtype=torch.float64))
    bpd = _bits_per_dim(nll.reshape(-1), cfg, ctx.shape).double().reshape(nll.shape)
    per_example = bpd.mean(dim=0)
    result = {"bits_per_dim": float(bpd.mean()) if bpd.numel() else float("nan"),
              "bits_per_dim_stderr": float(per_example.std() / math.sqrt(len(per_example)))
              if len(per_example) > 1 else 0.0, "nll_nats": float(nll.mean()) if nll.numel() else float("nan"),
              "num_examples": int(nll.shape[1]), "nfe_mean": float(nfe.mean()) if len(nfe) else 0.0}
    if repeats > 1:
        result.update(num_repeats=repeats, bits_per_dim_passes=[float(b) for b in bpd.mean(dim=1)])
    return result


def vlb_variance(spec: Spec) -> str:
    """eval.vlb_variance, else learned for model.learned_variance networks and beta (Ho et al.) otherwise."""
    return spec.eval.vlb_variance or ("learned" if spec.model.learned_variance else "beta")


def eval_vlb(ctx: _Context) -> Dict[str, Any]:
    """DDPM's variational bound (likelihood.ddpm_vlb, Ho et al. 2020 eq. 5) on the bin centres of
    eval.bpd_dataset: per-term nats and bits/dim; discretized decoder on image levels, Gaussian on toys.
    Bits/dim = total / (d ln 2): a code length of the discrete data, comparable with the ODE's bits/dim."""
    cfg, info = ctx.config, ctx.info
    ds = _split(cfg.replace(data={"uniform_dequantization": False, "random_flip": False}), cfg.eval.bpd_dataset)
    bs, limit = cfg.eval.batch_size, cfg.eval.bpd_num_batches
    n = len(ds) if not limit else min(len(ds), limit * bs)
    variance, levels = vlb_variance(cfg), cfg.data.get("num_levels")
    discrete = not cfg.data.is_toy and bool(levels)
    options = dict(decoder="discretized" if discrete else "gaussian", variance=variance,
                   num_levels=int(levels or 256), data_scale=2.0 if cfg.data.centered else 1.0,
                   data_shift=-1.0 if cfg.data.centered else 0.0)
    if variance == "learned":
        model_fn, prediction = losses.learned_variance_fn(ctx.sde, ctx.model, continuous=False,
                                                          prediction=cfg.model.prediction), "eps"
    else:
        model_fn, prediction = ctx.score_fn(), "score"
    gen = torch.Generator(device=info.device).manual_seed(distributed.rank_seed(ctx.seed, info.rank))
    scaler, parts = datasets.get_data_scaler(cfg), []
    for batch in _batches(ds, distributed.shard_indices(n, info), bs, _bar(ctx, "DDPM bound")):
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


VLB_TERMS = ("total", "prior", "diffusion", "decoder")


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------
def draw_samples(ctx: _Context, store: Optional[shards.ShardStore] = None) -> Tuple[torch.Tensor, torch.Tensor, float]:
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
            samplers[b] = sampler_from_config(cfg, ctx.sde, (b, *ctx.shape), device=info.device)
        with torch.no_grad():
            x, nfe = samplers[b](score_fn, generator=shards.batch_generator(ctx.seed, shards.STREAM_SAMPLES, j))
        return {"x": x.detach().float(), "nfe": torch.tensor([float(nfe)], dtype=torch.float64)}

    start = time.perf_counter()
    out = shards.run_batches(batch, -(-total // bs), info, store, _bar(ctx, "sampling"))
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=info.device)
    seconds = float(distributed.all_gather_cat(seconds, info).max())
    x = out.get("x", torch.zeros((0, *ctx.shape)))
    return x, out.get("nfe", torch.zeros(0, dtype=torch.float64)), seconds


def _is_image(ctx: _Context) -> bool:
    return len(ctx.shape) == 3


def _to_data_space(ctx: _Context, x: torch.Tensor) -> torch.Tensor:
    x = datasets.get_data_inverse_scaler(ctx.config)(x)
    return x.clamp(0.0, 1.0) if _is_image(ctx) else x


def save_picture(ctx: _Context, x_data: torch.Tensor, path: str) -> Optional[str]:
    """PNG grid of images (first 64) or scatter plot of 2-D points; None for other data."""
    if _is_image(ctx):
        images.save_image_grid(x_data[:64], path)
    elif ctx.shape == (2,):
        images.scatter_png(x_data.numpy(), path)
    else:
        return None
    return path


# ----------------------------------------------------------------------------------------------
# Sample metrics
# ----------------------------------------------------------------------------------------------
def _reference(ctx: _Context, name: str, limit: int) -> torch.Tensor:
    """Up to `limit` items of split `name` in data space (deterministic given config.seed)."""
    ds = ctx.split(name)
    torch.manual_seed(ctx.seed)
    return torch.stack([ds[i] for i in range(min(len(ds), limit))])


def _inception_enabled(spec: Spec) -> bool:
    return spec.eval.enable_fid or spec.eval.enable_is or spec.eval.enable_kid


def _reference_stats(ctx: _Context, net, fc, ref: torch.Tensor) -> Dict[str, Any]:
    """The reference split's Inception features, computed once per data set (issue 14): from/to the
    eval.fid_stats .npz when set (reused by every later run and checkpoint), else once per run."""
    ev = ctx.config.eval
    if "inception_reference" not in ctx.data:
        images = lambda: metrics.to_uint8(ref)  # noqa: E731  bin centres round back to their exact levels
        if ev.fid_stats:
            os.makedirs(os.path.dirname(os.path.abspath(str(ev.fid_stats))), exist_ok=True)
            ctx.data["inception_reference"] = inception.reference_stats(str(ev.fid_stats), net, images, fc,
                                                                        batch_size=ev.batch_size)
        else:
            feats = inception.inception_features(net, images(), batch_size=ev.batch_size)
            ctx.data["inception_reference"] = {"pool_3": feats.double().numpy()}
    return ctx.data["inception_reference"]


def inception_metrics(ctx: _Context, x_data: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
    """FID, Inception Score and KID as eval.enable_fid/enable_is/enable_kid ask, from one Inception pass
    over the samples (uint8 by eval.fid_rounding, as the papers and common tools) and the cached reference."""
    ev = ctx.config.eval
    net = inception.load_inception(check_inception_path(ctx.config), device=ctx.info.device)
    feats = inception.inception_features(net, metrics.to_uint8(x_data, ev.fid_rounding), batch_size=ev.batch_size,
                                         progress=_bar(ctx, "f") is not None)
    fc = inception.load_inception_logits(str(ev.inception_path)) if ev.enable_is else None
    out: Dict[str, float] = {}
    if ev.enable_fid or ev.enable_kid:
        reference = _reference_stats(ctx, net, fc, ref)
        if ev.enable_fid:
            out["fid"] = metrics.fid_to_reference(feats, reference)
        if ev.enable_kid:
            out["kid"] = metrics.kernel_inception_distance(feats, reference["pool_3"])
    if ev.enable_is:
        out["inception_score"], out["inception_score_std"] = metrics.inception_score(
            inception.inception_logits(fc, feats))
    return out


REFERENCE_SPLITS = spec_lib.SPLITS


def reference_split(config: Any) -> str:
    """eval.reference_split: the split samples are compared with (SW2, FID)."""
    return as_spec(config).eval.reference_split


def num_reference(config: Any) -> int:
    """eval.num_reference: at most this many items of the reference split."""
    return as_spec(config).eval.num_reference


def sample_metrics(ctx: _Context, x_model: torch.Tensor, x_data: torch.Tensor) -> Dict[str, float]:
    """Sliced W2 to the reference split (with the other split's floor), exact NLL for toy_ring, FID."""
    cfg = ctx.config
    split = reference_split(cfg)
    other = REFERENCE_SPLITS[1 - REFERENCE_SPLITS.index(split)]
    ref, floor = _reference(ctx, split, num_reference(cfg)), _reference(ctx, other, x_data.shape[0])
    sw = lambda a: metrics.sliced_wasserstein(a, ref, generator=torch.Generator().manual_seed(ctx.seed))  # noqa
    out = {"sliced_wasserstein": sw(x_data), "sliced_wasserstein_floor": sw(floor),
           "reference_split": split, "num_reference": int(ref.shape[0])}
    density = datasets.get_toy_density(cfg)
    if density is not None:  # exact density known: mean NLL of samples vs. of held-out data (model space)
        ref_model = datasets.get_data_scaler(cfg)(ref)
        out["sample_nll"] = float(-density.log_prob(x_model.double()).mean())
        out["data_nll"] = float(-density.log_prob(ref_model.double()).mean())
        out["delta_log_p"] = out["data_nll"] - out["sample_nll"]
    if _inception_enabled(cfg):
        out.update(inception_metrics(ctx, x_data, ref))
    return out


def check_inception_path(config: Any) -> str:
    """eval.inception_path when eval.enable_fid; a clear error when it is unset or missing."""
    path = as_spec(config).eval.inception_path
    if not path or not os.path.isfile(str(path)):
        raise FileNotFoundError(
            f"eval.enable_fid needs local Inception weights but eval.inception_path={path!r} is not a file; "
            f"set --config.eval.inception_path=/path/to/pt_inception-2015-12-05.pth or eval.enable_fid=False")
    return str(path)


# ----------------------------------------------------------------------------------------------
# Per-checkpoint work
# ----------------------------------------------------------------------------------------------
def _run_once(ctx: _Context, path: str, settings: Dict[str, Any], work: Callable[[], Dict[str, Any]]) -> bool:
    """Run `work` unless the report at `path` records the same settings; rank 0 writes the report.

    The skip decision is rank 0's, broadcast, so every rank takes part in the same collectives."""
    done = distributed.broadcast_object(report.is_done(path, settings) if ctx.info.is_main else None, ctx.info)
    if done:
        log.info("skipping %s (already done)", path)
        return False
    payload = work()
    if ctx.info.is_main:
        report.write_json(path, {"settings": settings, **payload})
    distributed.barrier(ctx.info)
    return True


def sampling_job(ctx: _Context, folder: str, step: int, source: str, with_metrics: bool) -> str:
    """Draw samples with the configured sampler into `<folder>/<method>_<tag>/`; returns that folder."""
    method, options = sampler_settings(ctx.config, ctx.sde)
    out = os.path.join(folder, f"{method}_{report.options_tag(options)}")
    settings = {"sampler": method, "options": options, "num_samples": int(ctx.config.eval.num_samples),
                "seed": ctx.seed, "checkpoint_step": step, "checkpoint_checksum": ctx.checkpoint_id,
                "metrics": with_metrics, "fid": with_metrics and ctx.config.eval.enable_fid}
    if with_metrics and _inception_enabled(ctx.config):  # issue 14: what the Inception metrics depend on
        ev = ctx.config.eval
        settings.update(inception={"is": ev.enable_is, "kid": ev.enable_kid, "rounding": ev.fid_rounding,
                                   "fid_stats": ev.fid_stats})
    if with_metrics:  # a different reference is a different result: not skipped as already done
        settings["reference"] = [reference_split(ctx.config), num_reference(ctx.config)]

    store = shards.ShardStore(os.path.join(out, "shards"), settings, ctx.checkpoint_id)

    def work() -> Dict[str, Any]:
        x, nfe, seconds = draw_samples(ctx, store)
        if not ctx.info.is_main:
            return {}
        x_data = _to_data_space(ctx, x)
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

    if _run_once(ctx, os.path.join(out, "report.json"), settings, work) and ctx.info.is_main:
        store.clear()  # the report is written: the per-batch shards are no longer needed
    return out


def evaluate_checkpoint(ctx: _Context, folder: str, step: int, source: str) -> None:
    """Loss, bits/dim and sampling for the weights currently loaded in ctx, as the config enables."""
    ev, base = ctx.config.eval, {"checkpoint_step": step, "checkpoint_checksum": ctx.checkpoint_id, "seed": ctx.seed}
    if ev.enable_loss:
        _run_once(ctx, os.path.join(folder, "loss.json"), base, lambda: eval_loss(ctx))
    if ev.enable_bpd:
        settings = dict(base, dataset=ev.bpd_dataset, likelihood=ev.likelihood.to_dict(),
                        num_repeats=ev.bpd_num_repeats, num_batches=ev.bpd_num_batches,
                        batch_size=ev.batch_size)
        store = shards.ShardStore(os.path.join(folder, "bpd_shards"), settings, ctx.checkpoint_id)
        if _run_once(ctx, os.path.join(folder, "bpd.json"), settings, lambda: eval_bpd(ctx, ctx.score_fn(), store)) \
                and ctx.info.is_main:
            store.clear()  # the report is written: the per-batch shards are no longer needed
    if ev.enable_vlb:  # issue 12: the DDPM bound next to the ODE bits/dim
        settings = dict(base, dataset=ev.bpd_dataset, variance=vlb_variance(ctx.config),
                        num_batches=ev.bpd_num_batches, batch_size=ev.batch_size)
        _run_once(ctx, os.path.join(folder, "vlb.json"), settings, lambda: eval_vlb(ctx))
    if ev.enable_sampling:
        sampling_job(ctx, folder, step, source, with_metrics=True)


def _checks(spec: Spec) -> None:
    """Fail before any work on settings that would fail later (the spec checked the rest)."""
    if spec.eval.enable_sampling and _inception_enabled(spec):
        if spec.data.is_toy:
            raise ValueError("eval.enable_fid/enable_is/enable_kid apply to image data sets only; set them False")
        check_inception_path(spec)


def evaluate(config: Any, workdir: str, eval_folder: str = "eval", allow_fingerprint_mismatch: bool = False) -> None:
    """Evaluate the newest checkpoint, or every checkpoint with step in [eval.begin_ckpt, eval.end_ckpt]
    when a range is set, or eval.import_ckpt. Holds the eval folder's lock (score_sde.workdir_lock)."""
    spec = schedule_store.resolve(config, workdir)  # sampling.schedule="optimized" -> the stored file
    _checks(spec)
    ctx = _context(spec)
    try:
        with workdir_lock.hold_on_main(os.path.join(workdir, eval_folder), ctx.info):
            _evaluate(ctx, workdir, eval_folder, allow_fingerprint_mismatch)
        distributed.barrier(ctx.info)  # no rank tears the group down while another still uses it
    finally:
        distributed.cleanup()


def _evaluate(ctx: _Context, workdir: str, eval_folder: str, allow_fingerprint_mismatch: bool = False) -> None:
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
    for step, path in tqdm(chosen, desc="checkpoints", dynamic_ncols=True) if _bar(ctx, "c") and len(chosen) > 1 \
            else chosen:
        loaded = load_ema_weights(ctx, path, allow_fingerprint_mismatch)
        evaluate_checkpoint(ctx, os.path.join(root, f"ckpt_{loaded}"), loaded, path)


def sample(config: Any, workdir: str, eval_folder: str = "eval", allow_fingerprint_mismatch: bool = False) -> str:
    """eval.num_samples samples from the newest checkpoint (or eval.import_ckpt) with the configured
    sampler: `<workdir>/<eval_folder>/sample_<step>/<method>_<tag>/` (samples.npz, samples.png, report.json)."""
    ctx = _context(schedule_store.resolve(config, workdir))  # sampling.schedule="optimized" -> the file
    try:
        with workdir_lock.hold_on_main(os.path.join(workdir, eval_folder), ctx.info):
            out = _sample(ctx, workdir, eval_folder, allow_fingerprint_mismatch)
        distributed.barrier(ctx.info)
        return out
    finally:
        distributed.cleanup()


def _sample(ctx: _Context, workdir: str, eval_folder: str, allow_fingerprint_mismatch: bool = False) -> str:
    if ctx.info.is_main:
        checkpoint.remove_stale_tmp(os.path.join(workdir, eval_folder))
    imported = ctx.config.eval.import_ckpt
    path = str(imported) if imported else checkpoint.latest_checkpoint(workdir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints; train first (--mode train) or set "
                                f"eval.import_ckpt")
    step = load_imported(ctx, path) if imported else load_ema_weights(ctx, path, allow_fingerprint_mismatch)
    return sampling_job(ctx, os.path.join(workdir, eval_folder, f"sample_{step}"), step, path, with_metrics=False)
