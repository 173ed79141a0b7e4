"""The training state on disk: seeding, checkpoints written by rank 0 after a finite check, resuming.

A checkpoint holds the plain module's weights, EMA, optimizer, step, rank 0's RNG (informational),
the spec and the fingerprint of its model/SDE fields; nothing per rank is saved, because every random
draw of training is keyed by (seed, stream position) (score_sde.data_stream).
"""
from __future__ import annotations

import json
import math
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

from .. import builders, checkpoint, distributed, integrity
from .spec import Spec, as_spec


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def fingerprint_fields(config: Any) -> Dict[str, Any]:
    """The model/SDE-defining fields of a spec or config (integrity.FINGERPRINT_FIELDS)."""
    return integrity.fingerprint_fields(json.loads(as_spec(config).to_json()))


def save(state: Dict[str, Any], spec: Spec, path: str, info: distributed.DistInfo,
         last_good: Optional[str] = None) -> str:
    """Checkpoint (model, EMA, optimizer, step, rank 0's RNG, spec, fingerprint) written atomically by
    rank 0; refused on every rank if anything in it is non-finite (the error names `last_good`).
    Returns `path`.

    The weights are the plain module's (distributed.unwrap: no DDP/compile prefixes) in fp32 (autocast
    never changes parameter dtypes). The RNG is informational: training draws are keyed by step."""
    require_finite(state, last_good)  # every rank (same state): none is left waiting at the barrier
    if info.is_main:
        ckpt = builders.state_dict_for_checkpoint(state)
        ckpt.update(rng=checkpoint.capture_rng_state(), config=spec.to_json())
        checkpoint.save_checkpoint(path, ckpt, fingerprint_fields(spec), last_good)
    distributed.barrier(info)
    return path


def require_finite(state: Dict[str, Any], last_good: Optional[str]) -> None:
    """Before any save: weights, optimizer state and EMA must be finite (FloatingPointError otherwise).
    Costs about a torch.save of the same tensors (bench/reliability_overhead.py), so it runs per save;
    every step gets the free check of the gradient norm (check_grad_norm)."""
    model = distributed.unwrap(state["model"])
    live = [(f"model/{n}", t) for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_floating_point()]
    live += [(f"optimizer/state/{i}/{k}", v) for i, s in enumerate(state["optimizer"].state.values())
             for k, v in s.items() if torch.is_tensor(v) and v.is_floating_point()]
    live += [(f"ema/shadow_params[{i}]", t) for i, t in enumerate(state["ema"].shadow_params)]
    checkpoint.require_finite(live, state["step"], last_good)


def check_grad_norm(stats: Dict[str, float], step: int, last_good: Optional[str]) -> None:
    """A non-finite gradient norm means the update just applied was non-finite: stop before any save."""
    if not math.isfinite(stats["grad_norm"]):
        raise FloatingPointError(f"non-finite gradient norm ({stats['grad_norm']}) at step {step}; nothing was "
                                 f"saved - the last good checkpoint is {last_good or '(none yet)'}; lower "
                                 f"optim.lr or set optim.grad_clip and resume")


def resume(state: Dict[str, Any], workdir: str, info: distributed.DistInfo, fields: Optional[Dict[str, Any]] = None,
           allow_fingerprint_mismatch: bool = False) -> Optional[str]:
    """Load the newest checkpoint (numbered or preemption) into state; its path or None.

    Works for any number of processes: the weights, EMA, optimizer and step are global, and every
    random draw after step s is keyed by (seed, stream position) (dropout by (seed, s, rank)), so
    nothing per-rank is restored. A checkpoint
    whose fingerprint differs from `fields` is refused unless `allow_fingerprint_mismatch`."""
    path = checkpoint.latest_checkpoint(workdir)
    if path is None:
        return None
    ckpt = checkpoint.load_checkpoint(path, map_location=info.device, fingerprint_fields=fields,
                                      allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    builders.load_state(state, ckpt, path)
    return path
