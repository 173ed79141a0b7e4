"""Import of score_sde_pytorch checkpoints (Song et al. 2021's PyTorch release).

Those checkpoints are ``{"model", "ema", "optimizer", "step"}``: ``model`` is a state dict
with a ``module.`` prefix (DataParallel) and flat ``all_modules.<i>.<...>`` names (NCSN++,
DDPM) or named attributes (NCSN: ``res1.0.conv1.weight``, ``refine1.crp.norms.0.embed.weight``); ``ema``
holds ``decay``, ``num_updates`` and ``shadow_params`` (the trainable parameters, in
``model.parameters()`` order; buffers such as ``sigmas`` and the fixed Fourier weights
``W`` are not among them).

Our networks register their parts in the original construction order, so our
``state_dict()`` lists the same tensors in the same order; the mapping pairs the two
ordered lists entry by entry, checking every shape and the kind of tensor (weight/bias).
Any mismatch raises a ValueError naming the first offending key and both shapes.

CLI::

    python -m score_sde.models.compat --config cfg.py --src checkpoint_26.pth --dst ours.pth [--which ema]
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from . import layers
from .ncsn import InstanceNormPlus

log = logging.getLogger(__name__)

_PREFIX = "module."
_LEAF_ALIASES = {"W": "weight", "b": "bias"}  # original NIN layers name their tensors W, b
_DERIVED_BUFFERS = ("sigmas",)                # recomputed from the config; optional in a source

# Our block part -> the original's attribute name inside the same block.  Used to pair tensors
# by name inside one original module (so the order of attributes inside a block may differ).
_ORIGINAL_PART_NAMES = {
    layers.ResnetBlock: {"norm1": "GroupNorm_0", "conv1": "Conv_0", "temb_proj": "Dense_0", "norm2": "GroupNorm_1",
                         "conv2": "Conv_1", "skip": "NIN_0"},
    layers.BigGANResnetBlock: {"norm1": "GroupNorm_0", "conv1": "Conv_0", "temb_proj": "Dense_0",
                               "norm2": "GroupNorm_1", "conv2": "Conv_1", "skip": "Conv_2"},
    layers.AttentionBlock: {"norm": "GroupNorm_0", "query": "NIN_0", "key": "NIN_1", "value": "NIN_2",
                            "proj_out": "NIN_3"},
    layers.Combine: {"conv": "Conv"},
    layers.GaussianFourierProjection: {},
}
_UNITS = tuple(_ORIGINAL_PART_NAMES) + (layers.Upsample, layers.Downsample, nn.Linear, nn.Conv2d, nn.GroupNorm,
                                        nn.Embedding, InstanceNormPlus)


def _leaf(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    return _LEAF_ALIASES.get(leaf, leaf)


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = _PREFIX) -> "OrderedDict[str, Any]":
    """Drop the DataParallel ``module.`` prefix where present (order kept)."""
    return OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in state_dict.items())


def _our_groups(model: nn.Module, with_buffers: bool) -> list[list[tuple[str, str, tuple]]]:
    """Our tensors grouped like the original's ``all_modules`` entries, in construction order.

    Each group is a list of (our key, the original's local name or None, shape).
    """
    groups: list[list[tuple[str, str, tuple]]] = []
    if with_buffers:
        groups += [[(name, name, tuple(buf.shape))] for name, buf in model.named_buffers(recurse=False)
                   if name in _DERIVED_BUFFERS]
    state = model.state_dict()
    seen: set[str] = set()
    for prefix, unit in model.named_modules():
        if not isinstance(unit, _UNITS) or any(prefix.startswith(p + ".") for p in seen):
            continue
        seen.add(prefix)
        table = _ORIGINAL_PART_NAMES.get(type(unit), None)
        group = []
        for local in unit.state_dict():
            part, leaf = local.rsplit(".", 1) if "." in local else ("", local)
            original = None
            if table is not None and (part in table or part == ""):
                original = (table[part] + "." if part else "") + leaf
            group.append((f"{prefix}.{local}", original, tuple(state[f"{prefix}.{local}"].shape)))
        if group:
            groups.append(group)
    return groups


def _source_groups(source_shapes: "Mapping[str, Any]") -> list[list[tuple[str, str, tuple]]]:
    """Original entries grouped by module, in order: (key, local name, shape).

    Flat models (NCSN++, DDPM) group by their ``all_modules.<i>`` entry; models with named
    attributes (NCSN's ``res1.0.conv1.weight``) by the module that owns the tensor.
    """
    groups: "OrderedDict[str, list]" = OrderedDict()
    for key, value in source_shapes.items():
        parts = key.split(".")
        if parts[0] == "all_modules":
            head, local = ".".join(parts[:2]), ".".join(parts[2:])
        else:
            head, local = (".".join(parts[:-1]), parts[-1]) if len(parts) > 1 else (key, key)
        groups.setdefault(head, []).append((key, local, tuple(getattr(value, "shape", value))))
    return list(groups.values())


def _pair_group(src: list, ours: list) -> list[tuple[tuple, tuple]]:
    """Pair one original module's tensors with ours: by name when all names agree, else in order."""
    def canonical(local: str) -> str:
        part, _, leaf = local.rpartition(".")
        return f"{part}.{_LEAF_ALIASES.get(leaf, leaf)}"

    by_name = {canonical(entry[1]): entry for entry in src}
    if len(src) == len(ours) and all(o[1] is not None and canonical(o[1]) in by_name for o in ours):
        return [(by_name[canonical(o[1])], o) for o in ours]
    pairs = list(zip(src, ours))
    if len(src) != len(ours):  # let the caller report the first entry without a partner
        pairs += [(s, None) for s in src[len(ours):]] + [(None, o) for o in ours[len(src):]]
    return pairs


def key_mapping(source_shapes: "Mapping[str, Any]", model: nn.Module) -> "OrderedDict[str, str]":
    """Map original key -> our key, in the original order; ``source_shapes`` maps keys to shapes or tensors.

    The original's modules and ours are paired in construction order; inside one module tensors
    are paired by name (or in order when names differ); shapes and kinds (weight/bias) must agree.
    """
    with_buffers = any(k in source_shapes for k in _DERIVED_BUFFERS)
    src_groups, our_groups = _source_groups(source_shapes), _our_groups(model, with_buffers)
    n_src, n_ours = sum(map(len, src_groups)), sum(map(len, our_groups))
    pairs = []
    for i in range(max(len(src_groups), len(our_groups))):
        src = src_groups[i] if i < len(src_groups) else []
        ours = our_groups[i] if i < len(our_groups) else []
        pairs += _pair_group(src, ours)
    mapping: "OrderedDict[str, str]" = OrderedDict()
    for s, o in pairs:
        if s is None:
            raise ValueError(f"checkpoint is missing an entry for our {o[0]} {list(o[2])} (it has {n_src} "
                             f"entries, the model needs {n_ours}); wrong config?")
        if o is None:
            raise ValueError(f"unexpected checkpoint entry {s[0]} {list(s[2])} (the model has only {n_ours} "
                             "entries); wrong config?")
        if s[2] != o[2] or _leaf(s[0]) != _leaf(o[0]):
            raise ValueError(f"checkpoint entry {s[0]} has shape {list(s[2])} but our {o[0]} has shape "
                             f"{list(o[2])}; the config does not match the checkpoint")
        mapping[s[0]] = o[0]
    return OrderedDict((k, mapping[k]) for k in source_shapes)


def _load_source(path_or_dict: Union[str, os.PathLike, Mapping[str, Any]]) -> Mapping[str, Any]:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    from ..checkpoint import safe_torch_load  # one-line errors, without torch's weights_only=False advice
    return safe_torch_load(str(path_or_dict), map_location="cpu")


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(k, p) for k, p in model.named_parameters() if p.requires_grad]


def convert_state(source: Mapping[str, Any], model: nn.Module) -> dict:
    """Original checkpoint dict -> our checkpoint dict {"model", "ema"?, "step"} (tensors on CPU)."""
    if "model" not in source:
        raise ValueError("not a score_sde_pytorch checkpoint: no 'model' entry (expected keys model, ema, step)")
    src_model = strip_prefix(source["model"])
    mapping = key_mapping(src_model, model)
    reference = model.state_dict()
    ours = {ok: src_model[sk].detach().to("cpu", reference[ok].dtype).clone() for sk, ok in mapping.items()}
    for name, value in reference.items():   # derived buffers the source did not carry
        ours.setdefault(name, value.detach().cpu().clone())
    out = {"model": OrderedDict((k, ours[k]) for k in reference), "step": int(source.get("step", 0))}
    if "ema" in source:
        out["ema"] = convert_ema(source["ema"], model, mapping)
    return out


def convert_ema(ema: Mapping[str, Any], model: nn.Module, mapping: "Mapping[str, str]") -> dict:
    """Reorder the original EMA (original trainable-parameter order) into our trainable-parameter order."""
    shadow = list(ema.get("shadow_params", []))
    trainable = OrderedDict(_trainable(model))
    src_trainable = [sk for sk, ok in mapping.items() if ok in trainable]
    if len(shadow) != len(src_trainable):
        raise ValueError(f"EMA has {len(shadow)} shadow parameters but the model has {len(src_trainable)} trainable "
                         "parameters; the config does not match the checkpoint")
    by_ours = {}
    for i, (sk, s) in enumerate(zip(src_trainable, shadow)):
        ok = mapping[sk]
        if tuple(s.shape) != tuple(trainable[ok].shape):
            raise ValueError(f"EMA shadow_params[{i}] has shape {list(s.shape)} but our {ok} (original {sk}) has "
                             f"shape {list(trainable[ok].shape)}; the config does not match the checkpoint")
        by_ours[ok] = s.detach().to("cpu", trainable[ok].dtype).clone()
    return {"decay": float(ema.get("decay", 0.999)), "num_updates": int(ema.get("num_updates") or 0),
            "shadow_params": [by_ours[name] for name in trainable]}


def apply_ema(state_dict: Mapping[str, torch.Tensor], ema: Mapping[str, Any], model: nn.Module) -> "OrderedDict":
    """A copy of ``state_dict`` with the trainable parameters replaced by the EMA shadow values."""
    out = OrderedDict(state_dict)
    for (name, _), s in zip(_trainable(model), ema["shadow_params"]):
        out[name] = s
    return out


def load_score_sde_pytorch(path_or_dict, model: nn.Module, which: str = "ema") -> dict:
    """Load a score_sde_pytorch checkpoint into ``model`` (``which``: 'ema' or 'model' weights).

    Returns our-format checkpoint dict {"model", "ema"?, "step"} of the raw (non-EMA) weights.
    """
    if which not in ("ema", "model"):
        raise ValueError(f"which={which!r}: choose 'ema' (averaged weights) or 'model' (raw weights)")
    converted = convert_state(_load_source(path_or_dict), model)
    weights = converted["model"]
    if which == "ema":
        if "ema" not in converted:
            raise ValueError("checkpoint has no 'ema' entry; use which='model'")
        weights = apply_ema(weights, converted["ema"], model)
    model.load_state_dict(weights, strict=True)
    return converted


def to_score_sde_pytorch(ours: Mapping[str, Any], model: nn.Module,
                         original_layout: "Mapping[str, Any]") -> dict:
    """Our checkpoint dict -> the original layout; ``original_layout`` maps the original keys, in order,
    to their shapes (e.g. the compat JSON's state_dict entries)."""
    mapping = key_mapping(OrderedDict(original_layout), model)
    state = ours["model"]
    out = {"model": OrderedDict((_PREFIX + sk, state[ok]) for sk, ok in mapping.items()),
           "step": int(ours.get("step", 0))}
    if "ema" in ours:
        by_ours = dict(zip([n for n, _ in _trainable(model)], ours["ema"]["shadow_params"]))
        out["ema"] = {"decay": ours["ema"]["decay"], "num_updates": ours["ema"]["num_updates"],
                      "shadow_params": [by_ours[ok] for ok in mapping.values() if ok in by_ours]}
    return out


def load_config(path: Union[str, os.PathLike]):
    """Run a config file's ``get_config()`` (score_sde_pytorch style) without absl flags."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    for parent in path.parents:  # make `import configs.default_...` work from the config's repository
        if parent.name == "configs":
            sys.path.insert(0, str(parent.parent))
            break
    spec = importlib.util.spec_from_file_location(f"_compat_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    return module.get_config()


def convert(src_path, config, dst_path, which: str = "model") -> dict:
    """Convert an original checkpoint to our format and save it to ``dst_path``.

    The output has "model" (raw weights, or the EMA weights when ``which='ema'``), "ema"
    (decay, num_updates, shadow_params in our trainable-parameters order) and "step", written in the
    current checkpoint format (score_sde.checkpoint: format version, checksum, and the config's
    fingerprint when the config is a complete score_sde config).
    """
    from . import get_model
    with torch.device("meta"):
        model = get_model(config)
    model = model.to_empty(device="cpu")
    for name, buf in model.named_buffers():  # derived buffers must hold real values
        buf.copy_(_derived_buffer(config, name, buf))
    converted = convert_state(_load_source(src_path), model)
    if which == "ema":
        if "ema" not in converted:
            raise ValueError("checkpoint has no 'ema' entry; use --which model")
        converted["model"] = apply_ema(converted["model"], converted["ema"], model)
    elif which != "model":
        raise ValueError(f"which={which!r}: choose 'ema' or 'model'")
    from .. import checkpoint
    dst = Path(dst_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_checkpoint(str(dst), converted, _fingerprint_or_none(config))
    return converted


def _fingerprint_or_none(config) -> Optional[dict]:
    """The fingerprinted fields of a complete config; None (no fingerprint written) for a partial one."""
    from ..pipeline.spec import as_spec
    from ..training import fingerprint_fields
    try:
        as_spec(config)
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        log.warning("config is not a complete score_sde config (%s); the converted checkpoint carries no "
                    "fingerprint", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    return fingerprint_fields(config)


def _derived_buffer(config, name: str, buf: torch.Tensor) -> torch.Tensor:
    if name == "sigmas":
        from .ncsnpp import get_sigmas
        return torch.tensor(get_sigmas(config), dtype=buf.dtype)
    raise ValueError(f"do not know how to compute buffer {name}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Convert a score_sde_pytorch checkpoint to score_sde's format.")
    parser.add_argument("--config", required=True, help="config file with get_config() (score_sde_pytorch style)")
    parser.add_argument("--src", required=True, help="original checkpoint (.pth)")
    parser.add_argument("--dst", required=True, help="output checkpoint (.pth)")
    parser.add_argument("--which", default="model", choices=("model", "ema"),
                        help="weights to store under 'model' (the 'ema' entry is always kept)")
    args = parser.parse_args(argv)
    out = convert(args.src, load_config(args.config), args.dst, which=args.which)
    print(f"wrote {args.dst}: {len(out['model'])} tensors, step {out['step']}, ema {'ema' in out}")


if __name__ == "__main__":
    main()
