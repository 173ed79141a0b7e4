"""Helpers for tests: ConfigDicts built from the score_sde_pytorch layout files in /work/shared/compat."""
from __future__ import annotations

import json
import os
from pathlib import Path

import ml_collections

COMPAT_DIR = Path(os.environ.get("SCORE_SDE_COMPAT_DIR", "/work/shared/compat"))
LAYOUTS = sorted(p.stem for p in COMPAT_DIR.glob("*.json"))


def load_layout(name: str) -> dict:
    return json.loads((COMPAT_DIR / f"{name}.json").read_text())


def config_for(name: str) -> ml_collections.ConfigDict:
    """The model config of a layout plus its data/training settings (CIFAR-10 32x32x3, CelebA-HQ 256x256x3)."""
    layout = load_layout(name)
    sde = name.split("__")[0]
    return ml_collections.ConfigDict({
        "model": dict(layout["model_config"]),
        "data": {"image_size": 256 if "celebahq" in name else 32, "num_channels": 3, "centered": sde != "ve"},
        "training": {"continuous": True, "sde": {"vp": "vpsde", "subvp": "subvpsde", "ve": "vesde"}[sde]},
    })
