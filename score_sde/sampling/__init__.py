"""Samplers, one small module per family, behind one registry.

    sampler = sampling.get_sampler("ddim", sde, shape=(n, 2), steps=50, eta=0.0)
    x, nfe = sampler(score_fn, generator=torch.Generator().manual_seed(0))

Every module in this package registers its factories with `register_sampler`; they are imported
here, so adding a sampler means adding one file.
"""
import importlib
import pkgutil

from .registry import SAMPLERS, get_sampler, register_sampler, sampler_options  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("registry", "common"):
        importlib.import_module(f"{__name__}.{_module.name}")

from .optimize import optimize_schedule  # noqa: E402,F401
from .schedules import SCHEDULES, load_schedule, save_schedule, sigma_schedule  # noqa: E402,F401
