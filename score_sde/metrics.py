"""Sample-quality metrics: sliced Wasserstein-2 between point sets and the Fréchet (FID) distance."""
from __future__ import annotations

import warnings
from typing import Optional, Tuple, Union

import numpy as np
import scipy.linalg
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_points(x: ArrayLike, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch of points [N, ...], got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def random_directions(n: int, dim: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``n`` directions uniform on the unit sphere S^{dim-1} (normalised Gaussians), float64 [n, dim]."""
    theta = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def wasserstein2_1d_sorted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared W2 between empirical 1-D measures given sorted samples along the last dim.

    W2^2 = int_0^1 (F^-1(q) - G^-1(q))^2 dq, evaluated exactly on the union of both quantile grids
    (so unequal sample sizes are handled by quantile matching). a: [P, n], b: [P, m] -> [P]."""
    n, m = a.shape[-1], b.shape[-1]
    if n == m:
        return ((a - b) ** 2).mean(-1)
    grid = torch.unique(torch.cat([torch.arange(n + 1, dtype=torch.float64) / n,
                                   torch.arange(m + 1, dtype=torch.float64) / m]))
    width, mid = grid[1:] - grid[:-1], 0.5 * (grid[1:] + grid[:-1])
    ia = (mid * n).floor().long().clamp_(max=n - 1)
    ib = (mid * m).floor().long().clamp_(max=m - 1)
    return ((a[..., ia] - b[..., ib]) ** 2 * width).sum(-1)


def sliced_wasserstein(x: ArrayLike, y: ArrayLike, n_projections: int = 256,
                       generator: Optional[torch.Generator] = None) -> float:
    """Sliced W2: sqrt(E_theta W2^2(theta.x, theta.y)), theta uniform on the sphere (Monte Carlo).

    x: [N, ...], y: [M, ...] flattened to points; computed in float64 on the CPU."""
    x, y = _as_points(x, "x").cpu(), _as_points(y, "y").cpu()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    theta = random_directions(n_projections, x.shape[1], generator)
    px = torch.sort(theta @ x.T, dim=1).values
    py = torch.sort(theta @ y.T, dim=1).values
    return float(wasserstein2_1d_sorted(px, py).mean().sqrt())


def feature_statistics(features: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D] in float64."""
    f = np.asarray(torch.as_tensor(features).detach().cpu().numpy(), dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982):

    d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})."""
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {s1.shape}, sigma2 {s2.shape}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    if caught or not np.isfinite(covmean).all():  # (near-)singular product: regularise both covariances
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        if imag > 1e-3 * max(1.0, np.abs(covmean.real).max()):
            raise ValueError(f"sqrtm(sigma1 sigma2) has a large imaginary part ({imag:.3g}); the covariances "
                             f"are not positive semi-definite or are badly conditioned: use more samples")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(features1: ArrayLike, features2: ArrayLike) -> float:
    """FID between two feature sets [N, D] (e.g. Inception pool3 features)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
