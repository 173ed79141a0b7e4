"""Schedules optimized for one model, one solver and one NFE, computed once from the model itself.

In the spirit of Align Your Steps (Sabour et al. 2024) and DPM-Solver-v3, the levels are chosen to minimize
the solver's error for this model. Here: over a fixed batch of prior draws, the solver runs on the candidate
levels down to the last one, sigma_min, and lands at x; a fine reference solution of the probability-flow
ODE from the same draws (DPM-Solver++(3M), `ref_steps` log-SNR-uniform levels) lands at r. The loss is the
mean absolute log-density difference |log p(x) - log p(r)| under the model's own marginal at sigma_min,
by the trapezoid rule along delta = x - r: (score(x) + score(r)) . delta / 2 (exact for Gaussian marginals;
one network call per candidate). Plain squared error would be ruled by the high-variance directions, where
errors cost the least log-density. A moved level stays in the middle half of its neighbours' log-interval,
which keeps neighbouring step ratios moderate (multistep extrapolation is unstable otherwise). The interior log-levels are
moved one at a time by golden-section search between their neighbours (coordinate descent, `sweeps` passes);
both ends stay fixed. Cost: about sweeps * (steps - 2) * 8 solver runs of `steps` calls on `batch` samples.
Save the result with schedules.save_schedule next to the checkpoint and pass its path as the schedule.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..parameterization import denoiser
from . import common, deis_unipc, dpm_solver, euler, heun, ipndm, sigma_space, unipc

# sampler name -> (solve function, fixed options)
SOLVERS: Dict[str, Tuple[Callable, dict]] = {
    "unipc": (unipc.solve_unipc, {}), "dpm_solver": (dpm_solver.solve_multistep, {}),
    "dpmpp_2m": (dpm_solver.solve_multistep, {"order": 2}), "euler": (euler.solve_euler, {}),
    "heun": (heun.solve_heun, {}), "ipndm": (ipndm.solve_ipndm, {}),
    "deis_unipc": (deis_unipc.solve_deis_unipc, {}),
}
GOLDEN = (math.sqrt(5) - 1) / 2


def _run(sde, score_fn, solve: Callable, sigmas: List[float], z: torch.Tensor, options: dict) -> torch.Tensor:
    run = sigma_space.Run(denoiser(sde, score_fn), None, lambda *a: None, False, "optimize")
    with torch.no_grad():
        return solve(run, sigmas[0] * z, sigmas, **options)


def optimize_schedule(sde, score_fn: common.ScoreFn, shape: Sequence[int], *, method: str = "unipc",
                      steps: int = 10, init: str = "logSNR", sweeps: int = 2, ref_steps: int = 200,
                      sigma_max: Optional[float] = common.EDM_SIGMA_MAX, eps: Optional[float] = None,
                      seed: int = 0, device=None, dtype: torch.dtype = torch.float64,
                      **options) -> List[float]:
    """`steps` descending levels (sigma_max .. endpoint) minimizing `method`'s error for this score_fn.

    shape: (batch, *data_shape) of the prior draws the error is averaged over (a few hundred suffice).
    init: the named schedule to start from. options: the solver's own options (e.g. order=2).
    """
    if method not in SOLVERS:
        raise ValueError(f"no schedule optimizer for {method!r}; choose one of {sorted(SOLVERS)}")
    common.check_positive_int("sweeps", sweeps)
    if steps < 3:
        raise ValueError(f"steps must be at least 3 to leave a level to move, got {steps}")
    solve, fixed = SOLVERS[method]
    options = {**fixed, **options}
    z = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z.to(device=device, dtype=dtype)
    ref_grid = sigma_space.sigma_grid(sde, ref_steps, "logSNR", 7.0, sigma_max, eps)[:-1]
    ref = _run(sde, score_fn, dpm_solver.solve_multistep, ref_grid, z, {"order": 3})
    grid = sigma_space.sigma_grid(sde, steps, init, 7.0, sigma_max, eps)
    logs = [math.log(s) for s in grid[:-1]]
    denoise, sigma_min = denoiser(sde, score_fn), grid[-2]
    score = lambda y: (denoise(y, sigma_min) - y) / sigma_min ** 2  # Tweedie, in sigma space
    score_ref = score(ref)

    def loss(candidate: List[float]) -> float:
        x = _run(sde, score_fn, solve, [math.exp(v) for v in candidate], z, options)
        delta = x - ref
        per_sample = 0.5 * ((score(x) + score_ref) * delta).reshape(len(x), -1).sum(1)
        err = float(per_sample.abs().mean())
        return err if math.isfinite(err) else math.inf

    for _ in range(sweeps):
        for j in range(1, steps - 1):
            logs[j] = _golden(lambda v: loss(logs[:j] + [v] + logs[j + 1:]), logs[j + 1], logs[j - 1], logs[j])
    return [math.exp(v) for v in logs]


def _golden(f: Callable[[float], float], lo: float, hi: float, start: float, iters: int = 8) -> float:
    """Minimize f on (lo, hi) by golden-section search; keeps `start` unless a probe beats it."""
    a, b = lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo)
    best, f_best = start, f(start)
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)
    for v, fv in ((c, fc), (d, fd)):
        if fv < f_best:
            best, f_best = v, fv
    return best
