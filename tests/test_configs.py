"""Configs: every file loads, paper configs carry the published model fields, and every key is read.

"Read" is measured, not declared, wherever it can be: a tracking wrapper records the keys that a dry
build touches (training settings, SDE, model + EMA + optimizer on the meta device, the data set for
the embedded data, the sampler options). Two sections are checked against their owners' declarations:
data keys of CIFAR-10 / image folders (no files here) against datasets.CONFIG_KEYS, and eval.* keys
(read by evaluation.py only while evaluating) against the names evaluation.py reads.
"""
from __future__ import annotations

import glob
import importlib
import json
import os
import re
import sys

import ml_collections
import pytest
import torch

from score_sde import builders, datasets, losses, sampling, training

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
SWITCHED = {"model.fir_kernel": ("fir", True)}
EVALUATION_SOURCE = os.path.join(ROOT, "score_sde", "evaluation.py")


def load(name: str) -> ml_collections.ConfigDict:
    return importlib.import_module("configs." + name.replace("/", ".")).get_config()


def leaves(cfg, prefix: str = ""):
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key


class Tracked:
    """Read-only view of a ConfigDict that records the dotted keys read through it."""

    def __init__(self, cfg, seen: set, prefix: str = ""):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_seen", seen)
        object.__setattr__(self, "_prefix", prefix)

    def _wrap(self, key, value):
        if isinstance(value, ml_collections.ConfigDict):
            return Tracked(value, self._seen, f"{self._prefix}{key}.")
        self._seen.add(self._prefix + key)
        return value

    def __getattr__(self, key):
        if key.startswith("__"):
            raise AttributeError(key)
        if key not in self._cfg:
            raise AttributeError(key)
        return self._wrap(key, self._cfg[key])

    __getitem__ = __getattr__

    def get(self, key, default=None):
        return self._wrap(key, self._cfg[key]) if key in self._cfg else default

    def __contains__(self, key):
        return key in self._cfg

    def keys(self):
        return self._cfg.keys()

    def to_json_best_effort(self):
        return self._cfg.to_json_best_effort()


def consumed_keys(config) -> set:
    """Keys read by a dry build of everything training, sampling and evaluation construct."""
    seen: set = set()
    cfg = Tracked(config, seen)
    training.read_settings(cfg)
    with torch.device("meta"):
        builders.create_state(cfg, torch.device("meta"))
    losses.optimization_manager(cfg.optim)
    builders.data_shape(cfg)
    if str(config.data.dataset) in datasets.TOY_DATASETS + ("digits",):
        datasets.get_dataset(cfg)
        datasets.get_data_scaler(cfg)
    from score_sde.evaluation import sampler_settings
    sampler_settings(cfg, builders.sde_from_config(config))
    return seen


def test_every_config_is_found_and_loads():
    assert len(CONFIG_FILES) >= 15, CONFIG_FILES
    for name in CONFIG_FILES:
        config = load(name)
        assert isinstance(config, ml_collections.ConfigDict), name
        training.read_settings(config)  # sane training section
        builders.sde_from_config(config)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_leaf_key_is_read(name):
    config = load(name)
    seen = consumed_keys(config)
    sampler_keys = {o for n in sampling.SAMPLERS for o in sampling.sampler_options(n)}
    assert sampler_keys, "no sampler registered"
    evaluation_src = open(EVALUATION_SOURCE).read()
    unread = []
    for key in leaves(config):
        section, _, field = key.partition(".")
        if key in seen:
            continue
        if key in SWITCHED:
            switched = ml_collections.ConfigDict(config.to_dict())
            switch, value = SWITCHED[key]
            switched[section][switch] = value
            if key in consumed_keys(switched):
                continue
        if section == "sampling" and field in sampler_keys:  # read when that sampler is chosen
            continue
        if section == "data" and key in datasets.CONFIG_KEYS and config.data.dataset in ("cifar10", "image_folder"):
            continue  # the data set needs files that this test does not have
        if section == "eval" and re.search(rf"[\"'.]{field}\b", evaluation_src):
            continue  # read by evaluation.py in eval/sample mode
        unread.append(key)
    assert not unread, f"{name}: keys nothing reads: {unread}"


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
