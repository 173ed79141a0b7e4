"""Probability-flow ODE sampler and encoder (Song et al. 2021, eq. 13) with a black-box solver.

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t)

integrated from T down to eps (sampling) or from eps up to T (encoding, data -> latent) by scipy's
`solve_ivp` (state flattened to float64 numpy) or torchdiffeq's `odeint` (state stays a tensor).
`integrate` is shared with the likelihood, which carries the divergence integral along.
NFE counts score evaluations; implicit scipy methods (Radau, BDF, LSODA) spend extra ones on
finite-difference Jacobians.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from ..utils import batch_broadcast
from .common import (Callback, CountingScore, ScoreFn, batch_time, check_continuous, check_positive_int, end_time,
                     initial_state, resolve_eps)
from .registry import register_sampler

SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
TORCHDIFFEQ_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
TORCHDIFFEQ_FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
BACKENDS = ("scipy", "torchdiffeq")

State = Tuple[torch.Tensor, ...]
OdeFn = Callable[[float, State], State]  # (t, state) -> d state / dt


def check_solver(backend: str, solver: str, rtol: float, atol: float, steps: Optional[int]) -> None:
    """Raise a one-line ValueError for an unknown backend/solver or tolerances/steps that do not apply."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown ODE backend {backend!r}; choose one of {BACKENDS}")
    valid = SCIPY_METHODS if backend == "scipy" else TORCHDIFFEQ_ADAPTIVE + TORCHDIFFEQ_FIXED
    if solver not in valid:
        raise ValueError(f"unknown {backend} solver {solver!r}; choose one of {valid}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    if solver in TORCHDIFFEQ_FIXED and steps is None:
        raise ValueError(f"fixed-grid solver {solver!r} needs `steps` (number of grid intervals)")
    if steps is not None:
        if solver not in TORCHDIFFEQ_FIXED:
            raise ValueError(f"`steps` applies only to the fixed-grid torchdiffeq solvers {TORCHDIFFEQ_FIXED}; "
                             f"{solver!r} is adaptive: set rtol/atol instead, or steps=None")
        check_positive_int("steps", steps)


def integrate(fn: OdeFn, state: State, t0: float, t1: float, *, backend: str, solver: str,
              rtol: float, atol: float, steps: Optional[int] = None) -> State:
    """Solve d state/dt = fn(t, state) from t0 to t1; returns the state at t1 (same dtypes/devices)."""
    check_solver(backend, solver, rtol, atol, steps)
    if backend == "scipy":
        return _integrate_scipy(fn, state, t0, t1, solver, rtol, atol)
    return _integrate_torchdiffeq(fn, state, t0, t1, solver, rtol, atol, steps)


def integrate_at(fn: OdeFn, state: State, t0: float, t1: float, times: torch.Tensor, *, backend: str,
                 solver: str, rtol: float, atol: float) -> Tuple[State, State]:
    """Solve from t0 to t1 with an adaptive solver; returns (the states at `times`, stacked on a new leading
    axis, read off the solver's dense output; the state at t1). times: increasing, inside [t0, t1]."""
    check_solver(backend, solver, rtol, atol, None)
    if solver in TORCHDIFFEQ_FIXED:
        raise ValueError(f"integrate_at needs an adaptive solver, got the fixed-grid {solver!r}")
    grid = torch.cat([torch.tensor([t0], dtype=torch.float64), times.double().cpu(),
                      torch.tensor([t1], dtype=torch.float64)])
    if not bool((grid[1:] >= grid[:-1]).all()):
        raise ValueError(f"times must increase within [{t0}, {t1}]")
    if backend == "scipy":
        out = _integrate_scipy(fn, state, t0, t1, solver, rtol, atol, t_eval=grid[1:].numpy())
    else:
        out = _integrate_torchdiffeq(fn, state, t0, t1, solver, rtol, atol, None, grid=grid)
    return tuple(o[:-1] for o in out), tuple(o[-1] for o in out)


def _integrate_scipy(fn: OdeFn, state: State, t0: float, t1: float, solver: str,
                     rtol: float, atol: float, t_eval: Optional[np.ndarray] = None) -> State:
    """The state at t1; with t_eval, the states at t_eval stacked on a new leading axis."""
    from scipy.integrate import solve_ivp
    sizes = [s.numel() for s in state]

    def unflatten(y: np.ndarray) -> State:
        parts = np.split(y, np.cumsum(sizes)[:-1])
        return tuple(torch.from_numpy(p).to(device=s.device, dtype=s.dtype).reshape(s.shape)
                     for p, s in zip(parts, state))

    def flatten(tensors: Sequence[torch.Tensor]) -> np.ndarray:
        return np.concatenate([t.detach().to("cpu", torch.float64).reshape(-1).numpy() for t in tensors])

    sol = solve_ivp(lambda t, y: flatten(fn(float(t), unflatten(y))), (t0, t1), flatten(state),
                    method=solver, rtol=rtol, atol=atol, t_eval=t_eval)
    if not sol.success:
        raise RuntimeError(f"scipy {solver} failed between t={t0} and t={t1}: {sol.message}")
    if t_eval is None:
        return unflatten(sol.y[:, -1])
    return tuple(torch.stack(parts) for parts in zip(*(unflatten(y) for y in sol.y.T)))


def _integrate_torchdiffeq(fn: OdeFn, state: State, t0: float, t1: float, solver: str,
                           rtol: float, atol: float, steps: Optional[int],
                           grid: Optional[torch.Tensor] = None) -> State:
    """The state at t1; with `grid` (t0 first, t1 last), the states at grid[1:] stacked on a new axis."""
    from torchdiffeq import odeint
    ref = state[0]
    n = steps if solver in TORCHDIFFEQ_FIXED else 1  # fixed-grid solvers step exactly on this grid
    times = grid if grid is not None else torch.linspace(t0, t1, n + 1, dtype=torch.float64)
    times = times.to(device=ref.device, dtype=torch.float64)  # float64 times
    # adaptive steps must end exactly at t1: stepping past it (torchdiffeq's default, then interpolating)
    # would evaluate the score outside [eps, T], where e.g. VP's s(t) is undefined for t < 0
    kwargs = {} if solver in TORCHDIFFEQ_FIXED else {"rtol": rtol, "atol": atol, "options": {"step_t": times[-1:]}}
    out = odeint(lambda t, y: tuple(fn(float(t), y)), tuple(state), times, method=solver, **kwargs)
    return tuple(o[1:] for o in out) if grid is not None else tuple(o[-1] for o in out)


def pf_drift(sde, score_fn: ScoreFn) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The probability-flow drift f - 1/2 g^2 score (eq. 13), as a function of (x, t [B])."""
    rsde = sde.reverse(score_fn, probability_flow=True)
    return lambda x, t: rsde.sde(x, t)[0]


def tweedie_denoise(sde, score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] = (x_t + s^2 score) / m (Tweedie's formula)."""
    m, s = batch_broadcast(sde.mean_coeff(t), x), batch_broadcast(sde.marginal_std(t), x)
    return (x + s ** 2 * score_fn(x, t)) / m


class _Watcher:
    """Calls the user's callback (and a progress bar) at every drift evaluation of the solver."""

    def __init__(self, sde, callback: Callback, progress: bool, desc: str):
        self.sde, self.callback, self.i = sde, callback, 0
        self.bar = None
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(desc=desc, unit="nfe", leave=False)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> None:
        if self.callback is not None:
            m, s = batch_broadcast(self.sde.mean_coeff(t), x), batch_broadcast(self.sde.marginal_std(t), x)
            self.callback(i=self.i, t=float(t[0]), x=x, x0=(x + s ** 2 * score) / m)
        if self.bar is not None:
            self.bar.update(1)
        self.i += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _solve_pf(sde, x: torch.Tensor, score_fn: CountingScore, t0: float, t1: float, *, solver: str,
              backend: str, rtol: float, atol: float, steps: Optional[int], watcher: _Watcher) -> torch.Tensor:
    """Integrate the probability-flow ODE from t0 to t1, starting at x."""
    def score_seen(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        score = score_fn(y, t)
        watcher(y, t, score)
        return score

    drift = pf_drift(sde, score_seen)
    try:
        with torch.no_grad():
            (out,) = integrate(lambda t, s: (drift(s[0], batch_time(t, s[0])),), (x,), t0, t1,
                               backend=backend, solver=solver, rtol=rtol, atol=atol, steps=steps)
    finally:
        watcher.close()
    return out


@register_sampler("ode")
def ode_sampler(sde, shape: Sequence[int], *, solver: str = "RK45", backend: str = "scipy",
                rtol: float = 1e-5, atol: float = 1e-5, steps: Optional[int] = None,
                noise_removal: bool = True, eps: Optional[float] = None, device=None,
                dtype: torch.dtype = torch.float32, progress: bool = False) -> Callable:
    """Probability-flow ODE sampler: solve eq. 13 from T to eps with a black-box solver.

    solver/backend: scipy ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA") or torchdiffeq (adaptive
    "dopri5", "bosh3", ... with rtol/atol; fixed-grid "euler", "midpoint", "rk4", ... with `steps`).
    eps: the final time; None: t(max(0.002, sigma(0))), EDM's endpoint (issue 13), where VP's sigma is 0.002.
    noise_removal: one final Tweedie step x0 = (x + s^2 score)/m at eps (one more NFE; default on: the
    sample then carries no leftover noise).
    The callback is called at every drift evaluation (rejected trial steps included) with the
    evaluation's x, t and denoised estimate x0.
    """
    check_solver(backend, solver, rtol, atol, steps)
    eps = end_time(sde, eps)

    def sampler(score_fn: ScoreFn, generator: Optional[torch.Generator] = None,
                x_T: Optional[torch.Tensor] = None, callback: Callback = None) -> Tuple[torch.Tensor, int]:
        check_continuous(score_fn, "ode")
        counted = CountingScore(score_fn)
        x = initial_state(sde, shape, x_T, generator, device=device, dtype=dtype)
        watcher = _Watcher(sde, callback, progress, "ode")
        x = _solve_pf(sde, x, counted, sde.T, eps, solver=solver, backend=backend, rtol=rtol, atol=atol,
                      steps=steps, watcher=watcher)
        if noise_removal:
            with torch.no_grad():
                x = tweedie_denoise(sde, counted, x, batch_time(eps, x))
        return x, counted.nfe

    return sampler


def ode_encode(sde, x0: torch.Tensor, score_fn: ScoreFn, *, solver: str = "RK45", backend: str = "scipy",
               rtol: float = 1e-5, atol: float = 1e-5, steps: Optional[int] = None,
               eps: Optional[float] = None, progress: bool = False,
               callback: Callback = None) -> Tuple[torch.Tensor, int]:
    """Encode data into the latent: integrate the probability-flow ODE from eps up to T.

    x0 is taken as the state at time eps (as the likelihood does); returns (z at T, nfe).
    Decoding z with the `ode` sampler (x_T=z, same options) gives x0 back up to solver error.
    """
    check_solver(backend, solver, rtol, atol, steps)
    eps = resolve_eps(sde, eps)
    counted = CountingScore(score_fn)
    watcher = _Watcher(sde, callback, progress, "ode_encode")
    z = _solve_pf(sde, x0, counted, eps, sde.T, solver=solver, backend=backend, rtol=rtol, atol=atol,
                  steps=steps, watcher=watcher)
    return z, counted.nfe
