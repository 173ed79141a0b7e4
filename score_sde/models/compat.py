"""Import of score_sde_pytorch checkpoints (Song et al. 2021's PyTorch release).

Those checkpoints are ``{"model", "ema", "optimizer", "step"}``: ``model`` is a state dict
with a ``module.`` prefix (DataParallel) and flat ``all_modules.<i>.<...>`` names; ``ema``
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
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Union

import torch
import torch.nn as nn

_PREFIX = "module."
_LEAF_ALIASES = {"W": "weight", "b": "bias"}  # original NIN layers name their tensors W, b
_DERIVED_BUFFERS = ("sigmas",)                # recomputed from the config; optional in a source


def _leaf(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    return _LEAF_ALIASES.get(leaf, leaf)


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = _PREFIX) -> "OrderedDict[str, Any]":
    """Drop the DataParallel ``module.`` prefix where present (order kept)."""
    return OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in state_dict.items())


def key_mapping(source_shapes: "Mapping[str, Any]", model: nn.Module) -> "OrderedDict[str, str]":
    """Ordered map original key -> our key; ``source_shapes`` maps original keys (in order) to shapes/tensors."""
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    if not any(k in source_shapes for k in _DERIVED_BUFFERS):
        ours = [(k, s) for k, s in ours if k not in _DERIVED_BUFFERS]
    src = [(k, tuple(getattr(v, "shape", v))) for k, v in source_shapes.items()]
    mapping: "OrderedDict[str, str]" = OrderedDict()
    for i in range(max(len(src), len(ours))):
        if i >= len(src):
            raise ValueError(f"checkpoint is missing an entry for our {ours[i][0]} {list(ours[i][1])} "
                             f"(it has {len(src)} entries, the model needs {len(ours)}); wrong config?")
        if i >= len(ours):
            raise ValueError(f"unexpected checkpoint entry {src[i][0]} {list(src[i][1])} (the model has only "
                             f"{len(ours)} entries); wrong config?")
        (sk, ss), (ok, os_) = src[i], ours[i]
        if ss != os_ or _leaf(sk) != _leaf(ok):
            raise ValueError(f"checkpoint entry {sk} has shape {list(ss)} but our {ok} has shape {list(os_)}; "
                             "the config does not match the checkpoint")
        mapping[sk] = ok
    return mapping


def _load_source(path_or_dict: Union[str, os.PathLike, Mapping[str, Any]]) -> Mapping[str, Any]:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    path = Path(path_or_dict)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file or one that needs pickled code
        raise ValueError(f"cannot read {path} as a weights-only torch checkpoint: {err}") from None


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(k, p) for k, p in model.named_parameters() if p.requires_grad]


def convert_state(source: Mapping[str, Any], model: nn.Module) -> dict:
    """Original checkpoint dict -> our checkpoint dict {"model", "ema"?, "step"} (tensors on CPU)."""
    if "model" not in source:
        raise ValueError("not a score_sde_pytorch checkpoint: no 'model' entry (expected keys model, ema, step)")
    src_model = strip_prefix(source["model"])
    mapping = key_mapping(src_model, model)
    ours = OrderedDict((ok, src_model[sk].detach().clone()) for sk, ok in mapping.items())
    for name, value in model.state_dict().items():   # derived buffers the source did not carry
        ours.setdefault(name, value.detach().cpu().clone())
    ours = OrderedDict((k, ours[k]) for k in model.state_dict())
    out = {"model": ours, "step": int(source.get("step", 0))}
    if "ema" in source:
        out["ema"] = convert_ema(source["ema"], model)
    return out


def convert_ema(ema: Mapping[str, Any], model: nn.Module) -> dict:
    """Check the original EMA against our trainable parameters (same order) and copy it."""
    shadow = list(ema.get("shadow_params", []))
    trainable = _trainable(model)
    if len(shadow) != len(trainable):
        raise ValueError(f"EMA has {len(shadow)} shadow parameters but the model has {len(trainable)} trainable "
                         "parameters; the config does not match the checkpoint")
    for i, ((name, p), s) in enumerate(zip(trainable, shadow)):
        if tuple(s.shape) != tuple(p.shape):
            raise ValueError(f"EMA shadow_params[{i}] has shape {list(s.shape)} but our {name} has shape "
                             f"{list(p.shape)}; the config does not match the checkpoint")
    return {"decay": float(ema.get("decay", 0.999)), "num_updates": int(ema.get("num_updates") or 0),
            "shadow_params": [s.detach().clone() for s in shadow]}


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


def to_score_sde_pytorch(ours: Mapping[str, Any], model: nn.Module, original_keys: list[str]) -> dict:
    """Our checkpoint dict -> the original layout, given the original key list in order (e.g. from the compat JSON)."""
    state = ours["model"]
    our_keys = list(state)
    if not any(k in original_keys for k in _DERIVED_BUFFERS):
        our_keys = [k for k in our_keys if k not in _DERIVED_BUFFERS]
    if len(our_keys) != len(original_keys):
        raise ValueError(f"{len(original_keys)} original keys given for {len(our_keys)} entries of ours")
    shapes = OrderedDict((sk, tuple(state[ok].shape)) for sk, ok in zip(original_keys, our_keys))
    mapping = key_mapping(shapes, model)  # checks counts, shapes against the model, and tensor kinds
    out = {"model": OrderedDict((_PREFIX + sk, state[ok]) for sk, ok in mapping.items()),
           "step": int(ours.get("step", 0))}
    if "ema" in ours:
        out["ema"] = {"decay": ours["ema"]["decay"], "num_updates": ours["ema"]["num_updates"],
                      "shadow_params": list(ours["ema"]["shadow_params"])}
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
    (decay, num_updates, shadow_params in our trainable-parameters order) and "step".
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
    dst = Path(dst_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(converted, tmp)
    os.replace(tmp, dst)
    return converted


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
