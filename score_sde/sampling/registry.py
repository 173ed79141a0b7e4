"""Registry of sampler factories: name -> factory(sde, shape, **options) -> sampler.

A sampler is `sampler(score_fn, generator=None, x_T=None, callback=None) -> (x, nfe)`.
Options are the factory's keyword-only arguments; unknown names or options fail with the valid ones.
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, List, Sequence

SAMPLERS: Dict[str, Callable] = {}


def register_sampler(*names: str) -> Callable[[Callable], Callable]:
    """Decorator registering a factory under one or more names."""
    def wrap(factory: Callable) -> Callable:
        for name in names:
            if name in SAMPLERS:
                raise ValueError(f"sampler name {name!r} registered twice")
            SAMPLERS[name] = factory
        return factory
    return wrap


def sampler_options(name: str) -> List[str]:
    """The option names a sampler accepts."""
    factory = _lookup(name)
    return [p.name for p in inspect.signature(factory).parameters.values() if p.kind is p.KEYWORD_ONLY]


def _lookup(name: str) -> Callable:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def get_sampler(name: str, sde, shape: Sequence[int], **options) -> Callable:
    """Build the sampler `name` for `sde` drawing tensors of `shape` (batch first)."""
    factory = _lookup(name)
    valid = sampler_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"sampler {name!r} got unknown option(s) {unknown}; valid options: {valid}")
    if len(shape) < 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be (batch, *data_shape) with positive sizes, got {tuple(shape)}")
    return factory(sde, tuple(int(s) for s in shape), **options)
