"""Checkpoints: atomic save, safe (weights-only) load, discovery by step, RNG capture.

A checkpoint is a ``torch.save``d dict that loads with ``torch.load(weights_only=True)``::

    {"model": state_dict, "ema": {"decay", "num_updates", "shadow_params"},
     "optimizer": state_dict, "step": int, "rng": capture_rng_state(), "config": json str}

Only "model" and "step" are mandatory. Files are never loaded with ``weights_only=False``:
a file that needs arbitrary unpickling is refused, never executed.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .atomic import atomic_write

MANDATORY_KEYS = ("model", "step")
_CKPT_RE = re.compile(r"^checkpoint_(\d+)\.pth$")


def checkpoint_path(workdir: str, step: int) -> str:
    """Path of the numbered checkpoint of ``step``: ``<workdir>/checkpoints/checkpoint_<step>.pth``."""
    return os.path.join(workdir, "checkpoints", f"checkpoint_{int(step)}.pth")


def meta_checkpoint_path(workdir: str) -> str:
    """Path of the preemption checkpoint, overwritten in place: ``<workdir>/checkpoints-meta/checkpoint.pth``."""
    return os.path.join(workdir, "checkpoints-meta", "checkpoint.pth")


def _validate_state(state: Dict[str, Any]) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    missing = [k for k in MANDATORY_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks mandatory key(s) {missing}; add them (have {sorted(state)})")
    if isinstance(state["step"], bool) or not isinstance(state["step"], (int, np.integer)):
        raise ValueError(f"checkpoint 'step' must be an int, got {type(state['step']).__name__}")


def save_checkpoint(path: str, state: Dict[str, Any]) -> str:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``.

    A crash or kill mid-write leaves the previous file under ``path`` intact and no temp file behind
    (the temp file is removed on any exception; a hard kill may leave a ``.tmp`` file, never a
    truncated ``path``)."""
    _validate_state(state)
    state = dict(state, step=int(state["step"]))
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    return path


def _refusal_reason(message: str) -> str:
    """Pick the informative line out of torch's long weights-only error message."""
    for line in message.splitlines():
        if any(w in line for w in ("Unsupported", "GLOBAL", "blocked", "not an allowed")):
            return line.strip().split(". Please")[0]
    return "unsupported pickle content"


def _looks_like_torch_save(path: str) -> bool:
    """torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle (0x80 first)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``; clear one-line errors otherwise."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the workdir/checkpoint path")
    if not _looks_like_torch_save(path):
        raise ValueError(f"checkpoint {path} is corrupt or truncated (neither a zip archive nor a pickle, as "
                         f"torch.save writes); delete it to fall back to the previous checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"checkpoint {path} holds pickled code or objects that a weights-only load refuses "
            f"({_refusal_reason(str(e))}); nothing was executed. Fix: re-save it from trusted code as a "
            f"plain state dict (tensors, numbers, strings, lists, dicts)") from None
    except Exception as e:  # zip/EOF/index errors of a truncated or foreign file
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'no detail'}"
        raise ValueError(
            f"checkpoint {path} is corrupt or truncated ({reason}); delete it to fall back to the "
            f"previous checkpoint") from None
    if not isinstance(state, dict) or any(k not in state for k in MANDATORY_KEYS):
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path} is not a score_sde checkpoint: needs keys {list(MANDATORY_KEYS)}, "
                         f"has {have}; convert it (score_sde.models.compat) or re-save it")
    return state


def list_checkpoints(workdir: str) -> List[Tuple[int, str]]:
    """Numbered checkpoints under ``<workdir>/checkpoints`` as ``[(step, path)]`` sorted by step."""
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = _CKPT_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(folder, name)))
    return sorted(found)


def _peek_step(path: str) -> int:
    return int(load_checkpoint(path)["step"])


def latest_checkpoint(workdir: str) -> Optional[str]:
    """The checkpoint to resume from: highest step among the numbered ones and the preemption one.

    The preemption checkpoint's step is read from the file; on a tie the numbered file wins.
    Returns None when there is none."""
    numbered = list_checkpoints(workdir)
    best = numbered[-1] if numbered else None
    meta = meta_checkpoint_path(workdir)
    if os.path.isfile(meta):
        step = _peek_step(meta)
        if best is None or step > best[0]:
            best = (step, meta)
    return None if best is None else best[1]


def capture_rng_state() -> Dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA if available) RNG states as weights-only-safe values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": None if gauss is None else float(gauss)},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; a CUDA state is restored only where CUDA is available."""
    try:
        py, npst = state["python"], state["numpy"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
        keys = np.asarray(npst["keys"].cpu().numpy(), dtype=np.uint32)
        np.random.set_state((npst["name"], keys, int(npst["pos"]), int(npst["has_gauss"]),
                             float(npst["cached_gaussian"])))
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"RNG state is malformed ({type(e).__name__}: {e}); it must come from "
                         f"capture_rng_state()") from None
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), i)
