"""Exact conditionals of the Gaussian-mixture oracle: classes, noisy classifiers and posteriors, in float64.

Label each mixture component with a class c(k). Then
  p(x | c)            = the sub-mixture of components with c(k) = c, weights renormalized;
  p(c | x_t)          = sum_{k: c(k)=c} w_k N_k,t(x_t) / sum_k w_k N_k,t(x_t)   (N_k,t the marginal component);
  p(x | A x + n = y)  = sum_k w'_k N(mu'_k, S'_k), with n ~ N(0, r^2 I) and, per component (Gaussian conditioning),
      w'_k ∝ w_k N(y; A mu_k, A S_k A^T + r^2 I),  mu'_k = mu_k + K_k (y - A mu_k),  S'_k = S_k - K_k A S_k,
      K_k = S_k A^T (A S_k A^T + r^2 I)^{-1}.
Inpainting is the case A = rows of the identity at the observed coordinates and r = 0; its posterior on the
unobserved coordinates alone is `inpainting_posterior`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .sde_lib import SDE
from .toy import GaussianMixture, Scalar

LogProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LabelledMixture:
    """A GaussianMixture whose components carry class labels 0..C-1 (several components may share one)."""

    def __init__(self, mixture: GaussianMixture, labels: Sequence[int]):
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (mixture.num_components,) or (labels < 0).any():
            raise ValueError(f"need one non-negative class label per component ({mixture.num_components}), "
                             f"got {labels.tolist()}")
        self.mixture, self.labels = mixture, labels
        self.num_classes = int(labels.max()) + 1
        if any(int((labels == c).sum()) == 0 for c in range(self.num_classes)):
            raise ValueError(f"every class 0..{self.num_classes - 1} needs a component, got labels {labels.tolist()}")

    def class_prior(self) -> torch.Tensor:
        """p(c), [C]."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.labels, self.mixture.weights)

    def class_mixture(self, c: int) -> GaussianMixture:
        """p(x | c): the components labelled c with renormalized weights."""
        keep = self.labels == c
        w = self.mixture.weights[keep]
        return GaussianMixture(w / w.sum(), self.mixture.means[keep], self.mixture.covs[keep])

    def log_prob_class_t(self, x: torch.Tensor, m: Scalar, s: Scalar) -> torch.Tensor:
        """Exact log p(c | x_t) for x_t = m x_0 + s z, [n, C]; differentiable in x."""
        log_n, _ = self.mixture._components(x, m, s)
        joint = log_n + torch.log(self.mixture.weights)                           # [n, K]
        per_class = torch.stack([torch.logsumexp(joint[:, self.labels == c], dim=1)
                                 for c in range(self.num_classes)], dim=1)         # [n, C]
        return per_class - torch.logsumexp(joint, dim=1, keepdim=True)

    def classifier_fn(self, sde: SDE) -> LogProbFn:
        """log_prob_fn(x, t) -> [B, C] of the exact noisy classifier, in x's dtype; differentiable in x."""
        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            td = t.detach().double().cpu()
            m, s = sde.mean_coeff(td), sde.marginal_std(td)
            return self.log_prob_class_t(x.cpu().reshape(x.shape[0], -1), m, s).to(x)
        return fn


def _psd(c: torch.Tensor) -> torch.Tensor:
    """Symmetrize and lift round-off eigenvalues (exact conditioning leaves ~ -1e-17) to 1e-12 of the largest."""
    c = 0.5 * (c + c.transpose(-1, -2))
    lam, u = torch.linalg.eigh(c)
    floor = 1e-12 * lam.amax(-1, keepdim=True).clamp(min=1e-300)
    return (u * torch.maximum(lam, floor).unsqueeze(-2)) @ u.transpose(-1, -2)


def linear_posterior(mixture: GaussianMixture, A: torch.Tensor, y: torch.Tensor,
                     noise_std: float = 0.0) -> GaussianMixture:
    """p(x | A x + noise_std n = y) over all of R^d (A [m, d], y [m]); singular where A observes exactly."""
    A, y = torch.as_tensor(A, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if A.dim() != 2 or A.shape[1] != mixture.dim or y.shape != A.shape[:1]:
        raise ValueError(f"need A [m, {mixture.dim}] and y [m], got {tuple(A.shape)} and {tuple(y.shape)}")
    mu, S = mixture.means, mixture.covs
    eye = torch.eye(A.shape[0], dtype=torch.float64)
    C = A @ S @ A.T + noise_std ** 2 * eye                                        # [K, m, m] predictive cov
    r = y - mu @ A.T                                                               # [K, m]
    gain = torch.linalg.solve(C, A @ S).transpose(1, 2)                           # K_k = S A^T C^-1, [K, d, m]
    log_lik = -0.5 * (torch.einsum("ki,ki->k", r, torch.linalg.solve(C, r.unsqueeze(-1)).squeeze(-1))
                      + torch.logdet(C) + A.shape[0] * math.log(2 * math.pi))
    w = torch.softmax(log_lik + torch.log(mixture.weights), dim=0)
    means = mu + torch.einsum("kdm,km->kd", gain, r)
    covs = _psd(S - gain @ A @ S)
    return GaussianMixture(w / w.sum(), means, covs)


def inpainting_posterior(mixture: GaussianMixture, observed: torch.Tensor, y: torch.Tensor) -> GaussianMixture:
    """p(x_unobserved | x_observed = y) as a mixture over the unobserved coordinates (observed: bool [d])."""
    observed = torch.as_tensor(observed, dtype=torch.bool)
    eye = torch.eye(mixture.dim, dtype=torch.float64)
    post = linear_posterior(mixture, eye[observed], torch.as_tensor(y, dtype=torch.float64)[observed])
    return project(post, eye[~observed])


def project(mixture: GaussianMixture, P: torch.Tensor) -> GaussianMixture:
    """The mixture of P x for x from `mixture` (P [p, d]): means P mu_k, covariances P S_k P^T."""
    P = torch.as_tensor(P, dtype=torch.float64)
    return GaussianMixture(mixture.weights, mixture.means @ P.T, _psd(P @ mixture.covs @ P.T))


def overlapping_mixture(dim: int, seed: int = 0) -> LabelledMixture:
    """A labelled test mixture: 6 anisotropic, overlapping components in `dim` dimensions, 3 classes (2 each)."""
    g = torch.Generator().manual_seed(seed)
    k = 6
    means = 1.6 * torch.randn(k, dim, generator=g, dtype=torch.float64)
    a = torch.randn(k, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    covs = 0.6 * (a @ a.transpose(1, 2)) + 0.15 * torch.eye(dim, dtype=torch.float64)
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    return LabelledMixture(GaussianMixture(weights / weights.sum(), means, covs), [0, 0, 1, 1, 2, 2])


def mean_responsibilities(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the component responsibilities under p_0, [K]: an unbiased estimate of the
    component weights when x ~ mixture (E[w_k N_k(x) / p(x)] = w_k), with less noise than hard assignment."""
    log_n, _ = mixture._components(x.double(), 1.0, 0.0)
    return torch.softmax(log_n + torch.log(mixture.weights), dim=1).mean(0)


def dlogp(mixture: GaussianMixture, x: torch.Tensor, reference: torch.Tensor):
    """(mean log p(x) - mean log p(reference), its standard error): the oracle's bias statistic (DESIGN §5)."""
    a, b = mixture.log_prob(x.double()), mixture.log_prob(reference.double())
    se = math.sqrt(float(a.var()) / a.numel() + float(b.var()) / b.numel())
    return float(a.mean() - b.mean()), se


def shared_time_score_fn(mixture: GaussianMixture, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """GaussianMixture.score_fn for batches whose rows share one time (as samplers call it): one (m, s) per
    call instead of one per row, several times faster on large particle batches; falls back otherwise."""
    general = mixture.score_fn(sde)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not bool((t == t[0]).all()):
            return general(x, t)
        td = t[:1].detach().double().cpu()
        m, s = float(sde.mean_coeff(td)), float(sde.marginal_std(td))
        return mixture.score(x.cpu().reshape(x.shape[0], -1), m, s).to(x).reshape(x.shape)
    return fn
