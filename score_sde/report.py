"""Evaluation reports on disk: JSON-safe settings, short option hashes, atomic writes, resume checks.

A report file is written last, after every file it describes, so its presence marks finished work.
Work is skipped when a report exists and records the same settings as the current request.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from .atomic import atomic_write


def jsonable(value: Any) -> Any:
    """Plain JSON types for config values, numpy/torch scalars, dtypes and devices."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan; keep it readable
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def options_tag(options: Mapping[str, Any], length: int = 8) -> str:
    """Short stable hash of sampler options: a changed option gives a different output folder."""
    text = json.dumps(jsonable(options), sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]


def write_json(path: str, payload: Mapping[str, Any]) -> str:
    """Write `payload` atomically (temp file in the same folder, then os.replace)."""
    with atomic_write(path, "w") as f:
        json.dump(jsonable(payload), f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """The report at `path`, or None when it is absent or unreadable (an interrupted write)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_done(path: str, settings: Mapping[str, Any]) -> bool:
    """True when the report at `path` exists and was produced with exactly `settings`."""
    report = read_json(path)
    return report is not None and report.get("settings") == jsonable(settings)


def save_npz(path: str, **arrays: np.ndarray) -> str:
    """np.savez through a temp file, so a crash never leaves a truncated samples.npz."""
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)
    return path
