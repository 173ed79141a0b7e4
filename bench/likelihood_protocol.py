"""Benchmark: the likelihood protocol on a 64-D image-like Gaussian mixture
(toy.image_like_mixture(64, 4, alpha=1.5, top_var=0.25, spread=0.5): power-law covariance spectrum, random
rotations) with the exact score, against the true -log p0(x).

    python bench/likelihood_protocol.py           # 64 points (a few minutes on 2 CPU cores)
    python bench/likelihood_protocol.py --quick   # 16 points

Rows: score_sde_pytorch's likelihood_fn protocol (eps = 1e-5, one Rademacher probe, RK45 at
rtol = atol = 1e-5, float32 state; reproduced through get_likelihood_fn with those options), the same
at this toolkit's old eps = 1e-3, the old default (exact trace, eps = 1e-3), the new default (exact trace,
eps = 1e-5), variance-reduced Hutchinson (several Rademacher / orthogonal probes), and the two-pass
quadrature (nodes=K: the ODE for x alone, then divergences at K log-sigma midpoints, fresh probes per node). Error = nll - (-log p0)
per point, in nats: RMS over points and mean (bias). Seconds are wall time of one run, reported as a ratio to
the score_sde_pytorch row too (the machine is shared; only ratios from one run mean anything).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import types
from typing import Callable, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from score_sde import likelihood, sde_lib, toy  # noqa: E402

ROWS = [  # label, options (the ratios are to the first row)
    ("score_sde_pytorch (eps 1e-5, 1 Rademacher)", dict(eps=1e-5, trace="hutchinson-rademacher")),
    ("score_sde_pytorch at eps 1e-3", dict(eps=1e-3, trace="hutchinson-rademacher")),
    ("old default (exact, eps 1e-3)", dict(eps=1e-3)),
    ("new default (exact, eps 1e-5)", dict()),
    ("Rademacher x16, eps 1e-5", dict(trace="hutchinson-rademacher", num_probes=16)),
    ("orthogonal x16, eps 1e-5", dict(trace="hutchinson-orthogonal", num_probes=16)),
    ("two-pass, 64 nodes, exact", dict(nodes=64)),
    ("two-pass, 256 nodes x 1 Rademacher", dict(nodes=256, trace="hutchinson-rademacher")),
    ("two-pass, 32 nodes x 4 orthogonal", dict(nodes=32, num_probes=4, trace="hutchinson-orthogonal")),
    ("two-pass, 32 nodes x 8 orthogonal", dict(nodes=32, num_probes=8, trace="hutchinson-orthogonal")),
    ("two-pass, 64 nodes x 8 orthogonal", dict(nodes=64, num_probes=8, trace="hutchinson-orthogonal")),
]


def _ours(sde, score, opts: dict) -> Callable:
    fn = likelihood.get_likelihood_fn(sde, **opts)

    def run(x: torch.Tensor, seed: int) -> Tuple[torch.Tensor, int]:
        nll, _, nfe = fn(score, x, torch.Generator().manual_seed(seed))
        return nll, nfe
    return run


def original_row(checkout: str, sde, score) -> Tuple[str, Callable]:
    """score_sde_pytorch's own likelihood_fn (its likelihood.py and sde_lib.py from `checkout`), driven by the
    oracle score through a stand-in for its models.utils; returns a (label, fn(x, seed) -> (nll, nfe)) row.
    Its ODE function evaluates the drift twice per step (once without gradients, once inside the probe's
    vector-Jacobian product), so it costs more than the reproduction through get_likelihood_fn."""
    stub = types.ModuleType("models.utils")
    stub.get_score_fn = lambda sde_, model, train=False, continuous=True: score
    stub.to_flattened_numpy = lambda t: t.detach().cpu().numpy().reshape((-1,))
    stub.from_flattened_numpy = lambda a, shape: torch.from_numpy(a.reshape(shape))
    package = types.ModuleType("models")
    package.utils = stub
    sys.modules.update({"models": package, "models.utils": stub})
    sys.path.insert(0, checkout)
    import likelihood as original                      # noqa: E402  (the checkout's module)
    import sde_lib as original_sde                     # noqa: E402
    fn = original.get_likelihood_fn(original_sde.VPSDE(), lambda v: v)    # offset 7 - (-1) = 8

    def run(x: torch.Tensor, seed: int) -> Tuple[torch.Tensor, int]:
        torch.manual_seed(seed)
        bpd, _, nfe = fn(None, x)
        d = x[0].numel()
        return (bpd.double() - 8.0) * d * math.log(2), nfe
    return "score_sde_pytorch's own likelihood_fn (out of tree)", run


def main(n: int, repeats: int, checkout: Optional[str] = None) -> None:
    """Every row `repeats` times, interleaved (so load swings hit all rows alike); seconds: the median of
    one row's runs; errors pooled over its runs (probe seed 1 + r)."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    sde, gmm = sde_lib.VPSDE(), toy.image_like_mixture(64, 4, alpha=1.5, top_var=0.25, spread=0.5)
    x = gmm.sample(n, torch.Generator().manual_seed(0))
    truth = -gmm.log_prob(x)
    xf = x.float().reshape(n, 1, 8, 8)                      # an 8x8 "image", float32 like a network's input
    score = gmm.score_fn(sde)
    likelihood.get_likelihood_fn(sde, rtol=1e-2, atol=1e-2)(score, xf[:2])   # warm-up: first-call overheads
    runs = [(label, _ours(sde, score, opts)) for label, opts in ROWS]
    if checkout:
        runs.insert(0, original_row(checkout, sde, score))
    secs = {label: [] for label, _ in runs}
    errs = {label: [] for label, _ in runs}
    nfes = {}
    for r in range(repeats):
        for label, run in runs:
            start = time.perf_counter()
            nll, nfes[label] = run(xf, 1 + r)
            secs[label].append(time.perf_counter() - start)
            errs[label].append(nll.double() - truth)
    print(f"64-D power-law mixture, VP, exact score, {n} points x {repeats} runs, RK45 rtol = atol = 1e-5\n")
    print("| method | NFE | seconds (median) | x time of score_sde_pytorch | RMS error (nats) | bias (nats) | "
          "RMS error / score_sde_pytorch's |")
    print("|---|---|---|---|---|---|---|")
    base = runs[0][0]
    rms = {label: float(torch.cat(e).pow(2).mean().sqrt()) for label, e in errs.items()}
    for label, _ in runs:
        med = float(torch.tensor(secs[label]).median())
        ratio = med / float(torch.tensor(secs[base]).median())
        print(f"| {label} | {nfes[label]} | {med:.2f} | {ratio:.2f} | {rms[label]:.4f} | "
              f"{float(torch.cat(errs[label]).mean()):+.4f} | {rms[label] / rms[base]:.3f} |")


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
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of every row")
    parser.add_argument("--no-divergence-speed", action="store_true", help="skip the per-evaluation table")
    parser.add_argument("--score-sde-pytorch", metavar="DIR", default=None,
                        help="a score_sde_pytorch checkout: time its own likelihood_fn as the first row")
    args = parser.parse_args()
    main(16 if args.quick else 64, args.repeats, args.score_sde_pytorch)
    if not args.no_divergence_speed:
        divergence_speed()
