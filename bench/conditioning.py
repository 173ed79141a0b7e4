"""Inverse-problem solvers and classifier guidance against the EXACT conditionals of a Gaussian mixture.

    python bench/conditioning.py            # full table (about 7 minutes on one core of a shared 2-core CPU)
    python bench/conditioning.py --quick    # smoke run

Problems (toy_conditional.overlapping_mixture: 6 overlapping anisotropic components): (a) 2-D, VP, coordinate 0
observed; (b) 3-D, VE (sigma_max 20), coordinates 0-1 observed; the observed value is the one that leaves the
posterior most spread over components. Every method gets the exact unconditional score. Columns:
  NFE, seconds   score evaluations (one per batched call) and wall time of one run of n problems
  dlogp +- se    mean exact posterior log-density of the samples' unobserved part minus that of exact
                 posterior samples (> 0 too concentrated)
  TV             total variation between the posterior's component weights and the samples' mean
                 responsibilities (an unbiased estimate of the weights; its noise is ~ 0.5/sqrt(n) at most)
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from score_sde import conditioning, sampling, sde_lib  # noqa: E402
from score_sde import toy_conditional as tc  # noqa: E402

D64 = torch.float64


def most_ambiguous(mixture, observed):
    best = None
    for v in torch.linspace(-4, 4, 81, dtype=D64):
        y = torch.zeros(mixture.dim, dtype=D64)
        y[observed] = v
        w = tc.inpainting_posterior(mixture, observed, y).weights.clamp(min=1e-300)
        ent = float(-(w * w.log()).sum())
        if best is None or ent > best[0]:
            best = (ent, y)
    return best[1]


def row(name, post, x, nfe, seconds, n_ref=20000):
    ref = post.sample(n_ref, torch.Generator().manual_seed(123))
    d, se = tc.dlogp(post, x, ref)
    tv = 0.5 * float((tc.mean_responsibilities(post, x) - post.weights).abs().sum())
    print(f"| {name} | {nfe} | {seconds:.1f} | {d:+.3f} ± {se:.3f} | {tv:.3f} |", flush=True)


def inpainting(quick: bool, n: int) -> None:
    cases = [("2-D VP, x0 observed", 2, [True, False], sde_lib.VPSDE(N=1000)),
             ("3-D VE, x0,x1 observed", 3, [True, True, False], sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0, N=1000))]
    smc = [(1, 100), (4, 100), (16, 100), (64, 100), (16, 400), (64, 400)]
    pc = [dict(steps=100), dict(steps=1000), dict(steps=1000, corrector="none")]
    if quick:
        smc, pc = [(4, 50)], [dict(steps=50)]
    for title, dim, observed, sde in cases:
        mix = tc.overlapping_mixture(dim, seed=0).mixture
        obs = torch.tensor(observed)
        y0 = most_ambiguous(mix, obs)
        post = tc.inpainting_posterior(mix, obs, y0)
        print(f"\n{title}: y = {y0[obs].tolist()}, posterior weights {[round(w, 3) for w in post.weights.tolist()]}")
        print("| method | NFE | seconds | dlogp ± se | TV |\n|---|---|---|---|---|")
        y, mask = y0.expand(n, dim).clone(), obs.to(D64).expand(n, dim)
        runs = [("smc", f"smc particles={k} steps={s}", dict(particles=k, steps=s)) for k, s in smc]
        runs += [("pc", "pc (replacement) " + " ".join(f"{a}={b}" for a, b in o.items()), o) for o in pc]
        for method, name, opts in runs:
            t0 = time.perf_counter()
            x, nfe = conditioning.inpaint(sde, mix.score_fn(sde), y, mask, generator=torch.Generator().manual_seed(0),
                                          method=method, **opts)
            row(name, post, x[:, ~obs], nfe, time.perf_counter() - t0)


def guidance(quick: bool, n: int) -> None:
    lm, sde = tc.overlapping_mixture(2, seed=0), sde_lib.VPSDE(N=1000)
    print("\nClassifier guidance, exact classifier, 2-D VP, class 1 (target p(x | c=1)); pc sampler, no corrector")
    print("| scale, steps | NFE | seconds | dlogp ± se | TV |\n|---|---|---|---|---|")
    for scale, steps in ([(1.0, 50)] if quick else [(1.0, 100), (1.0, 1000), (2.0, 1000)]):
        fn = conditioning.classifier_guidance(lm.mixture.score_fn(sde), lm.classifier_fn(sde), 1, scale=scale)
        sampler = sampling.get_sampler("pc", sde, (n, 2), corrector="none", steps=steps, dtype=D64)
        t0 = time.perf_counter()
        x, nfe = sampler(fn, generator=torch.Generator().manual_seed(0))
        row(f"{scale}, {steps}", lm.class_mixture(1), x, nfe, time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=1000, help="independent problems (rows) per run")
    args = ap.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    inpainting(args.quick, args.n)
    guidance(args.quick, args.n)


if __name__ == "__main__":
    main()
