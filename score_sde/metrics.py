"""Sample-quality metrics: sliced Wasserstein-2 between point sets and the Fréchet (FID) distance."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
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


def _psd_sqrt(s: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a covariance; an error if it is clearly not positive semi-definite."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    scale = max(1.0, float(np.abs(w).max(initial=0.0)))
    if w.size and w.min() < -1e-6 * scale:
        raise ValueError(f"{name} is not positive semi-definite (eigenvalue {w.min():.3g}); pass a covariance")
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982):

    d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}), with
    tr (s1 s2)^{1/2} = tr (s1^{1/2} s2 s1^{1/2})^{1/2} from two symmetric eigendecompositions: exact for
    singular covariances too (no offset, no complex round-off as with sqrtm of the non-symmetric s1 s2)."""
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {s1.shape}, sigma2 {s2.shape}")
    r1 = _psd_sqrt(s1, "sigma1")
    _psd_sqrt(s2, "sigma2")
    inner = np.linalg.eigvalsh((r1 @ s2 @ r1 + (r1 @ s2 @ r1).T) / 2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(np.clip(inner, 0.0, None)).sum())


def fid_from_features(features1: ArrayLike, features2: ArrayLike) -> float:
    """FID between two feature sets [N, D] (e.g. Inception pool3 features).

    With fewer samples than dimensions, sigma_i = A_i^T A_i for the centred, 1/sqrt(N_i - 1)-scaled
    features A_i, and tr (sigma1 sigma2)^{1/2} is the nuclear norm of A1 A2^T (N1 x N2): exact and cheap."""
    f1, f2 = (np.asarray(f.detach().cpu() if isinstance(f, torch.Tensor) else f, dtype=np.float64)
              for f in (features1, features2))
    (mu1, s1), (mu2, s2) = feature_statistics(f1), feature_statistics(f2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"shape mismatch: features1 {f1.shape}, features2 {f2.shape} (same D needed)")
    if min(f1.shape[0], f2.shape[0]) >= f1.shape[1]:
        return frechet_distance(mu1, s1, mu2, s2)
    a1, a2 = ((f - f.mean(0)) / np.sqrt(f.shape[0] - 1) for f in (f1, f2))
    diff = mu1 - mu2
    cross = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * cross)