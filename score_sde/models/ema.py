"""Exponential moving average of parameters (Polyak averaging), with the usual warm-up of the rate."""
from __future__ import annotations

from typing import Iterable, List

import torch


class ExponentialMovingAverage:
    """shadow <- decay * shadow + (1 - decay) * param after each optimizer step.

    With `use_num_updates`, the rate warms up as min(decay, (1 + n) / (10 + n)) so early averages
    are not dominated by the random initialisation.
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float, use_num_updates: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}; typical values are 0.999-0.9999")
        self.decay = float(decay)
        self.num_updates = 0 if use_num_updates else None
        self.shadow_params: List[torch.Tensor] = [p.detach().clone() for p in parameters if p.requires_grad]
        self.collected_params: List[torch.Tensor] = []

    def _trainable(self, parameters: Iterable[torch.nn.Parameter]) -> List[torch.nn.Parameter]:
        params = [p for p in parameters if p.requires_grad]
        if len(params) != len(self.shadow_params):
            raise ValueError(f"EMA tracks {len(self.shadow_params)} parameters but got {len(params)}; "
                             "pass the parameters of the same model the EMA was built from")
        return params

    @torch.no_grad()
    def update(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        decay = self.decay
        if self.num_updates is not None:
            self.num_updates += 1
            decay = min(decay, (1 + self.num_updates) / (10 + self.num_updates))
        for shadow, param in zip(self.shadow_params, self._trainable(parameters)):
            shadow.lerp_(param.detach().to(shadow.dtype), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        for shadow, param in zip(self.shadow_params, self._trainable(parameters)):
            param.copy_(shadow)

    def store(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Remember the current parameters, to be put back by `restore` after evaluating with EMA."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        for saved, param in zip(self.collected_params, parameters):
            param.copy_(saved)
        self.collected_params = []

    def to(self, device: torch.device) -> "ExponentialMovingAverage":
        self.shadow_params = [p.to(device) for p in self.shadow_params]
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow_params": self.shadow_params}

    def load_state_dict(self, state: dict) -> None:
        shadow = list(state["shadow_params"])
        if len(shadow) != len(self.shadow_params) or any(
                a.shape != b.shape for a, b in zip(shadow, self.shadow_params)):
            raise ValueError("EMA state does not match this model's parameters (count or shapes differ); "
                             "was the checkpoint written for another model config?")
        self.decay = float(state["decay"])
        self.num_updates = state["num_updates"]
        self.shadow_params = [s.to(p.device, p.dtype) for s, p in zip(shadow, self.shadow_params)]
