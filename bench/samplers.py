"""Every registered sampler x a few step counts, fed the EXACT score of a Gaussian mixture (DESIGN section 6).

    python bench/samplers.py                       # full table (a few minutes on a 2-core CPU)
    python bench/samplers.py --n 1000 --quick      # smoke run

Problems: (a) the 8-component ring in 2-D, (b) toy.random_mixture(16, 8, seed). SDEs: VP (N=1000) and VE
(N=1000, sigma_min=0.01, sigma_max = largest distance between exact samples, Song & Ermon 2020 technique 1).
Samplers walking the SDE's discrete levels (ddpm, ddim, ald) get the exact score of the discrete chain;
all others the exact continuous score. Columns:
  NFE, seconds        score evaluations and wall time of one run
  dlogp +- se         mean exact log-density of the samples minus that of exact samples (>0 too concentrated)
  TV (floor)          total variation between component occupancies of samples and of exact samples; the
                      floor is the same between two exact sets of the same size
  SW2/floor           sliced Wasserstein-2 to exact samples divided by the same between two exact sets
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from score_sde import metrics, sampling, sde_lib, toy  # noqa: E402

DISCRETE_LEVEL_SAMPLERS = ("ddpm", "ddim", "ald")

# option sets per sampler (one table row each); samplers not listed run with their defaults and,
# when they take `steps`, also with steps in (10, 20, 50)
GRID: Dict[str, List[dict]] = {
    "ddpm": [{"steps": 100}, {"steps": 1000}, {"steps": 1000, "variance": "beta_tilde"}],
    "ddim": [{"steps": 10}, {"steps": 20}, {"steps": 50}, {"steps": 100}, {"steps": 20, "skip_type": "quadratic"}],
    "ald": [{"steps": 200}, {}],
    "pc": [{"steps": 100}, {}, {"predictor": "euler_maruyama", "corrector": "none"}],
    "heun": [{"steps": 10}, {"steps": 18}, {"steps": 35}],
    "dpm_solver": [{"steps": 10}, {"steps": 15}, {"steps": 20}],
    "ode": [{}],
}
QUICK: Dict[str, List[dict]] = {
    "ddpm": [{"steps": 1000}], "ddim": [{"steps": 20}], "ald": [{}], "pc": [{"steps": 200}],
    "heun": [{"steps": 18}], "dpm_solver": [{"steps": 20}], "ode": [{}],
}


# ----------------------------------------------------------------------------- metrics
def sliced_w2(a: torch.Tensor, b: torch.Tensor, projections: int, generator: torch.Generator) -> float:
    """Sliced Wasserstein-2 between two point sets (score_sde.metrics)."""
    return metrics.sliced_wasserstein(a, b, n_projections=projections, generator=generator)


def occupancy(gmm: toy.GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    return torch.bincount(gmm.assign(x), minlength=gmm.num_components).double() / x.shape[0]


class Reference:
    """Exact samples of one problem: targets and noise floors of the three statistics."""

    def __init__(self, gmm: toy.GaussianMixture, n: int, n_ref: int, projections: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.gmm, self.projections = gmm, projections
        self.logp = gmm.log_prob(gmm.sample(n_ref, g))
        self.exact_a, self.exact_b = gmm.sample(n, g), gmm.sample(n, g)
        self.occ = occupancy(gmm, self.exact_a)
        self.tv_floor = 0.5 * float((occupancy(gmm, self.exact_b) - self.occ).abs().sum())
        self.sw_floor = sliced_w2(self.exact_a, self.exact_b, projections, torch.Generator().manual_seed(1))

    def score(self, x: torch.Tensor) -> dict:
        x = x.double().reshape(x.shape[0], -1)
        if not torch.isfinite(x).all():
            return {"dlogp": math.nan, "se": math.nan, "se_own": math.nan, "tv": math.nan, "sw": math.nan}
        lp = self.gmm.log_prob(x)
        own = float(lp.var() / len(lp))
        sw = sliced_w2(x, self.exact_a, self.projections, torch.Generator().manual_seed(1))
        return {"dlogp": float(lp.mean() - self.logp.mean()), "se_own": math.sqrt(own),
                "se": math.sqrt(own + float(self.logp.var() / len(self.logp))),
                "tv": 0.5 * float((occupancy(self.gmm, x) - self.occ).abs().sum()), "sw": sw / self.sw_floor}


# ----------------------------------------------------------------------------- problems
def problems(names: List[str], seed: int) -> Dict[str, toy.GaussianMixture]:
    table = {"ring": lambda: toy.ring_mixture(), "mix16": lambda: toy.random_mixture(16, 8, seed)}
    return {name: table[name]() for name in names}


def make_sde(name: str, gmm: toy.GaussianMixture, N: int) -> sde_lib.SDE:
    if name == "vp":
        return sde_lib.VPSDE(N=N)
    x = gmm.sample(2000, torch.Generator().manual_seed(0))
    sigma_max = float(torch.cdist(x, x).max())  # Song & Ermon 2020, technique 1
    return sde_lib.VESDE(sigma_min=0.01, sigma_max=sigma_max, N=N)


def option_sets(name: str, quick: bool) -> List[dict]:
    table = QUICK if quick else GRID
    if name in table:
        return table[name]
    if "steps" in sampling.sampler_options(name):
        return [{"steps": 20}] if quick else [{"steps": s} for s in (10, 20, 50)]
    return [{}]


def run_one(name: str, options: dict, sde, gmm, ref: Reference, n: int, seed: int) -> dict:
    score_fn = gmm.discrete_score_fn(sde) if name in DISCRETE_LEVEL_SAMPLERS else gmm.score_fn(sde)
    sampler = sampling.get_sampler(name, sde, (n, gmm.dim), **options)
    start = time.perf_counter()
    x, nfe = sampler(score_fn, generator=torch.Generator().manual_seed(seed))
    return {"nfe": nfe, "seconds": time.perf_counter() - start, **ref.score(x)}


def describe(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"


# ----------------------------------------------------------------------------- report
def target_lines(rows: List[Tuple[str, str, str, str, dict]]) -> List[str]:
    """Do heun at <=35 NFE and dpm_solver at <=20 NFE match ddpm at 1000 NFE within noise?"""
    lines = []
    for prob, sde_name in sorted({(r[0], r[1]) for r in rows}):
        base = [r[4] for r in rows if r[:3] == (prob, sde_name, "ddpm") and r[4]["nfe"] == 1000
                and "variance" not in r[3]]
        if not base:
            continue
        b = base[0]
        for name, budget in (("heun", 35), ("dpm_solver", 20)):
            cands = [r for r in rows if r[:3] == (prob, sde_name, name) and r[4]["nfe"] <= budget]
            if not cands:
                continue
            r = max(cands, key=lambda r: r[4]["nfe"])[4]
            gap = r["dlogp"] - b["dlogp"]
            se = math.hypot(r["se_own"], b["se_own"])
            ok = abs(gap) < 3 * se
            lines.append(f"- {prob}/{sde_name}: {name} at {r['nfe']} NFE vs ddpm at 1000 NFE: "
                         f"dlogp gap {gap:+.4f} (se {se:.4f}), TV {r['tv']:.3f} vs {b['tv']:.3f}, "
                         f"SW2/floor {r['sw']:.2f} vs {b['sw']:.2f} -> {'match' if ok else 'NO match'} within 3 se")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="samples per sampler run")
    parser.add_argument("--n-ref", type=int, default=20000, help="exact samples for the log-density target")
    parser.add_argument("--N", type=int, default=1000, help="SDE discretization levels")
    parser.add_argument("--problems", nargs="+", default=["ring", "mix16"], choices=["ring", "mix16"])
    parser.add_argument("--sdes", nargs="+", default=["vp", "ve"], choices=["vp", "ve"])
    parser.add_argument("--samplers", nargs="+", default=None, help="default: every registered sampler")
    parser.add_argument("--projections", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the mixture score is tiny)")
    parser.add_argument("--quick", action="store_true", help="one option set per sampler")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.samplers or sorted(sampling.SAMPLERS)
    unknown = sorted(set(names) - set(sampling.SAMPLERS))
    if unknown:
        raise SystemExit(f"unknown sampler(s) {unknown}; registered: {sorted(sampling.SAMPLERS)}")

    print(f"# samplers with exact mixture scores: n={args.n}, n_ref={args.n_ref}, N={args.N}, "
          f"torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s)\n")
    rows = []
    for prob, gmm in problems(args.problems, args.seed).items():
        ref = Reference(gmm, args.n, args.n_ref, args.projections, args.seed + 1)
        for sde_name in args.sdes:
            sde = make_sde(sde_name, gmm, args.N)
            print(f"\n## {prob} (d={gmm.dim}), {sde_name}: {sde}  (TV floor {ref.tv_floor:.3f})\n")
            print("| sampler | options | NFE | seconds | dlogp ± se | TV | SW2/floor |")
            print("|---|---|---:|---:|---:|---:|---:|")
            for name in names:
                for options in option_sets(name, args.quick):
                    r = run_one(name, options, sde, gmm, ref, args.n, args.seed)
                    rows.append((prob, sde_name, name, options, r))
                    print(f"| {name} | {describe(options)} | {r['nfe']} | {r['seconds']:.2f} | "
                          f"{r['dlogp']:+.3f} ± {r['se']:.3f} | {r['tv']:.3f} | {r['sw']:.2f} |", flush=True)
    lines = target_lines(rows)
    if lines:
        print("\n## Targets: heun <= 35 NFE and dpm_solver <= 20 NFE vs ddpm at 1000 NFE\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
