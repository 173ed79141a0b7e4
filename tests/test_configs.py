"""Configs: every file loads, paper configs carry the published model fields, unknown keys are errors.

The spec rejects an unknown key in every fixed section (naming the section and its valid fields).
model.* architecture fields are open by design (each model reads its own), so for them "read" is
measured: building each config's model on the meta device must read every architecture field it sets.
"""
from __future__ import annotations

import glob
import importlib
import json
import os
import sys

import ml_collections
import pytest
import torch

from score_sde import builders, training
from score_sde.pipeline.spec import Spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CONFIG_FILES = sorted(os.path.relpath(p, os.path.join(ROOT, "configs"))[:-3]
                      for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
                      if "default_" not in os.path.basename(p) and not p.endswith("__init__.py"))
COMPAT_DIR = os.environ.get("SCORE_SDE_COMPAT_DIR", os.path.join(ROOT, "tests", "data", "compat"))
# keys of a published model_config that our config leaves out, because the named model never reads them
UNREAD_PUBLISHED = {"ddpm": {"embedding_type"}, "ncsn": {"embedding_type", "dropout"}}
SDE_ONLY = {"vesde": {"beta_min", "beta_max"}}
# keys read only when another key switches them on: checked by flipping the switch and tracking again
SWITCHED = {"fir_kernel": ("fir", True)}


def load(name: str) -> ml_collections.ConfigDict:
    return importlib.import_module("configs." + name.replace("/", ".")).get_config()


class ReadArch(dict):
    """A model's architecture fields that record which ones the model constructor reads."""

    def __init__(self, items, seen: set):
        super().__init__(items)
        self.seen = seen

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)


def arch_keys_read(config) -> set:
    """The model.* architecture fields that building the config's model (on the meta device) reads."""
    spec = Spec.from_config(config)
    seen: set = set()
    object.__setattr__(spec.model, "arch", ReadArch(spec.model.arch, seen))
    with torch.device("meta"):
        builders.build_model(spec, torch.device("meta"))
    return seen


def test_every_config_is_found_and_loads():
    assert len(CONFIG_FILES) >= 15, CONFIG_FILES
    for name in CONFIG_FILES:
        config = load(name)
        assert isinstance(config, ml_collections.ConfigDict), name
        training.read_settings(config)  # sane training section
        builders.sde_from_config(config)


@pytest.mark.parametrize("section", ["top", "data", "training", "optim", "sampling", "eval"])
def test_spec_rejects_unknown_keys_naming_section_and_valid_fields(section):
    config = load("vp/digits_ddpmpp_continuous")
    if section == "top":
        config.bogus_key = 1
        pattern = r"config has unknown top-level key\(s\) \['bogus_key'\]; valid keys: \[.*'eval'.*'seed'"
    else:
        config[section].bogus_key = 1
        pattern = (r"config\.sampling has field\(s\) \['bogus_key'\] that no sampler takes; sampler options are \[.*'steps'"
                   if section == "sampling" else
                   rf"config\.{section} has unknown field\(s\) \['bogus_key'\]; valid fields: \[.*'{_a_field(section)}'")
    with pytest.raises(ValueError, match=pattern):
        Spec.from_config(config)


def _a_field(section: str) -> str:
    return {"data": "dataset", "training": "n_iters", "optim": "lr", "eval": "batch_size"}[section]


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_model_architecture_field_is_read(name):
    """model.* fields outside ModelSpec are architecture fields, open by design (each model reads its
    own): every one a config file sets must be read by the model it names (measured on the meta device)."""
    config = load(name)
    spec = Spec.from_config(config)
    read = arch_keys_read(config)
    for key, (switch, value) in SWITCHED.items():  # read only when a switch turns them on
        switched = ml_collections.ConfigDict(config.to_dict())
        switched.model[switch] = value
        read |= arch_keys_read(switched) & {key}
    unread = sorted(set(spec.model.arch) - read)
    assert not unread, f"{name}: model fields the model {spec.model.name!r} never reads: {unread}"


def _published(name: str):
    path = os.path.join(COMPAT_DIR, name.replace("/", "__") + ".json")
    return json.load(open(path)) if os.path.isfile(path) else None


@pytest.mark.parametrize("name", [n for n in CONFIG_FILES if _published(n)])
def test_paper_configs_match_published_model_fields(name):
    config, layout = load(name), _published(name)
    ours = config.model.to_dict()
    theirs = layout["model_config"]
    skip = UNREAD_PUBLISHED.get(ours["name"], set()) | SDE_ONLY.get(config.training.sde, set())
    for key, value in theirs.items():
        if key in skip:
            assert key not in ours, (name, key)
            continue
        mine = ours[key]
        mine = list(mine) if isinstance(mine, tuple) else mine
        assert mine == value, (name, key, mine, value)
    assert set(ours) <= set(theirs), (name, set(ours) - set(theirs))
    with torch.device("meta"):
        model = builders.build_model(config, torch.device("meta"))
    assert sum(p.numel() for p in model.parameters()) == layout["n_params"], name


def test_paper_configs_exist_for_every_published_layout():
    names = {os.path.basename(p)[:-5].replace("__", "/") for p in glob.glob(os.path.join(COMPAT_DIR, "*.json"))}
    assert names and names <= set(CONFIG_FILES), names - set(CONFIG_FILES)


def test_unknown_model_name_lists_registered_models():
    config = load("vp/digits_ddpmpp_continuous")
    config.model.name = "ncsnv2_128"
    with pytest.raises(ValueError, match=r"unknown model.name 'ncsnv2_128'; registered models: \[.*'ncsnpp'"):
        builders.build_model(config, torch.device("cpu"))


def test_loss_kind_and_sde_follow_the_config():
    assert builders.loss_kind(load("vp/ddpm/digits")) == "ddpm"
    assert builders.loss_kind(load("ve/ncsn/digits")) == "smld"
    assert builders.loss_kind(load("vp/digits_ddpmpp_continuous")) == "dsm"
    sde = builders.sde_from_config(load("ve/ncsn/cifar10"))
    assert (sde.N, float(sde.discrete_sigmas[-1]), float(sde.discrete_sigmas[0])) == (232, pytest.approx(50.0), pytest.approx(0.01))
    with pytest.raises(ValueError, match="unknown training.sde 'vp'"):
        config = load("vp/ddpm/digits")
        config.training.sde = "vp"
        builders.sde_from_config(config)
