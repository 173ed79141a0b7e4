"""Checkpoints: atomic save, safe (weights-only) load, discovery by step, RNG capture, integrity.

A checkpoint is a ``torch.save``d dict that loads with ``torch.load(weights_only=True)``::

    {"model": state_dict, "ema": {"decay", "num_updates", "shadow_params"},
     "optimizer": state_dict, "step": int, "rng": capture_rng_state(), "config": json str,
     "format_version": 1, "fingerprint": json str, "checksum": "sha256:<hex>"}

Only "model" and "step" are mandatory. Files are never loaded with ``weights_only=False``:
a file that needs arbitrary unpickling is refused, never executed.

Integrity (format 1, docs/reliability.md): ``fingerprint`` holds the config fields that define the
network and the SDE (score_sde.integrity.FINGERPRINT_FIELDS); loading under different values is an
error unless explicitly allowed. ``checksum`` is a SHA-256 over every other entry (tensor bytes,
dtypes, shapes); a mismatch means the file was damaged after it was written. Files without these
keys (written before format 1) still load, with a warning. Non-finite weights are never written.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from . import integrity
from .atomic import atomic_write

log = logging.getLogger(__name__)

MANDATORY_KEYS = ("model", "step")
FORMAT_VERSION = 1  # bump when the layout changes; a reader refuses a newer format with an upgrade hint
_CKPT_RE = re.compile(r"^checkpoint_(\d+)\.pth$")
_TMP_RE = re.compile(r"^\..+\.tmp$")  # atomic_write's temp files: .<name>.<random>.tmp



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


def save_checkpoint(path: str, state: Dict[str, Any], fingerprint_fields: Optional[Mapping[str, Any]] = None,
                    last_good: Optional[str] = None, check_finite: bool = False) -> str:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``), with
    the format version, the fingerprint of ``fingerprint_fields`` and a checksum of its contents.

    ``check_finite`` (training sets it): refuse (FloatingPointError) a state holding inf/NaN; the message
    names the step and ``last_good``, the newest checkpoint known to be fine. A crash or kill mid-write leaves the previous file under
    ``path`` intact; a hard kill may leave a ``.tmp`` file (see :func:`remove_stale_tmp`)."""
    _validate_state(state)
    state = dict(state, step=int(state["step"]))
    if check_finite:
        require_finite(integrity.float_tensors({k: state[k] for k in ("model", "optimizer", "ema") if k in state}),
                       state["step"], last_good)
    state["format_version"] = FORMAT_VERSION
    if fingerprint_fields is not None:
        state["fingerprint"] = json.dumps(dict(fingerprint_fields), sort_keys=True)
    state["checksum"] = integrity.checksum(state)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    return path


def require_finite(named: List[Tuple[str, torch.Tensor]], step: int, last_good: Optional[str]) -> None:
    """FloatingPointError naming the first inf/NaN tensor, the step and the last good checkpoint."""
    bad = integrity.first_nonfinite(named)
    if bad is not None:
        raise FloatingPointError(
            f"non-finite values in {bad.lstrip('/')} after step {step}; nothing was saved - the last good "
            f"checkpoint is {last_good or '(none yet)'}; lower optim.lr or set optim.grad_clip and resume")


def require_finite_weights(path: str, model: torch.nn.Module) -> None:
    """ValueError when the weights loaded from ``path`` (EMA ones for evaluation) hold inf/NaN."""
    bad = integrity.first_nonfinite([(n, t) for n, t in model.state_dict().items() if t.is_floating_point()])
    if bad is not None:
        raise ValueError(f"checkpoint {path} holds non-finite weights ({bad}); it cannot be evaluated - use an "
                         f"earlier checkpoint (eval.begin_ckpt / eval.end_ckpt)")


def remove_stale_tmp(folder: str) -> List[str]:
    """Delete the ``.<name>.<random>.tmp`` files that killed atomic writes left under ``folder``
    (recursively). Call it only while holding the folder's lock (score_sde.workdir_lock)."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for root, _, files in os.walk(folder):
        for name in files:
            if _TMP_RE.match(name):
                path = os.path.join(root, name)
                try:
                    os.unlink(path)
                    removed.append(path)
                except FileNotFoundError:
                    pass
    if removed:
        log.info("removed %d leftover temp file(s) of interrupted writes under %s", len(removed), folder)
    return removed


def _refusal_reason(message: str) -> str:
    """Pick the informative line out of torch's long weights-only error message (not its advice)."""
    for line in message.splitlines():
        if any(w in line for w in ("Unsupported", "GLOBAL", "blocked", "not an allowed")):
            return line.strip().split(". Please")[0].split(" Please")[0].rstrip(".")
    return "unsupported pickle content"


def _looks_like_torch_save(path: str) -> bool:
    """torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle (0x80 first)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


_NEWER_TORCH = re.compile(r"file with version (\d+), but the maximum supported version for reading is (\d+)")


def safe_torch_load(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors: refused pickles (without torch's advice to
    pass weights_only=False), archives of a newer torch, corrupt or truncated files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the workdir/checkpoint path")
    if not _looks_like_torch_save(path):
        raise ValueError(f"checkpoint {path} is corrupt or truncated (neither a zip archive nor a pickle, as "
                         f"torch.save writes); delete it to fall back to the previous checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"checkpoint {path} holds pickled code or objects that a weights-only load refuses "
            f"({_refusal_reason(str(e))}); nothing was executed. Fix: re-save it from trusted code as a "
            f"plain state dict (tensors, numbers, strings, lists, dicts)") from None
    except Exception as e:  # zip/EOF/index errors of a truncated or foreign file
        newer = _NEWER_TORCH.search(str(e))
        if newer:
            raise ValueError(f"checkpoint {path} was written by a newer torch (archive version {newer.group(1)}, "
                             f"this torch {torch.__version__} reads up to {newer.group(2)}); upgrade torch "
                             f"(pip install -U torch) - the file is not corrupt") from None
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'no detail'}"
        raise ValueError(
            f"checkpoint {path} is corrupt or truncated ({reason}); delete it to fall back to the "
            f"previous checkpoint") from None


def load_checkpoint(path: str, map_location: Any = "cpu", fingerprint_fields: Optional[Mapping[str, Any]] = None,
                    allow_fingerprint_mismatch: bool = False, verify: bool = True) -> Dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``; clear one-line errors otherwise.

    ``verify``: check the format version and the checksum (damage). ``fingerprint_fields``: the
    current config's fields (integrity.fingerprint_fields); a checkpoint written under other values is
    refused unless ``allow_fingerprint_mismatch`` (then a warning)."""
    state = safe_torch_load(path, map_location)
    if not isinstance(state, dict) or any(k not in state for k in MANDATORY_KEYS):
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path} is not a score_sde checkpoint: needs keys {list(MANDATORY_KEYS)}, "
                         f"has {have}; convert it (score_sde.models.compat) or re-save it")
    if verify:
        _verify(path, state)
    if fingerprint_fields is not None:
        check_fingerprint(path, state, fingerprint_fields, allow_fingerprint_mismatch)
    return state


def content_id(path: str, state: Optional[Mapping[str, Any]] = None) -> str:
    """What identifies a checkpoint's contents (issue 10 item 4: eval's "already done" cache is keyed on
    it): its stored checksum, or for files without one (older format, imported originals) the SHA-256 of
    the file's bytes."""
    if state is not None and isinstance(state.get("checksum"), str):
        return state["checksum"]
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "file-sha256:" + h.hexdigest()


def _verify(path: str, state: Dict[str, Any]) -> None:
    version = state.get("format_version")
    if version is None:
        log.warning("checkpoint %s predates checkpoint format %d (no version, fingerprint or checksum); "
                    "loading it unchecked - the next save writes the current format", path, FORMAT_VERSION)
        return
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format version {version!r}, newer than this score_sde reads "
                         f"({FORMAT_VERSION}); upgrade score_sde")
    if "checksum" in state and integrity.checksum(state) != state["checksum"]:
        raise ValueError(f"checkpoint {path} is damaged: its contents do not match the checksum written with "
                         f"them (bit rot, a partial copy or an edit); restore it from a backup or delete it to "
                         f"fall back to the previous checkpoint")


def check_fingerprint(path: str, state: Dict[str, Any], fields: Mapping[str, Any], allow: bool = False) -> None:
    """Refuse a checkpoint whose fingerprinted config fields differ from ``fields`` (unless ``allow``)."""
    if "fingerprint" not in state:
        return  # older format: nothing to compare (the load warned)
    try:
        saved = json.loads(state["fingerprint"])
    except (TypeError, ValueError):
        raise ValueError(f"checkpoint {path} has an unreadable fingerprint; it is damaged") from None
    current = json.loads(json.dumps(dict(fields)))
    diff = integrity.fingerprint_differences(saved, current)
    if not diff:
        return
    text = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
    if allow:
        log.warning("checkpoint %s was written under another model/SDE config (%s); loading it anyway as asked",
                    path, text)
        return
    raise ValueError(f"checkpoint {path} was written under another model/SDE config ({text}); use the config "
                     f"it was trained with, or allow the mismatch explicitly (allow_fingerprint_mismatch=True)")


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
    return int(load_checkpoint(path, verify=False)["step"])


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
