"""EDM's network preconditioning (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", table 1 and eq. 7), for any SDE of sde_lib.

Every SDE here is a scaled VE: x_t = m(t) (x_0 + sigma(t) n), sigma = s/m (Karras et al. sec. 2). In the
scaled space x_hat = x_t / m the denoiser is
    D(x_hat; sigma) = c_skip(sigma) x_hat + c_out(sigma) F(c_in(sigma) x_hat; c_noise(sigma))      (eq. 7)
    c_skip = sigma_d^2 / (sigma^2 + sigma_d^2),  c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2),
    c_in = 1 / sqrt(sigma^2 + sigma_d^2),        c_noise = ln(sigma) / 4
with F the raw network. Trained with lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2, the loss
lambda |D - x_0|^2 equals |F - F_target|^2 (eq. 8): F's target has unit variance at every sigma for data of
std sigma_d. D is an x_0 prediction, so the parameterization adapter turns it into a score for every sampler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch

PRECONDITIONINGS = ("none", "edm")
Coefficients = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _column(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample [B] tensor shaped to broadcast against `like` [B, ...]."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class EDMPreconditioning:
    """The coefficients of table 1 and the wrapping of a raw network F into the denoiser D. log_labels: the
    network embeds the log of its noise label (NCSN++'s Fourier features), so it is given exp(c_noise)."""
    sigma_data: float = 0.5
    log_labels: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.sigma_data, bool) or not self.sigma_data > 0:
            raise ValueError(f"sigma_data (EDM's data std) must be > 0, got {self.sigma_data!r}; "
                             f"0.5 for images in [-1, 1]")

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        """(c_skip, c_out, c_in, c_noise) at noise levels sigma (Karras et al. 2022, table 1)."""
        sd2, r2 = self.sigma_data ** 2, sigma ** 2 + self.sigma_data ** 2
        return sd2 / r2, sigma * self.sigma_data / torch.sqrt(r2), 1 / torch.sqrt(r2), torch.log(sigma) / 4

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 = 1 / c_out^2 (table 1)."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    def target(self, x0: torch.Tensor, x_hat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """F's effective training target (x_0 - c_skip x_hat) / c_out (eq. 8), sigma per sample [B]."""
        c_skip, c_out, _, _ = (_column(c, x0) for c in self.coefficients(sigma))
        return (x0 - c_skip * x_hat) / c_out

    def denoise(self, net: Any, x_hat: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """D(x_hat; sigma) of eq. 7 for sigma per sample [B]; net(input, label, **kwargs) -> F."""
        c_skip, c_out, c_in, c_noise = (c.to(x_hat.dtype) for c in self.coefficients(sigma))
        label = torch.exp(c_noise) if self.log_labels else c_noise
        out = net(_column(c_in, x_hat) * x_hat, label, **kwargs).to(x_hat.dtype)  # combine in full precision
        if out.shape != x_hat.shape:
            raise ValueError(f"network output shape {tuple(out.shape)} differs from its input "
                             f"{tuple(x_hat.shape)}; the model must return a tensor shaped like x")
        return _column(c_skip, x_hat) * x_hat + _column(c_out, x_hat) * out


def get_preconditioning(name: str, sigma_data: float = 0.5, log_labels: bool = False
                        ) -> Optional[EDMPreconditioning]:
    """model.preconditioning -> the object get_model attaches to the network (None for 'none')."""
    if name not in PRECONDITIONINGS:
        raise ValueError(f"unknown model.preconditioning {name!r}; choose one of {PRECONDITIONINGS}")
    return EDMPreconditioning(float(sigma_data), bool(log_labels)) if name == "edm" else None
