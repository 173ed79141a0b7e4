"""Digits: probability-flow ODE bits/dim next to the DDPM variational bound's bits/dim, for one discrete DDPM
model (configs/vp/ddpm/digits.py) trained through the library (score_sde.training.train).

    python bench/likelihood_digits.py --workdir runs/ddpm_digits_bench --n_iters 1500   # trains if needed

Both numbers bound -log2 P(k) per dimension of the 17-level digits on the same 300 held-out images and the
same cubes (level k <-> [k/17, (k+1)/17) in [0, 1]):
  ODE: likelihood.get_likelihood_fn (Hutchinson, one Rademacher probe, RK45 1e-5) on uniformly dequantized
       x = (k + u)/17, converted by bits_per_dim (num_levels=17, data_scale=2) - at eps 1e-5 and at 1e-3;
  VLB: likelihood.ddpm_vlb (N = 1000 levels, discretized decoder on those cubes, sigma^2 = beta and beta~)
       on the bin centres (k + 1/2)/17, total/(d ln 2).
Takes minutes on a 2-core CPU (training ~1 s per step on a shared machine).
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.vp.ddpm.digits import get_config  # noqa: E402
from score_sde import builders, datasets, likelihood, training  # noqa: E402


def trained_state(config, workdir: str):
    if not glob.glob(os.path.join(workdir, "checkpoints", f"checkpoint_{config.training.n_iters}.pth")):
        training.train(config, workdir)
    state = builders.create_state(config, torch.device("cpu"))
    path = os.path.join(workdir, "checkpoints", f"checkpoint_{config.training.n_iters}.pth")
    builders.load_state(state, torch.load(path, map_location="cpu", weights_only=False))
    state["ema"].copy_to(state["model"].parameters())
    return state["model"].eval()


def main(args) -> None:
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    config = get_config()
    config.device = "cpu"
    config.training.n_iters = args.n_iters
    config.training.snapshot_sampling = False
    config.training.eval_freq = config.training.snapshot_freq = args.n_iters
    config.training.snapshot_freq_for_preemption = min(250, args.n_iters)
    start = time.perf_counter()
    model = trained_state(config, args.workdir)
    print(f"model ready after {time.perf_counter() - start:.0f} s")
    sde = builders.sde_from_config(config)
    score_fn = builders.score_fn_from_model(config, sde, model)
    _, eval_ds = datasets.get_dataset(config)                # bin centres (k + 1/2)/17: no dequantization
    n = min(args.num_images, len(eval_ds))
    centres = torch.stack([eval_ds[i] for i in range(n)]) * 2 - 1
    g = torch.Generator().manual_seed(0)
    dequantized = centres + (torch.rand(centres.shape, generator=g) - 0.5) * 2 / 17
    d = centres[0].numel()
    print(f"{n} held-out digits, d = {d}\n")
    print("| method | NFE | seconds | bits/dim (± s.e.) |")
    print("|---|---|---|---|")
    for eps in (1e-5, 1e-3):
        start = time.perf_counter()
        nll, _, nfe = likelihood.get_likelihood_fn(sde, eps=eps, trace="hutchinson-rademacher")(
            score_fn, dequantized, torch.Generator().manual_seed(1))
        bpd = likelihood.bits_per_dim(nll, centres.shape[1:], num_levels=17, data_scale=2.0)
        print(f"| ODE, eps {eps:g} | {nfe} | {time.perf_counter() - start:.0f} | "
              f"{float(bpd.mean()):.3f} ± {float(bpd.std() / math.sqrt(n)):.3f} |")
    eps_fn = lambda x, t: score_fn(x, t)  # noqa: E731  (score through the adapter)
    for variance in ("beta", "beta_tilde"):
        start = time.perf_counter()
        vlb = likelihood.ddpm_vlb(sde, eps_fn, centres, variance=variance, num_levels=17, data_scale=2.0,
                                  data_shift=-1.0, generator=torch.Generator().manual_seed(2))
        bpd = vlb["total"] / (d * math.log(2))
        parts = ", ".join(f"{k} {float(v.mean()) / (d * math.log(2)):.3f}" for k, v in vlb.items() if k != "total")
        print(f"| VLB, sigma^2 = {variance} ({parts}) | {sde.N} | {time.perf_counter() - start:.0f} | "
              f"{float(bpd.mean()):.3f} ± {float(bpd.std() / math.sqrt(n)):.3f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/ddpm_digits_bench")
    parser.add_argument("--n_iters", type=int, default=1500)
    parser.add_argument("--num_images", type=int, default=300)
    main(parser.parse_args())
