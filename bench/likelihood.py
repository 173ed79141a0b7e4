"""Benchmark: probability-flow likelihood (trace estimator x tolerance x backend) against exact
log-densities, and the few-step samplers heun / dpm_solver on the 2-D ring, with the exact score.

    python bench/likelihood.py            # both tables (a few minutes on 2 CPU cores)
    python bench/likelihood.py --quick    # fewer samples

Errors are in nats per dimension. "solver err" compares with what the ODE computes when the score is
exact: log p_eps(x) - log p_T(z) + log prior(z) (eq. 39 with the prior in place of p_T); "vs p0" compares
with the data's own log p_0(x), so it also holds the prior mismatch at T and the eps offset.
Hutchinson: bias = mean error over samples, se = its standard error; "ok" when |bias| < 3 se.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from score_sde import likelihood, sampling, sde_lib, toy  # noqa: E402


def at(sde, t):
    tt = torch.tensor([t], dtype=torch.float64)
    return sde.mean_coeff(tt), sde.marginal_std(tt)


def likelihood_table(n2: int, n16: int) -> None:
    datasets = {"ring-2d": (toy.ring_mixture(), n2), "mix-16d": (toy.random_mixture(16, 8, seed=0), n16)}
    sdes = {"VP": sde_lib.VPSDE(), "VE": sde_lib.VESDE()}
    backends = {"scipy": "RK45", "torchdiffeq": "dopri5"}
    traces = ("exact", "hutchinson-rademacher", "hutchinson-gaussian")
    print("| data | sde | backend | trace | tol | NFE | seconds | solver err/dim | vs p0 err/dim | "
          "Hutchinson bias/dim (se) | target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for dname, (gmm, n) in datasets.items():
        x = gmm.sample(n, torch.Generator().manual_seed(0))
        d = gmm.dim
        for sname, sde in sdes.items():
            score = gmm.score_fn(sde)
            lp_eps = gmm.log_prob_t(x, *at(sde, sde.sampling_eps))
            lp0 = gmm.log_prob(x)
            for backend, method in backends.items():
                for trace in traces:
                    for tol in (1e-3, 1e-5):
                        fn = likelihood.get_likelihood_fn(sde, trace=trace, backend=backend, method=method,
                                                          rtol=tol, atol=tol)
                        start = time.perf_counter()
                        nll, z, nfe = fn(score, x, torch.Generator().manual_seed(1))
                        secs = time.perf_counter() - start
                        ref = lp_eps - gmm.log_prob_t(z, *at(sde, sde.T)) + sde.prior_logp(z)
                        err = (-nll - ref) / d
                        solver_err = float(err.abs().mean())
                        p0_err = float((-nll - lp0).abs().mean() / d)
                        if trace == "exact":
                            hutch = "-"
                            target = "ok" if solver_err < 1e-3 and nfe <= 300 else "MISS"
                        else:
                            bias, se = float(err.mean()), float(err.std() / math.sqrt(n))
                            hutch = f"{bias:+.4f} ({se:.4f})"
                            target = "ok" if abs(bias) < 3 * se else "MISS"
                        print(f"| {dname} | {sname} | {backend} | {trace} | {tol:.0e} | {nfe} | {secs:.1f} | "
                              f"{solver_err:.1e} | {p0_err:.1e} | {hutch} | {target} |", flush=True)


def sampler_table(n: int) -> None:
    ring = toy.ring_mixture()
    ref = ring.sample(n, torch.Generator().manual_seed(123))
    logp_ref = ring.log_prob(ref)
    occ_ref = torch.bincount(ring.assign(ref), minlength=8).double() / n
    runs = [("heun", dict(steps=18)), ("dpm_solver", dict(steps=20, order=3)), ("dpm_solver", dict(steps=20, order=2)),
            ("dpm_solver", dict(steps=10, order=3)), ("ode", dict())]
    print("| sampler | options | sde | NFE | seconds | Δlog p (se) | occupancy TV |")
    print("|---|---|---|---|---|---|---|")
    for name, opts in runs:
        for sname, sde in {"VP": sde_lib.VPSDE(), "VE": sde_lib.VESDE(), "subVP": sde_lib.subVPSDE()}.items():
            start = time.perf_counter()
            x, nfe = sampling.get_sampler(name, sde, (n, 2), **opts)(ring.score_fn(sde), torch.Generator().manual_seed(0))
            secs = time.perf_counter() - start
            logp = ring.log_prob(x.double())
            se = float((logp.var() / n + logp_ref.var() / n).sqrt())
            occ = torch.bincount(ring.assign(x.double()), minlength=8).double() / n
            tv = 0.5 * float((occ - occ_ref).abs().sum())
            shown = ", ".join(f"{k}={v}" for k, v in opts.items()) or "defaults"
            print(f"| {name} | {shown} | {sname} | {nfe} | {secs:.1f} | {float(logp.mean() - logp_ref.mean()):+.4f} "
                  f"({se:.4f}) | {tv:.4f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny tensors: 1 is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    likelihood_table(n2=64 if args.quick else 256, n16=32 if args.quick else 128)
    print()
    sampler_table(n=4000 if args.quick else 20000)


if __name__ == "__main__":
    main()
