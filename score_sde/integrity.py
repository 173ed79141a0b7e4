"""What makes a checkpoint trustworthy: a fingerprint of the config that defines it, a checksum of its
contents, and only finite numbers in it (docs/reliability.md).

All functions work on plain data (nested dicts, lists, tensors); none reads a ConfigDict.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch

# Config fields (section.name) that define the function the network computes and the SDE it was
# trained for. A checkpoint resumed or evaluated under other values would load (same shapes) and
# silently compute something else. Not included, because they may legitimately change between runs
# on one checkpoint: optimizer, data set and batch, dropout, EMA rate, sampler and evaluation settings.
FINGERPRINT_FIELDS = (
    "training.sde", "training.continuous",
    "model.name", "model.prediction", "model.beta_min", "model.beta_max", "model.sigma_min",
    "model.sigma_max", "model.num_scales", "model.scale_by_sigma", "model.embedding_type",
    "model.fourier_scale", "model.nonlinearity", "model.conditional", "model.nf", "model.ch_mult",
    "model.num_res_blocks", "model.attn_resolutions", "model.hidden_dims", "model.embedding_dim",
    "data.centered", "data.num_channels", "data.image_size", "data.dim",
    "model.preconditioning", "model.sigma_data",  # issue 12 (p4edm): EDM's F means nothing without its D
)


# ---------------------------------------------------------------------------------- fingerprint
def fingerprint_fields(plain: Mapping[str, Any], names: Tuple[str, ...] = FINGERPRINT_FIELDS) -> Dict[str, Any]:
    """The fingerprinted fields of a plain nested dict (e.g. a config's JSON): {"section.name": value}.

    Fields absent (or None) in `plain` are left out, so configs that predate a field still match."""
    out: Dict[str, Any] = {}
    for dotted in names:
        node: Any = plain
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            out[dotted] = json.loads(json.dumps(node))  # tuples -> lists: equal after a JSON round trip
    return out


def fingerprint(fields: Mapping[str, Any]) -> str:
    """A short stable digest of the fields (canonical JSON, SHA-256)."""
    text = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
    """'field: <saved> (checkpoint) vs <current> (config)' for every field set on both sides whose values
    differ, in FINGERPRINT_FIELDS order. A field set on one side only (a config predating it, or a
    model/SDE that has no such field) is not compared: a different SDE shows in training.sde."""
    order = {name: i for i, name in enumerate(FINGERPRINT_FIELDS)}
    both = sorted(set(saved) & set(current), key=lambda k: (order.get(k, len(order)), k))
    return [f"{k}: {saved[k]!r} (checkpoint) vs {current[k]!r} (config)" for k in both
            if not _same(saved[k], current[k])]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


# ---------------------------------------------------------------------------------- checksum
def _leaves(obj: Any, path: str = "") -> Iterator[Tuple[str, Any]]:
    """(path, leaf) pairs in a canonical order: dict keys sorted by their string form."""
    if isinstance(obj, Mapping):
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            yield from _leaves(obj[key], f"{path}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _leaves(item, f"{path}[{i}]")
    else:
        yield path, obj


def checksum(state: Mapping[str, Any], skip: Tuple[str, ...] = ("checksum",)) -> str:
    """SHA-256 over every entry of a checkpoint dict (except `skip`): tensor dtype, shape and bytes,
    the repr of other values. Any flipped byte in tensor data changes it."""
    h = hashlib.sha256()
    for path, leaf in _leaves({k: v for k, v in state.items() if k not in skip}):
        h.update(path.encode())
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(f"{type(leaf).__name__}:{leaf!r}".encode())
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------------- finiteness
def float_tensors(obj: Any, prefix: str = "") -> List[Tuple[str, torch.Tensor]]:
    """(path, tensor) of every floating-point tensor in a nested structure."""
    return [(p, t) for p, t in _leaves(obj, prefix) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def first_nonfinite(named: List[Tuple[str, torch.Tensor]]) -> Optional[str]:
    """Path of the first tensor holding inf or NaN, or None. One fused max-|x| per device/dtype group
    and one host sync: cheap enough to run after every optimizer step."""
    tensors = [t.detach() for _, t in named if t.numel()]
    if not tensors:
        return None
    peaks = torch._foreach_norm(tensors, float("inf"))  # max |x|: inf for an inf, nan for a nan
    by_device: Dict[torch.device, List[torch.Tensor]] = {}
    for p in peaks:
        by_device.setdefault(p.device, []).append(p.float())
    if all(bool(torch.stack(ps).isfinite().all()) for ps in by_device.values()):
        return None
    for (path, t) in ((p, t) for p, t in named if t.numel()):
        if not bool(torch.isfinite(t).all()):
            return path
    return None
