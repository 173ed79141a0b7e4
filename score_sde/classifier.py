"""Training and using a noise-conditional classifier p_t(c | x_t), for any SDE (Song et al. 2021, appendix I.1).

Loss: E_{t ~ U(eps, T), z} CE(classifier(m(t) x_0 + s(t) z, log sigma(t)), c), cross-entropy of the class of
x_0 read off its perturbed version at a random time, sigma(t) = s(t)/m(t).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sde_lib import SDE
from .utils import batch_broadcast, rand_like, randn_like

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, log_sigma) -> logits [B, C]


def classifier_loss(sde: SDE, classifier: Classifier, x0: torch.Tensor, labels: torch.Tensor,
                    generator: Optional[torch.Generator] = None, eps: float = 1e-5) -> torch.Tensor:
    """Mean cross-entropy of the classifier on x_0 perturbed by the SDE's marginal at t ~ U(eps, T)."""
    if labels.shape != x0.shape[:1] or labels.is_floating_point():
        raise ValueError(f"labels must be integer of shape [batch]=[{x0.shape[0]}], got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    t = eps + (sde.T - eps) * rand_like(x0.new_empty(x0.shape[0]), generator)
    mean, std = sde.marginal_prob(x0, t)
    x_t = mean + batch_broadcast(std, x0) * randn_like(x0, generator)
    return F.cross_entropy(classifier(x_t, torch.log(sde.sigma(t))), labels.long())


def classifier_train_step(sde: SDE, classifier: nn.Module, optimizer: torch.optim.Optimizer, x0: torch.Tensor,
                          labels: torch.Tensor, generator: Optional[torch.Generator] = None,
                          eps: float = 1e-5, grad_clip: Optional[float] = None) -> float:
    """One optimizer step on classifier_loss; returns the loss."""
    classifier.train()
    optimizer.zero_grad(set_to_none=True)
    loss = classifier_loss(sde, classifier, x0, labels, generator, eps)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(classifier.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def log_prob_fn(sde: SDE, classifier: Classifier) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """log_prob_fn(x, t) -> [B, C] log p_t(c | x) of a trained classifier, for conditioning.classifier_guidance."""
    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if isinstance(classifier, nn.Module):
            classifier.eval()
        return torch.log_softmax(classifier(x, torch.log(sde.sigma(t)).to(x.dtype)), dim=-1)
    return fn
