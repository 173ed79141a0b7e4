"""Forward SDEs with Gaussian marginals x_t = m(t) x_0 + s(t) z (Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations", section 3.4 and appendix B).

Each SDE owns all of its math: drift and diffusion, marginals, prior, its discretization, the
noise level sigma(t) = s(t)/m(t) that makes every SDE a scaled VE (Karras et al. 2022, section 2),
its discrete schedule (DDPM betas or NCSN sigmas) and the label its network is conditioned on.
Code elsewhere asks the SDE instead of branching on its type.
"""
from __future__ import annotations

import abc
import math
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from .utils import batch_broadcast, check_time, randn

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- discrete schedules
def linear_betas(N: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM linear schedule (Ho et al. 2020, section 4): beta_i evenly spaced, float64."""
    _check_levels(N)
    return torch.linspace(beta_start, beta_end, N, dtype=torch.float64)


def cosine_betas(N: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): abar(t) = cos^2((t/N + s)/(1 + s) * pi/2)."""
    _check_levels(N)
    steps = torch.arange(N + 1, dtype=torch.float64) / N
    abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """abar_i = prod_{j<=i} (1 - beta_j), computed in log space."""
    return torch.exp(torch.cumsum(torch.log1p(-betas.double()), dim=0))


def geometric_sigmas(sigma_min: float, sigma_max: float, N: int) -> torch.Tensor:
    """NCSN noise levels (Song & Ermon 2019): geometric from sigma_min to sigma_max, ascending, float64."""
    _check_levels(N)
    return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), N, dtype=torch.float64))


def _check_levels(N: int) -> None:
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"N (number of discretization steps) must be an integer >= 1, got {N!r}")


def _table(table: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Look up a float64 schedule table at `index`, returned on `like`'s device and dtype."""
    return table.to(like.device)[index.to(like.device)].to(like.dtype)


# ----------------------------------------------------------------------------- base class
class SDE(abc.ABC):
    """dx = f(x, t) dt + g(t) dw on t in [0, T], with marginal x_t = m(t) x_0 + s(t) z."""

    T: float = 1.0
    sampling_eps: float = 1e-3

    def __init__(self, N: int):
        _check_levels(N)
        self.N = int(N)

    # --- continuous-time description ------------------------------------------------------------
    @abc.abstractmethod
    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log m(t)."""

    @abc.abstractmethod
    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """s(t)."""

    @abc.abstractmethod
    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g(t)."""

    @abc.abstractmethod
    def t_from_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Inverse of sigma(t) = s(t)/m(t)."""

    @abc.abstractmethod
    def discrete_marginal(self, i: torch.Tensor, like: Optional[torch.Tensor] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(m_i, s_i) of the discrete chain at level i (float64 unless `like` is given)."""

    @abc.abstractmethod
    def network_label(self, t: torch.Tensor, continuous: bool) -> torch.Tensor:
        """What the noise-conditional network is conditioned on at time t."""

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I)."""
        return 1.0

    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """m(t), the scale of x_0 in the marginal."""
        return torch.exp(self.log_mean_coeff(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = s(t)/m(t): x_t / m(t) is x_0 plus noise of std sigma (a VE process)."""
        return self.marginal_std(t) / self.mean_coeff(t)

    @abc.abstractmethod
    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """The linear drift's coefficient: f(x, t) = drift_coeff(t) * x = (d log m/dt) x."""

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) (shaped like x) and diffusion g(t) (shape [B])."""
        check_time(x, t)
        return batch_broadcast(self.drift_coeff(t), x) * x, self.diffusion(t)

    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean m(t) x_0 (shaped like x) and std s(t) (shape [B]) of p_t(x_t | x_0)."""
        check_time(x, t)
        return batch_broadcast(self.mean_coeff(t), x) * x, self.marginal_std(t)

    # --- prior ----------------------------------------------------------------------------------
    def prior_sampling(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                       device: Optional[torch.device] = None,
                       dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Draw x_T ~ N(0, prior_std^2 I)."""
        return randn(shape, generator=generator, device=device, dtype=dtype) * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I), summed over non-batch dimensions."""
        d = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(dim=1)
        return -0.5 * d * math.log(2 * math.pi * self.prior_std ** 2) - sq / (2 * self.prior_std ** 2)

    # --- discrete grid --------------------------------------------------------------------------
    def discrete_times(self) -> torch.Tensor:
        """Times t_i = i/(N-1) * T of the N discrete levels (t_0 = 0, t_{N-1} = T)."""
        if self.N == 1:
            return torch.tensor([self.T], dtype=torch.float64)
        return torch.linspace(0.0, self.T, self.N, dtype=torch.float64)

    def discrete_index(self, t: torch.Tensor) -> torch.Tensor:
        """Nearest discrete level of time t: round(t (N-1)/T), clamped to [0, N-1]."""
        return torch.round(t.double() * (self.N - 1) / self.T).long().clamp(0, self.N - 1)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step x_{i+1} = x_i + f + G z of the forward chain; Euler-Maruyama by default."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    # --- reverse time ---------------------------------------------------------------------------
    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """Reverse-time SDE (eq. 6) or, with probability_flow, the probability-flow ODE (eq. 13)."""
        return ReverseSDE(self, score_fn, probability_flow)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({fields})"

    def _repr_fields(self) -> dict:
        return {"N": self.N}


class ReverseSDE:
    """dx = [f - (1 or 1/2) g^2 score] dt + (g or 0) dw-bar, integrated from T down to 0."""

    def __init__(self, sde: SDE, score_fn: ScoreFn, probability_flow: bool):
        self.forward_sde = sde
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N, self.T = sde.N, sde.T

    def _combine(self, f: torch.Tensor, G: torch.Tensor, x: torch.Tensor, t: torch.Tensor):
        weight = 0.5 if self.probability_flow else 1.0
        rev_f = f - batch_broadcast(G ** 2, x) * self.score_fn(x, t) * weight
        rev_G = torch.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Reverse drift and diffusion in continuous time (Song et al. 2021, eqs. 6 and 13)."""
        return self._combine(*self.forward_sde.sde(x, t), x, t)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Reverse of the forward discretization (reverse diffusion predictor, eq. 46)."""
        return self._combine(*self.forward_sde.discretize(x, t), x, t)


# ----------------------------------------------------------------------------- VP family
class _BetaSDE(SDE):
    """Shared math of VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        if not (beta_min >= 0 and beta_max > 0 and beta_max >= beta_min):
            raise ValueError(f"need 0 <= beta_min <= beta_max and beta_max > 0, got beta_min={beta_min}, "
                             f"beta_max={beta_max}; the paper uses beta_min=0.1, beta_max=20")
        if beta_max / N >= 1:
            raise ValueError(f"the discrete chain needs beta_max/N < 1 (its last beta), got {beta_max}/{N}; "
                             f"use N > {beta_max:g} levels")
        self.beta_0, self.beta_1 = float(beta_min), float(beta_max)
        self.discrete_betas = linear_betas(self.N, self.beta_0 / self.N, self.beta_1 / self.N)
        self.alphas = 1.0 - self.discrete_betas
        self.alphas_cumprod = alphas_cumprod(self.discrete_betas)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        # log m(t) = -1/4 t^2 (beta_1 - beta_0) - 1/2 t beta_0   (eq. 29)
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def _t_from_log_mean(self, neg_log_m: torch.Tensor) -> torch.Tensor:
        # solve (b1-b0)/4 t^2 + b0/2 t = -log m, in the cancellation-free form of the quadratic root
        a, b = 0.25 * (self.beta_1 - self.beta_0), 0.5 * self.beta_0
        return 2 * neg_log_m / (b + torch.sqrt(b * b + 4 * a * neg_log_m))

    def network_label(self, t: torch.Tensor, continuous: bool) -> torch.Tensor:
        # continuous nets see t * (N - 1) (score_sde_pytorch's convention); discrete nets the level
        return t * (self.N - 1) if continuous else self.discrete_index(t)

    def _discrete_mean(self, i: torch.Tensor, like: Optional[torch.Tensor]) -> torch.Tensor:
        abar = self.alphas_cumprod
        return torch.sqrt(_table(abar, i, like) if like is not None else abar[i])

    def _repr_fields(self) -> dict:
        return {"beta_min": self.beta_0, "beta_max": self.beta_1, "N": self.N}


class VPSDE(_BetaSDE):
    """Variance preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw (eq. 11); DDPM in the limit."""

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_mean_coeff(t)))  # s^2 = 1 - m^2

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.beta(t))

    def t_from_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return self._t_from_log_mean(0.5 * torch.log1p(sigma ** 2))  # sigma^2 = 1/m^2 - 1

    def discrete_marginal(self, i, like=None):
        m = self._discrete_mean(i, like)
        return m, torch.sqrt(1 - m ** 2)

    def discretize(self, x, t):
        # DDPM step x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z (Ho et al. 2020, eq. 2)
        beta = _table(self.discrete_betas, self.discrete_index(t), x)
        return (torch.sqrt(1 - batch_broadcast(beta, x)) - 1) * x, torch.sqrt(beta)


class subVPSDE(_BetaSDE):
    """Sub-VP SDE dx = -1/2 beta x dt + sqrt(beta (1 - exp(-2 int beta))) dw (eq. 17)."""

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(2 * self.log_mean_coeff(t))  # s = 1 - m^2

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_mean_coeff(t)))

    def t_from_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        # sigma = 1/m - m  =>  m = 2 / (sigma + sqrt(sigma^2 + 4))
        return self._t_from_log_mean(torch.log((sigma + torch.sqrt(sigma ** 2 + 4)) / 2))

    def discrete_marginal(self, i, like=None):
        # the VP chain's means with sub-VP's std s = 1 - m^2: ancestral/DDIM steps stay valid
        m = self._discrete_mean(i, like)
        return m, 1 - m ** 2


# ----------------------------------------------------------------------------- VE
class VESDE(SDE):
    """Variance exploding SDE dx = sigma(t) sqrt(2 log(sigma_max/sigma_min)) dw (eq. 9); SMLD in the limit."""

    sampling_eps = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}; e.g. sigma_min=0.01, sigma_max=50")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.discrete_sigmas = geometric_sigmas(self.sigma_min, self.sigma_max, self.N)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def log_mean_coeff(self, t):
        return torch.zeros_like(t)

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def marginal_std(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)  # sigma(t) = smin (smax/smin)^t

    def diffusion(self, t):
        return self.marginal_std(t) * math.sqrt(2 * self._log_ratio)

    def t_from_sigma(self, sigma):
        return torch.log(sigma / self.sigma_min) / self._log_ratio

    def discrete_marginal(self, i, like=None):
        s = _table(self.discrete_sigmas, i, like) if like is not None else self.discrete_sigmas[i]
        return torch.ones_like(s), s

    def discretize(self, x, t):
        # SMLD step x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z, with sigma_{-1} = 0
        i = self.discrete_index(t)
        sigma = _table(self.discrete_sigmas, i, x)
        previous = torch.where(i > 0, _table(self.discrete_sigmas, (i - 1).clamp(min=0), x),
                               torch.zeros_like(sigma))
        return torch.zeros_like(x), torch.sqrt(sigma ** 2 - previous ** 2)

    def network_label(self, t, continuous):
        # continuous nets see sigma(t); discrete nets the index into sigmas listed large-to-small
        return self.marginal_std(t) if continuous else self.N - 1 - self.discrete_index(t)

    def _repr_fields(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}


_REGISTRY = {"vpsde": VPSDE, "subvpsde": subVPSDE, "vesde": VESDE}


def get_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by name: 'vpsde', 'subvpsde' or 'vesde' (case-insensitive)."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown SDE {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[key](**kwargs)
