"""Gaussian-mixture oracle: exact samples, densities and marginal scores, in float64.

If x_0 ~ sum_k w_k N(mu_k, S_k) and x_t = m x_0 + s z, then x_t ~ sum_k w_k N(m mu_k, m^2 S_k + s^2 I):
the marginal of a mixture is a mixture, so its score and log-density are exact at every time.
Covariances are eigendecomposed once (S_k = U_k diag(l_k) U_k^T), so m^2 S_k + s^2 I has eigenvalues
m^2 l_k + s^2 in the same basis and per-sample (m, s) cost no extra factorizations.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from .sde_lib import SDE

Scalar = Union[float, torch.Tensor]


class GaussianMixture:
    """sum_k w_k N(mu_k, S_k) in R^d with exact marginals under x_t = m x_0 + s z."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: Optional[torch.Tensor] = None, *,
                 eig: Optional[tuple] = None):
        """covs [K, d, d]; or eig = (eigvals [K, d], eigvecs [K, d, d]) to skip the eigendecomposition."""
        if eig is not None:
            vals, vecs = (torch.as_tensor(a, dtype=torch.float64) for a in eig)
            covs = vecs @ (vals.unsqueeze(-1) * vecs.transpose(1, 2))
        weights, means, covs = (torch.as_tensor(a, dtype=torch.float64) for a in (weights, means, covs))
        if means.dim() != 2 or weights.shape != means.shape[:1] or covs.shape != means.shape + means.shape[1:]:
            raise ValueError(f"need weights [K], means [K, d], covs [K, d, d]; got {tuple(weights.shape)}, "
                             f"{tuple(means.shape)}, {tuple(covs.shape)}")
        if (weights < 0).any() or not math.isclose(float(weights.sum()), 1.0, rel_tol=1e-9):
            raise ValueError("mixture weights must be non-negative and sum to 1")
        self.weights, self.means, self.covs = weights, means, covs
        self.eigvals, self.eigvecs = torch.linalg.eigh(covs) if eig is None else (vals, vecs)  # [K, d], [K, d, d]
        if (self.eigvals < 0).any():
            raise ValueError("every covariance must be positive semi-definite")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    # --- sampling -------------------------------------------------------------------------------
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n exact draws from p_0, float64 [n, d]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[k].clone()
        for j in range(self.num_components):  # per component: memory n d, not n d^2
            rows = k == j
            x[rows] += (z[rows] * self.eigvals[j].clamp(min=0).sqrt()) @ self.eigvecs[j].T  # U diag(sqrt l) z
        return x

    # --- densities and scores of the marginal at (m, s) -----------------------------------------
    def _components(self, x: torch.Tensor, m: Scalar, s: Scalar):
        """Per-component log-densities [n, K] and gradients [n, K, d] of N(x; m mu_k, m^2 S_k + s^2 I)."""
        x = x.to(torch.float64)
        m, s = (torch.as_tensor(v, dtype=torch.float64).reshape(-1, 1, 1) for v in (m, s))
        var = m ** 2 * self.eigvals.unsqueeze(0) + s ** 2                     # [n or 1, K, d]
        r = x.unsqueeze(1) - m * self.means.unsqueeze(0)                       # [n, K, d]
        y = torch.einsum("kji,nkj->nki", self.eigvecs, r)                      # U^T r
        log_n = -0.5 * ((y ** 2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi))
        grad = -torch.einsum("kij,nkj->nki", self.eigvecs, y / var)            # -U (y / var)
        return log_n, grad

    def log_prob_t(self, x: torch.Tensor, m: Scalar, s: Scalar) -> torch.Tensor:
        """log p(x) of the marginal sum_k w_k N(m mu_k, m^2 S_k + s^2 I), [n]."""
        log_n, _ = self._components(x, m, s)
        return torch.logsumexp(log_n + torch.log(self.weights), dim=1)

    def score(self, x: torch.Tensor, m: Scalar, s: Scalar) -> torch.Tensor:
        """grad_x log p(x) of that marginal: responsibilities times component scores, [n, d]."""
        log_n, grad = self._components(x, m, s)
        resp = torch.softmax(log_n + torch.log(self.weights), dim=1)
        return (resp.unsqueeze(-1) * grad).sum(1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p_0(x), [n]."""
        return self.log_prob_t(x, 1.0, 0.0)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Hard assignment of each point to its most probable component under p_0, [n]."""
        log_n, _ = self._components(x, 1.0, 0.0)
        return torch.argmax(log_n + torch.log(self.weights), dim=1)

    def marginal(self, m: float, s: float) -> "GaussianMixture":
        """The mixture of x_t = m x_0 + s z for scalar m, s."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, m * self.means, m ** 2 * self.covs + s ** 2 * eye)

    # --- score functions for samplers -----------------------------------------------------------
    def score_fn(self, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Exact score of the continuous marginal p_t, in x's dtype and device; differentiable in x."""
        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            td = t.detach().double().cpu()
            m, s = sde.mean_coeff(td), sde.marginal_std(td)
            return self.score(x.cpu().reshape(x.shape[0], -1), m, s).to(x).reshape(x.shape)
        return fn

    def discrete_score_fn(self, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Exact score of the SDE's discrete chain at the level nearest to t."""
        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            m, s = sde.discrete_marginal(sde.discrete_index(t.detach().cpu()))
            return self.score(x.cpu().reshape(x.shape[0], -1), m, s).to(x).reshape(x.shape)
        fn.continuous = False  # rounds t to a level, like a discrete-level network
        return fn


def ring_mixture(k: int = 8, radius: float = 4.0, std: float = 0.5) -> GaussianMixture:
    """k equal-weight isotropic Gaussians evenly spaced on a circle in 2-D."""
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    covs = (std ** 2) * torch.eye(2, dtype=torch.float64).expand(k, 2, 2).clone()
    return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64), means, covs)


def random_mixture(dim: int, k: int, seed: int = 0, spread: float = 3.0,
                   scale: float = 0.5) -> GaussianMixture:
    """A reproducible mixture with random weights, means and full (anisotropic) covariances."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    means = spread * torch.randn(k, dim, generator=g, dtype=torch.float64)
    a = torch.randn(k, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    covs = scale ** 2 * (a @ a.transpose(1, 2) + 0.2 * torch.eye(dim, dtype=torch.float64))
    return GaussianMixture(weights / weights.sum(), means, covs)


def random_rotation(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix with the signs of R's diagonal fixed)."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def image_like_mixture(dim: int = 64, k: int = 8, seed: int = 0, decades: float = 3.0,
                       top_var: float = 0.05, spread: float = 0.3, alpha: Optional[float] = None) -> GaussianMixture:
    """k components whose covariances have an image-like spectrum: eigenvalues falling as a power law
    l_j = top_var (j + 1)^(-a) over `decades` decades (a = decades / log10 dim, or `alpha` when given:
    natural images' exponent is about 1.5), each in its own random rotation; means N(0, spread^2 I). With
    the defaults the smallest variance is 5e-5, as for natural images whose fine-scale variances lie below
    1e-4 on a [-1, 1] scale."""
    g = torch.Generator().manual_seed(seed)
    a = alpha if alpha is not None else decades / math.log10(dim)
    spectrum = top_var * torch.arange(1, dim + 1, dtype=torch.float64) ** (-a)
    vals = spectrum.flip(0).expand(k, dim).clone()  # ascending, as eigh returns them
    vecs = torch.stack([random_rotation(dim, g) for _ in range(k)])
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    means = spread * torch.randn(k, dim, generator=g, dtype=torch.float64)
    return GaussianMixture(weights / weights.sum(), means, eig=(vals, vecs))
