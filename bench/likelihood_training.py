"""Digits: ODE bits/dim of the default embedded model (configs/vp/digits_ddpmpp_continuous.py) trained with a
chosen objective through the library's step function (losses.get_step_fn), same steps, batch and seed.

    python bench/likelihood_training.py --objective eps          # today's objective (eps-MSE, uniform t)
    python bench/likelihood_training.py --objective likelihood   # lambda = g^2, t importance-sampled
    python bench/likelihood_training.py --set model.dropout=0.0 --ema 0.999 0.995 0.99   # screen variants
    python bench/likelihood_training.py --config vp/digits_edm --objective config --samples 300   # EDM (p4edm)

--set overrides config fields (section.field=python literal, or seed=1); --ema scores extra EMA rates of the same run.
--config picks another configs/<name>.py; --objective config trains its own objective (spec.step_options).
--samples N also draws N samples with the config's sampler and reports their sliced W2 to the held-out split
(and the floor: as many training digits against the same split).

Bits/dim: probability-flow ODE (Hutchinson, one Rademacher probe, RK45 1e-5) on 300 held-out digits,
dequantized by the config's eval.dequantization (uniform: at eps = 1e-5, the protocol, and 1e-3, the eps of
the README's old 1.94 figure; the truncated normal starts at its own sigma's time).
One run takes ~15 minutes on a shared 2-core CPU.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from score_sde import builders, datasets, dequantization, losses, metrics  # noqa: E402
from score_sde.models.ema import ExponentialMovingAverage  # noqa: E402
from score_sde.pipeline.eval_context import split  # noqa: E402
from score_sde.pipeline.eval_likelihood import dequantizer_options  # noqa: E402
from score_sde.pipeline.spec import Spec, step_options  # noqa: E402
from score_sde.training import build_sampler  # noqa: E402

OBJECTIVES = {"eps": dict(), "likelihood": dict(likelihood_weighting=True, time_sampling="importance"),
              "likelihood-uniform": dict(likelihood_weighting=True), "config": None}


def train(config, objective: str, n_iters: int, ema_rates=()):
    torch.manual_seed(config.seed)
    state = builders.create_state(config, torch.device("cpu"))
    extra = {r: ExponentialMovingAverage(state["model"].parameters(), decay=r) for r in ema_rates}
    sde = builders.sde_from_config(config)
    train_ds, _ = datasets.get_dataset(config)
    scaler = datasets.get_data_scaler(config)
    if OBJECTIVES[objective] is None:  # the config's own objective, as training.train reads it
        options = step_options(Spec.from_config(config))
    else:
        options = dict(kind="dsm", continuous=True, reduce_mean=bool(config.training.reduce_mean),
                       prediction=builders.prediction(config), **OBJECTIVES[objective])
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config.optim), **options)
    g = torch.Generator().manual_seed(config.seed)
    for _ in range(n_iters):
        idx = torch.randint(len(train_ds), (config.training.batch_size,), generator=g)
        step_fn(state, scaler(torch.stack([train_ds[int(i)] for i in idx])))
        for ema in extra.values():
            ema.update(state["model"].parameters())
    emas = {config.model.ema_rate: state["ema"], **extra}
    return sde, state["model"].eval(), emas


def main(args) -> None:
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    config = importlib.import_module("configs." + args.config.replace("/", ".")).get_config()
    for item in args.set:
        path, _, text = item.partition("=")
        *sections, name = path.split(".")  # section.field, or a top-level field such as seed
        node = config
        for section in sections:
            node = node[section]
        node[name] = ast.literal_eval(text)
    start = time.perf_counter()
    sde, model, emas = train(config, args.objective, args.n_iters, args.ema)
    print(f"{args.config} objective {args.objective} {args.set}: {args.n_iters} steps in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    spec = Spec.from_config(config)
    eval_ds = split(spec, "test", centres=True)               # bin centres; the config's dequantizer draws the noise
    y = datasets.get_data_scaler(config)(torch.stack([eval_ds[i] for i in range(min(args.num_images, len(eval_ds)))]))
    for rate, ema in emas.items():
        ema.copy_to(model.parameters())
        score_fn = builders.score_fn_from_model(config, sde, model)
        for eps in args.eps:   # (the truncated-normal dequantizer starts at its own sigma's time instead)
            nats, nfe = dequantization.discrete_nll(sde, score_fn, y, eps=eps, trace="hutchinson-rademacher",
                                                    generator=torch.Generator().manual_seed(1),
                                                    **dequantizer_options(spec))
            bpd = nats / (y[0].numel() * math.log(2))
            print(f"| {args.objective} {' '.join(args.set)} | ema {rate:g} | eps {eps:g} | {nfe} | "
                  f"{float(bpd.mean()):.3f} ± {float(bpd.std() / math.sqrt(len(bpd))):.3f} |", flush=True)
        if args.samples:
            print(f"| {args.config} | ema {rate:g} | sliced W2 of {args.samples} samples "
                  f"({config.sampling.method}) | {sample_sw2(config, sde, model, args.samples)} |", flush=True)


def sample_sw2(config, sde, model, n: int) -> str:
    """Sliced W2 (data space) of n samples of the config's sampler to the held-out split, and the floor."""
    spec = Spec.from_config(config)
    sampler = build_sampler(spec, sde, (n, *spec.shape), device=torch.device("cpu"))
    with torch.no_grad():
        x, nfe = sampler(builders.score_fn_from_model(config, sde, model),
                         generator=torch.Generator().manual_seed(config.seed))
    samples = datasets.get_data_inverse_scaler(config)(x).clamp(0, 1)
    train_ds, eval_ds = datasets.get_dataset(config)
    ref = torch.stack([eval_ds[i] for i in range(len(eval_ds))])
    floor = torch.stack([train_ds[i] for i in range(min(n, len(train_ds)))])
    sw = lambda a: metrics.sliced_wasserstein(a, ref, generator=torch.Generator().manual_seed(0))  # noqa: E731
    return f"{sw(samples):.4f} (floor {sw(floor):.4f}, NFE {nfe})"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="likelihood")
    parser.add_argument("--config", default="vp/digits_ddpmpp_continuous", help="configs/<name>.py")
    parser.add_argument("--samples", type=int, default=0, help="also report the sliced W2 of this many samples")
    parser.add_argument("--n_iters", type=int, default=1500)
    parser.add_argument("--num_images", type=int, default=300)
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-5, 1e-3])
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. model.dropout=0.0")
    parser.add_argument("--ema", type=float, nargs="*", default=[], help="extra EMA rates to score")
    main(parser.parse_args())
