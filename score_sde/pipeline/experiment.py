"""A trained model in Python: `score_sde.load(workdir_or_checkpoint)` -> Experiment.

    exp = score_sde.load("runs/digits_vp")              # newest checkpoint, EMA weights, its own spec
    x = exp.sample(16, method="dpm_solver", steps=10)   # model space: [n, C, H, W] or [n, d]
    nll = exp.nll(x)                                    # nats per sample (probability-flow ODE)
    bpd = exp.bits_per_dim(batch)                       # data-space batch, as the data sets yield it
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .. import builders, checkpoint, datasets, dequantization, likelihood, schedule_store, sde_lib
from ..models.ema import ExponentialMovingAverage
from . import eval_likelihood
from .spec import Spec, as_spec


@dataclass
class Experiment:
    """The spec, SDE and network of one checkpoint, with the score function every sampler takes."""
    spec: Spec
    sde: sde_lib.SDE
    model: torch.nn.Module
    step: int
    path: str
    device: torch.device

    @property
    def score_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """score_fn(x, t) of the network (eval mode), as samplers and the likelihood take it."""
        self.model.eval()
        return builders.score_fn_from_model(self.spec, self.sde, self.model)

    def sample(self, n: int, method: Optional[str] = None, *, seed: Optional[int] = None,
               generator: Optional[torch.Generator] = None, **options: Any) -> torch.Tensor:
        """n samples in model space with the spec's sampler, or `method` with `options` (keyword
        options of that sampler; None: its default). Seeded by `seed` (default: the spec's seed)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sample(n) needs a positive integer n, got {n!r}")
        spec = self.spec.replace(sampling=self.spec.sampling.with_options(method, **options))
        if spec.sampling.options.get("schedule") == schedule_store.OPTIMIZED:  # the one --mode schedule stored
            spec = schedule_store.resolve(spec, os.path.dirname(os.path.dirname(os.path.abspath(self.path))))
        sampler = builders.build_sampler(spec, self.sde, (n, *spec.shape), device=self.device)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(self.spec.seed if seed is None else seed)
        with torch.no_grad():
            x, _ = sampler(self.score_fn, generator=generator)
        return x

    def nll(self, x: torch.Tensor, *, generator: Optional[torch.Generator] = None, **options: Any) -> torch.Tensor:
        """Negative log-likelihood of model-space x in nats per sample, through the probability-flow ODE.

        Defaults: the spec's eval.likelihood (eps 1e-5, trace, num_probes, rtol, atol, backend); options
        (get_likelihood_fn's: trace="exact", eps=..., ...) override them."""
        nll_fn = likelihood.get_likelihood_fn(self.sde, **{**self.spec.eval.likelihood.options(), **options})
        nll, _, _ = nll_fn(self.score_fn, x.to(self.device), generator=generator)
        return nll.detach()

    def bits_per_dim(self, batch: torch.Tensor, *, generator: Optional[torch.Generator] = None,
                     **options: Any) -> torch.Tensor:
        """Bits/dim of each item of a data-space batch as the data sets yield it (toy points as drawn;
        images in [0, 1], dequantized or not): images are snapped to their bins' centres and dequantized by
        the spec's eval.dequantization, as --mode eval does; nll options as in `nll`."""
        scaler, data = datasets.get_data_scaler(self.spec), self.spec.data
        if not data.is_discrete:
            nll = self.nll(scaler(batch.to(self.device)), generator=generator, **options)
            return eval_likelihood.bits_per_dim(nll.double(), self.spec, self.spec.shape)
        levels = int(data.num_levels)
        centres = scaler((torch.floor(batch.to(self.device).clamp(0, 1 - 1e-7) * levels) + 0.5) / levels)
        nats, _ = dequantization.discrete_nll(self.sde, self.score_fn, centres, generator=generator,
                                              **eval_likelihood.dequantizer_options(self.spec),
                                              **{**self.spec.eval.likelihood.options(), **options})
        return nats / (math.prod(self.spec.shape) * math.log(2.0))


def load(path: str, *, config: Any = None, device: Any = None, ema: bool = True) -> Experiment:
    """The experiment of a checkpoint file, or of a workdir's newest checkpoint.

    The spec comes from the checkpoint (config: a ConfigDict / dict / Spec to use instead); ema=False
    loads the raw training weights; device defaults to CUDA when visible, else the CPU."""
    path = os.fspath(path)
    ckpt_path = checkpoint.latest_checkpoint(path) if os.path.isdir(path) else path
    if ckpt_path is None:
        raise FileNotFoundError(f"no checkpoint under {path}/checkpoints; train first (main.py --mode train)")
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"{path} is neither a workdir nor a checkpoint file")
    ckpt = checkpoint.load_checkpoint(ckpt_path, map_location="cpu")
    if config is None and not ckpt.get("config"):
        raise ValueError(f"{ckpt_path} stores no config; pass load(..., config=<the training config>)")
    spec = as_spec(config if config is not None else ckpt["config"])
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() and spec.device != "cpu" else "cpu")
    model = builders.build_model(spec, device)
    state = {"model": model, "ema": ExponentialMovingAverage(model.parameters(), spec.model.ema_rate),
             "optimizer": None, "step": 0}
    builders.load_state(state, ckpt)
    if ema and "ema" in ckpt:
        state["ema"].copy_to(model.parameters())
    model.eval()
    return Experiment(spec, builders.sde_from_config(spec), model, state["step"], ckpt_path, device)
