"""Benchmark: the likelihood protocol on a 64-D image-like Gaussian mixture
(toy.image_like_mixture(64, 4, alpha=1.5, top_var=0.25, spread=0.5): power-law covariance spectrum, random
rotations) with the exact score, against the true -log p0(x).

    python bench/likelihood_protocol.py           # 64 points (a few minutes on 2 CPU cores)
    python bench/likelihood_protocol.py --quick   # 16 points

Rows: score_sde_pytorch's likelihood_fn protocol (eps = 1e-5, one Rademacher probe, RK45 at
rtol = atol = 1e-5, float32 state; reproduced through get_likelihood_fn with those options), the same
at this toolkit's old eps = 1e-3, the old default (exact trace, eps = 1e-3), the new default (exact trace,
eps = 1e-5), and variance-reduced Hutchinson (several Rademacher / orthogonal probes). Error = nll - (-log p0)
per point, in nats: RMS over points and mean (bias). Seconds are wall time of one run, reported as a ratio to
the score_sde_pytorch row too (the machine is shared; only ratios from one run mean anything).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from score_sde import likelihood, sde_lib, toy  # noqa: E402

ROWS = [  # label, options
    ("score_sde_pytorch (eps 1e-5, 1 Rademacher)", dict(eps=1e-5, trace="hutchinson-rademacher")),
    ("score_sde_pytorch at eps 1e-3", dict(eps=1e-3, trace="hutchinson-rademacher")),
    ("old default (exact, eps 1e-3)", dict(eps=1e-3)),
    ("new default (exact, eps 1e-5)", dict()),
    ("Rademacher x16, eps 1e-5", dict(trace="hutchinson-rademacher", num_probes=16)),
    ("Gaussian x16, eps 1e-5", dict(trace="hutchinson-gaussian", num_probes=16)),
    ("orthogonal x4, eps 1e-5", dict(trace="hutchinson-orthogonal", num_probes=4)),
    ("orthogonal x16, eps 1e-5", dict(trace="hutchinson-orthogonal", num_probes=16)),
]


def main(n: int) -> None:
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    sde, gmm = sde_lib.VPSDE(), toy.image_like_mixture(64, 4, alpha=1.5, top_var=0.25, spread=0.5)
    x = gmm.sample(n, torch.Generator().manual_seed(0))
    truth = -gmm.log_prob(x)
    xf = x.float().reshape(n, 1, 8, 8)                      # an 8x8 "image", float32 like a network's input
    score = gmm.score_fn(sde)
    print(f"64-D power-law mixture, VP, exact score, {n} points, RK45 rtol = atol = 1e-5\n")
    print("| method | NFE | seconds | x time of score_sde_pytorch | RMS error (nats) | bias (nats) | "
          "RMS error / score_sde_pytorch's |")
    print("|---|---|---|---|---|---|---|")
    likelihood.get_likelihood_fn(sde, rtol=1e-2, atol=1e-2)(score, xf[:2])   # warm-up: first-call overheads
    base_secs = base_rms = None
    for label, opts in ROWS:
        fn = likelihood.get_likelihood_fn(sde, **opts)
        start = time.perf_counter()
        nll, _, nfe = fn(score, xf, torch.Generator().manual_seed(1))
        secs = time.perf_counter() - start
        err = nll.double() - truth
        rms, bias = float(err.pow(2).mean().sqrt()), float(err.mean())
        base_secs, base_rms = (secs, rms) if base_secs is None else (base_secs, base_rms)
        print(f"| {label} | {nfe} | {secs:.1f} | {secs / base_secs:.2f} | {rms:.4f} | {bias:+.4f} | "
              f"{rms / base_rms:.3f} |")


def loop_divergence(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The previous implementation: one backward pass per dimension."""
    flat = f.reshape(f.shape[0], -1)
    return sum(torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0].reshape(f.shape[0], -1)[:, i]
               for i in range(flat.shape[1]))


def seconds(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def divergence_speed() -> None:
    """Exact divergence: per-dimension loop vs one vmapped backward pass, per evaluation."""
    print("\n| drift | d | batch | loop ms | batched ms | loop / batched |")
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for d, b in ((64, 16), (64, 100), (256, 16)):
        net = torch.nn.Sequential(torch.nn.Linear(d, 256), torch.nn.SiLU(), torch.nn.Linear(256, 256),
                                  torch.nn.SiLU(), torch.nn.Linear(256, d))
        x = torch.randn(b, d, requires_grad=True)
        f = net(x)
        loop = seconds(lambda: loop_divergence(f, x))
        batched = seconds(lambda: likelihood.exact_divergence(f, x))
        print(f"| MLP 256x2 | {d} | {b} | {1e3 * loop:.1f} | {1e3 * batched:.1f} | {loop / batched:.2f} |")
    sde, gmm = sde_lib.VPSDE(), toy.image_like_mixture(64, 4, alpha=1.5, top_var=0.25, spread=0.5)
    x = gmm.sample(100, torch.Generator().manual_seed(0)).requires_grad_(True)
    f = gmm.score_fn(sde)(x, torch.full((100,), 0.5, dtype=torch.float64))
    loop = seconds(lambda: loop_divergence(f, x))
    batched = seconds(lambda: likelihood.exact_divergence(f, x))
    print(f"| mixture oracle score | 64 | 100 | {1e3 * loop:.1f} | {1e3 * batched:.1f} | {loop / batched:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 points instead of 64")
    main(16 if parser.parse_args().quick else 64)
    divergence_speed()
