"""The typed spec and the user surface: overrides, sampler options, eval range, score_sde.load."""
from __future__ import annotations

import importlib
import json
import math
import os

import pytest
import torch

import main
import score_sde
from score_sde import builders, checkpoint, evaluation, likelihood, sampling, training
from score_sde.pipeline import spec as spec_lib
from score_sde.pipeline.spec import Spec, sampler_defaults, sampler_option_types

DIGITS = "configs.vp.digits_ddpmpp_continuous"
TOY = "configs.vp.toy_mlp_continuous"


def spec_of(module: str, *args: str) -> Spec:
    """The spec main.py builds from a config file and command-line overrides `args`."""
    rest, taken = main.split_overrides(list(args))
    assert rest == [], rest  # every override here is one the spec applies
    return Spec.from_config(importlib.import_module(module).get_config(), overrides=taken)


# ---------------------------------------------------------------------------------------------- overrides
def test_ode_override_with_tolerances_drops_the_file_steps():
    spec = spec_of(DIGITS, "--config.sampling.method=ode", "--config.sampling.rtol=1e-3",
                   "--config.sampling.atol=1e-3")
    assert spec.sampling.method == "ode"
    assert spec.sampling.options["rtol"] == 1e-3 and spec.sampling.options["atol"] == 1e-3
    assert "steps" not in spec.sampling.options  # the file's steps=20 belongs to its unipc
    assert spec_of(DIGITS).sampling.options["steps"] == 20


def test_none_resets_an_option_to_the_sampler_default():
    spec = spec_of(DIGITS, "--config.sampling.steps=None")
    assert spec.sampling.method == "unipc" and "steps" not in spec.sampling.options
    settings = evaluation.sampler_settings(spec)[1]
    assert settings["steps"] == sampler_defaults("unipc")["steps"]


def test_every_sampler_option_is_a_typed_field():
    types = sampler_option_types()
    for name in sampling.SAMPLERS:
        for option in sampling.sampler_options(name):
            if option not in ("device", "dtype", "progress"):
                assert types[option] in (bool, int, float, str), (name, option)


def test_sigma_max_override_for_heun_and_error_for_a_sampler_without_it():
    spec = spec_of(DIGITS, "--config.sampling.method=heun", "--config.sampling.sigma_max=20")
    assert spec.sampling.options["sigma_max"] == 20.0
    with pytest.raises(ValueError, match=r"sampler 'ddim' does not take option\(s\) \['sigma_max'\]; its options"):
        spec_of(DIGITS, "--config.sampling.method=ddim", "--config.sampling.sigma_max=20")


def test_bad_values_and_fields_are_one_line_errors():
    with pytest.raises(ValueError, match="steps='ten' is not an integer"):
        spec_of(DIGITS, "--config.sampling.steps=ten")
    with pytest.raises(ValueError, match="is not a sampler; choose one of"):
        spec_of(DIGITS, "--config.sampling.method=nope")
    config = importlib.import_module(DIGITS).get_config()
    config.sampling.stepz = 3
    with pytest.raises(ValueError, match=r"field\(s\) \['stepz'\] that no sampler takes"):
        Spec.from_config(config)
    assert spec_of(DIGITS, "--config.seed=7", "--config.device=cpu").seed == 7
    with pytest.raises(ValueError, match="--config.seed='x' is not an integer"):
        spec_of(DIGITS, "--config.seed=x")
    with pytest.raises(ValueError, match="config.training.n_iters must be a positive integer"):
        spec_of(DIGITS, "--config.training.n_iters=0")


def test_prediction_v_on_the_vp_toy_config():
    spec = spec_of(TOY, "--config.model.prediction=v")
    assert spec.model.prediction == "v"
    model = builders.build_model(spec, torch.device("cpu"))
    assert model.prediction == "v"
    with pytest.raises(ValueError, match="prediction='w'; choose one of"):
        spec_of(TOY, "--config.model.prediction=w")


def test_switching_method_keeps_the_file_options_of_other_samplers():
    spec = spec_of(DIGITS)  # unipc config that also sets pc's predictor/corrector
    pc = spec.sampling.with_options("pc")
    assert pc.options["predictor"] == "euler_maruyama" and pc.options["corrector"] == "none"
    assert "steps" not in pc.options  # unipc's steps=20 stays with unipc
    assert Spec.from_config(spec.to_json()).sampling.with_options("pc") == pc


def test_spec_round_trips_through_json():
    spec = spec_of(DIGITS, "--config.sampling.method=heun", "--config.sampling.sigma_max=20")
    again = Spec.from_config(spec.to_json())
    assert again == spec


# ---------------------------------------------------------------------------------------------- train -> eval -> load
def tiny_toy(tmp_path, *args: str) -> Spec:
    return spec_of(TOY, "--config.training.n_iters=3", "--config.training.snapshot_freq=3",
                   "--config.training.snapshot_sampling=False", "--config.training.batch_size=32",
                   "--config.data.num_train=64", "--config.data.num_eval=40", "--config.eval.batch_size=20",
                   "--config.eval.num_samples=20", "--config.eval.enable_loss=False",
                   "--config.eval.bpd_num_batches=1", "--config.sampling.method=ddim",
                   "--config.sampling.steps=5", "--config.device=cpu", *args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("spec_wd"))
    spec = tiny_toy(wd)
    training.train(spec, wd, progress=False)
    return wd, spec


def test_eval_right_after_a_short_train_takes_the_newest_checkpoint(trained):
    wd, spec = trained
    assert spec.eval.steps_range is None
    evaluation.evaluate(spec.replace(eval={"num_reference": 40, "enable_bpd": False}), wd)
    folder = os.path.join(wd, "eval", "ckpt_3")
    (sampler,) = os.listdir(folder)
    report = json.load(open(os.path.join(folder, sampler, "report.json")))
    assert report["checkpoint_step"] == 3 and report["sampler"] == "ddim" and report["options"]["steps"] == 5
    # an explicit range (training steps) still works; one with no checkpoint is a clear error
    assert evaluation.checkpoints_in_range(wd, (0, 3))[0][0] == 3
    with pytest.raises(FileNotFoundError, match=r"no checkpoint with training step in \[4, None\]"):
        evaluation.checkpoints_in_range(wd, (4, None))


def test_load_sample_and_nll(trained):
    wd, spec = trained
    exp = score_sde.load(wd)
    assert exp.step == 3 and exp.spec == spec  # the spec comes from the checkpoint
    ckpt = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(wd))
    for p, shadow in zip(exp.model.parameters(), ckpt["ema"]["shadow_params"]):
        assert torch.equal(p.detach(), shadow)  # EMA weights by default

    x = exp.sample(6, method="dpm_solver", steps=4)
    assert x.shape == (6, 2) and torch.isfinite(x).all()
    assert torch.equal(exp.sample(6, method="dpm_solver", steps=4), x)  # seeded by the spec's seed
    with pytest.raises(ValueError, match="sampler 'dpm_solver' does not take option"):
        exp.sample(2, method="dpm_solver", eta=0.5)

    x, tol = x[:2], dict(rtol=1e-3, atol=1e-3)
    nll = exp.nll(x, **tol)
    direct = likelihood.get_likelihood_fn(exp.sde, trace="exact", **tol)(exp.score_fn, x)[0]
    assert nll.shape == (2,) and torch.allclose(nll, direct)
    bpd = exp.bits_per_dim(x, **tol)  # toy data: model space is data space
    assert torch.allclose(bpd, nll.double() / (2 * math.log(2.0)))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        score_sde.load(str(tmp_path))


def test_command_line_ode_with_tolerances_and_none_steps(trained, tmp_path):
    """The README's override through main.py itself: method switched, tolerances set, steps reset."""
    import subprocess
    import sys
    wd, _ = trained
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, os.path.join(root, "main.py"), "--config", "configs/vp/toy_mlp_continuous.py",
         f"--workdir={wd}", "--mode=sample", "--eval_folder=cli", "--noprogress", "--config.device=cpu",
         "--config.eval.num_samples=2", "--config.eval.batch_size=2", "--config.sampling.method=ode",
         "--config.sampling.rtol=1e-3", "--config.sampling.atol=1e-3", "--config.sampling.steps=None"],
        cwd=root, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    (folder,) = os.listdir(os.path.join(wd, "cli", "sample_3"))
    report = json.load(open(os.path.join(wd, "cli", "sample_3", folder, "report.json")))
    assert report["sampler"] == "ode" and report["options"]["rtol"] == 1e-3 and report["options"]["steps"] is None


def test_a_nested_section_is_one_dataclass_away():
    """How later issues extend the spec: a frozen Section inside a section (eval.likelihood), settable by path."""
    spec = spec_of(DIGITS, "--config.eval.likelihood.rtol=1e-3")
    assert spec.eval.likelihood == spec_lib.LikelihoodSpec(rtol=1e-3, trace="hutchinson-rademacher")
    assert Spec.from_config(spec.to_json()).eval.likelihood.rtol == 1e-3
    with pytest.raises(ValueError, match=r"config.eval.likelihood has unknown field\(s\) \['rtl'\]"):
        Spec.from_config({"eval": {"likelihood": {"rtl": 1.0}}})
