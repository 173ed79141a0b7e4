"""Noise-level schedules of the sigma-space samplers: `steps` levels from sigma_max down to sigma_min.

    logSNR          uniform in lambda = -log sigma (DPM-Solver, Lu et al. 2022, sec. 3.3)
    edm             Karras et al. 2022, eq. 5, exponent rho (rho = 7; rho = inf is logSNR)
    time_uniform    uniform in the SDE's time t (DDIM / score_sde_pytorch)
    time_quadratic  uniform in sqrt(t) (DDIM appendix D.2), denser near the data
    <file>.json     an optimized schedule saved by `save_schedule` (see sampling/optimize.py); a stored
                    schedule of another length is interpolated log-linearly, as Align Your Steps does.

Samplers append sigma = 0: their last step returns the denoised estimate D(x; sigma_min).
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Sequence

import torch

from .common import edm_sigmas

SCHEDULES = ("logSNR", "edm", "time_uniform", "time_quadratic")


def _times(sde, sigmas: Sequence[float]) -> List[float]:
    return sde.t_from_sigma(torch.tensor(list(sigmas), dtype=torch.float64)).tolist()


def sigma_schedule(sde, schedule: str, steps: int, sigma_min: float, sigma_max: float,
                   rho: float = 7.0) -> torch.Tensor:
    """`steps` noise levels (float64, descending) from sigma_max to sigma_min following `schedule`."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}; raise sigma_max "
                         f"or lower eps")
    if schedule == "logSNR":
        return edm_sigmas(sigma_min, sigma_max, steps, math.inf)
    if schedule == "edm":
        if not rho > 0:
            raise ValueError(f"rho must be positive (EDM uses 7), got {rho}")
        return edm_sigmas(sigma_min, sigma_max, steps, rho)
    if schedule in ("time_uniform", "time_quadratic"):
        t_hi, t_lo = _times(sde, [sigma_max, sigma_min])
        p = 1.0 if schedule == "time_uniform" else 0.5
        ts = torch.linspace(t_hi ** p, t_lo ** p, steps, dtype=torch.float64) ** (1 / p)
        out = sde.sigma(ts)
        out[0], out[-1] = sigma_max, sigma_min  # exact ends despite round-off
        return out
    if schedule.endswith(".json"):
        return stored_schedule(load_schedule(schedule), steps)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES} or a .json file written by "
                     f"sampling.save_schedule")


def stored_schedule(table: Dict[int, List[float]], steps: int) -> torch.Tensor:
    """The stored schedule with `steps` levels, or the longest one interpolated in log sigma (AYS, sec. 3.4)."""
    if steps in table:
        return torch.tensor(table[steps], dtype=torch.float64)
    base = torch.tensor(table[max(table)], dtype=torch.float64).log()
    u = torch.linspace(0, len(base) - 1, steps, dtype=torch.float64)
    lo = u.floor().long().clamp(max=len(base) - 2)
    frac = u - lo
    return torch.exp(base[lo] * (1 - frac) + base[lo + 1] * frac)


def save_schedule(path: str, table: Dict[int, Sequence[float]], **meta) -> None:
    """Write optimized schedules {steps: sigmas} (and free-form metadata) as JSON, e.g. next to a checkpoint."""
    if not path.endswith(".json"):
        raise ValueError(f"schedule files end in .json (the samplers recognize them by it), got {path!r}")
    payload = {"schedules": {str(k): [float(s) for s in v] for k, v in table.items()}, "meta": meta}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def load_schedule(path: str) -> Dict[int, List[float]]:
    """Read a file written by save_schedule: {steps: descending sigmas}."""
    if not os.path.isfile(path):
        raise ValueError(f"schedule file {path!r} does not exist; compute one with sampling.optimize_schedule "
                         f"and save_schedule, or pick a named schedule {SCHEDULES}")
    with open(path) as f:
        table = {int(k): v for k, v in json.load(f)["schedules"].items()}
    for k, v in table.items():
        if len(v) != k or any(a <= b for a, b in zip(v, v[1:])) or v[-1] <= 0:
            raise ValueError(f"{path}: schedule {k} must hold {k} positive, strictly decreasing sigmas")
    return table
