"""Issue 12 wiring: eval.likelihood reaches the ODE likelihood, --mode eval writes the DDPM bound, the objective
fields reach losses.get_step_fn, and invalid combinations fail at spec construction with one line."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

import score_sde
from score_sde import builders, checkpoint, evaluation, likelihood, losses
from score_sde.pipeline.spec import LikelihoodSpec, Spec, step_options


def tiny(continuous: bool = False, **sections) -> dict:
    """A 2-D toy VP config: discrete (20 levels) by default, so the DDPM bound applies; float64 is not needed."""
    c = {"seed": 0, "device": "cpu",
         "training": dict(sde="vpsde", continuous=continuous, reduce_mean=True, precision="fp32"),
         "data": dict(dataset="toy_ring", dim=2, centered=False, num_train=64, num_eval=8, num_levels=None,
                      uniform_dequantization=False, random_flip=False),
         "model": dict(name="mlp", hidden_dims=(16,), embedding_dim=8, ema_rate=0.9, num_scales=20, beta_max=10.0,
                       embedding_type="positional"),
         "eval": dict(begin_ckpt=None, end_ckpt=None, batch_size=4, enable_loss=False, enable_bpd=True,
                      enable_sampling=False, bpd_num_batches=1, progress=False,
                      likelihood=dict(trace="exact", rtol=1e-3, atol=1e-3))}
    for name, fields in sections.items():
        c[name] = {**c.get(name, {}), **fields}
    return c


def _checkpointed(tmp_path, config: dict) -> str:
    torch.manual_seed(0)
    state = builders.create_state(config, torch.device("cpu"))
    ckpt = dict(builders.state_dict_for_checkpoint(dict(state, step=3)), config=Spec.from_config(config).to_json())
    checkpoint.save_checkpoint(checkpoint.checkpoint_path(str(tmp_path), 3), ckpt)
    return str(tmp_path)


def _recording(monkeypatch):
    """Wrap likelihood.get_likelihood_fn: record its keyword arguments, run it unchanged."""
    calls, real = [], likelihood.get_likelihood_fn

    def fake(sde, **kwargs):
        calls.append(kwargs)
        return real(sde, **kwargs)
    monkeypatch.setattr(likelihood, "get_likelihood_fn", fake)
    return calls


def test_eval_writes_the_ddpm_bound_next_to_the_ode_bits_per_dim(tmp_path, monkeypatch):
    config = tiny(eval=dict(enable_vlb=True, bpd_num_repeats=2, likelihood=dict(trace="exact", eps=1e-3,
                                                                                  rtol=1e-3, atol=1e-3)))
    workdir = _checkpointed(tmp_path, config)
    calls = _recording(monkeypatch)
    evaluation.evaluate(config, workdir)
    folder = os.path.join(workdir, "eval", "ckpt_3")
    bpd, vlb = (json.load(open(os.path.join(folder, f))) for f in ("bpd.json", "vlb.json"))
    assert calls and calls[0]["eps"] == 1e-3 and calls[0]["trace"] == "exact"      # eval.likelihood reached it
    assert bpd["settings"]["likelihood"]["eps"] == 1e-3 and bpd["num_repeats"] == 2
    assert len(bpd["bits_per_dim_passes"]) == 2
    assert math.isclose(bpd["bits_per_dim"], sum(bpd["bits_per_dim_passes"]) / 2, rel_tol=1e-12)
    parts = sum(vlb[f"{k}_nats"] for k in ("prior", "diffusion", "decoder"))
    assert math.isclose(vlb["total_nats"], parts, rel_tol=1e-6)  # float32 terms
    assert math.isclose(vlb["bits_per_dim"], vlb["total_nats"] / (2 * math.log(2)), rel_tol=1e-9)
    assert vlb["variance"] == "beta" and vlb["decoder"] == "gaussian" and vlb["nfe"] == 20
    assert math.isfinite(vlb["bits_per_dim"]) and vlb["num_examples"] == 4


def test_load_takes_its_nll_defaults_from_eval_likelihood(tmp_path, monkeypatch):
    workdir = _checkpointed(tmp_path, tiny(eval=dict(likelihood=dict(trace="exact", eps=1e-3, rtol=1e-3,
                                                                     atol=1e-3))))
    exp = score_sde.load(workdir)
    calls = _recording(monkeypatch)
    x = torch.zeros(2, 2)
    exp.nll(x)
    exp.nll(x, eps=1e-2, trace="hutchinson-gaussian", nodes=64)
    assert (calls[0]["eps"], calls[0]["trace"], calls[0]["rtol"], calls[0]["nodes"]) == (1e-3, "exact", 1e-3, None)
    assert (calls[1]["eps"], calls[1]["trace"], calls[1]["nodes"]) == (1e-2, "hutchinson-gaussian", 64)


def test_bpd_trace_is_an_alias_of_eval_likelihood_trace():
    spec = Spec.from_config(tiny(eval=dict(bpd_trace="hutchinson-gaussian", likelihood={})))
    assert spec.eval.likelihood.trace == "hutchinson-gaussian" and spec.eval.bpd_trace is None
    assert Spec.from_config(spec.to_json()) == spec
    with pytest.raises(ValueError, match="contradicts config.eval.likelihood.trace='exact'; set only"):
        Spec.from_config(tiny(eval=dict(bpd_trace="hutchinson-gaussian")))
    assert LikelihoodSpec(backend="torchdiffeq").options()["method"] == "dopri5"


@pytest.mark.parametrize("sections, message", [
    (dict(eval=dict(enable_vlb=True), training=dict(continuous=True)), "eval.enable_vlb computes the DDPM bound"),
    (dict(eval=dict(enable_vlb=True), training=dict(sde="vesde")), "eval.enable_vlb computes the DDPM bound"),
    (dict(model=dict(learned_variance=True), training=dict(continuous=True)), "model.learned_variance trains"),
    (dict(training=dict(weighting="likelihood")), "need continuous time; set training.continuous=True"),
    (dict(training=dict(time_sampling="importance")), "need continuous time"),
    (dict(training=dict(continuous=True, likelihood_weighting=True, weighting="v")), "contradicts training.weighting"),
    (dict(training=dict(weighting="snr")), r"config.training.weighting='snr'; choose one of"),
    (dict(training=dict(time_sampling="beta")), r"config.training.time_sampling='beta'; choose one of"),
    (dict(eval=dict(vlb_variance="learned")), "needs a network with learned variances"),
    (dict(eval=dict(likelihood=dict(eps=0.0))), "eval.likelihood.eps must be in"),
    (dict(eval=dict(likelihood=dict(backend="jax"))), r"eval.likelihood.backend='jax'"),
    (dict(eval=dict(bpd_num_repeats=0)), "bpd_num_repeats must be a positive integer"),
    (dict(eval=dict(likelihood=dict(nodes=0))), "eval.likelihood.nodes must be a positive integer"),
])
def test_invalid_combinations_fail_with_one_line(sections, message):
    with pytest.raises(ValueError, match=message) as err:
        Spec.from_config(tiny(**sections))
    assert "\n" not in str(err.value)


def test_objective_fields_reach_the_step_function():
    spec = Spec.from_config(tiny(continuous=True, training=dict(weighting="likelihood", time_sampling="importance")))
    opts = step_options(spec)
    assert (opts["weighting"], opts["time_sampling"], opts["kind"]) == ("likelihood", "importance", "dsm")
    spec = Spec.from_config(tiny(model=dict(learned_variance=True), training=dict(hybrid_lambda=0.01),
                                 eval=dict(enable_vlb=True)))
    opts = step_options(spec)
    assert opts["learned_variance"] and opts["vlb_weight"] == 0.01 and opts["kind"] == "ddpm"
    torch.manual_seed(0)
    state = builders.create_state(spec, torch.device("cpu"))
    assert state["model"].out.out_features == 4              # (prediction, variance) per dimension
    step = losses.get_step_fn(builders.sde_from_config(spec), train=True,
                              optimize_fn=losses.optimization_manager(spec.optim), **opts)
    x = torch.randn(16, 2)
    assert math.isfinite(step(state, x)["loss"])
    score_fn = builders.score_fn_from_model(spec, builders.sde_from_config(spec), state["model"])
    assert score_fn(x, torch.full((16,), 0.5)).shape == x.shape      # samplers and the ODE see the prediction


def test_importance_weighted_dequantization_reaches_bits_per_dim(tmp_path):
    """K draws of a toy point (no dequantization noise) with an exact trace: the bound equals one draw's;
    the draws are in the report and its cache key; a noisy joint trace is refused."""
    reports = {}
    for k in (1, 3):
        config = tiny(eval=dict(bpd_dequant_samples=k))
        workdir = _checkpointed(tmp_path / f"k{k}", config)
        evaluation.evaluate(config, workdir)
        reports[k] = json.load(open(os.path.join(workdir, "eval", "ckpt_3", "bpd.json")))
    assert math.isclose(reports[3]["bits_per_dim"], reports[1]["bits_per_dim"], rel_tol=1e-9)
    assert reports[3]["dequant_samples"] == 3 and reports[3]["settings"]["dequant_samples"] == 3
    assert "dequant_samples" not in reports[1]["settings"]
    with pytest.raises(ValueError, match="bpd_dequant_samples > 1 needs a low-noise trace"):
        Spec.from_config(tiny(eval=dict(bpd_dequant_samples=2, likelihood=dict(trace="hutchinson-rademacher"))))
    Spec.from_config(tiny(eval=dict(bpd_dequant_samples=2, likelihood=dict(trace="hutchinson-rademacher",
                                                                            nodes=16))))


@pytest.mark.parametrize("fields, fragment", [
    (dict(dequantization="gaussian"), r"eval.dequantization='gaussian'; choose one of \('uniform', 'truncated_normal'\)"),
    (dict(dequantization="truncated_normal", dequantization_sigma=-0.1), "dequantization_sigma must be a positive float"),
    (dict(dequantization="truncated_normal"), "has no data.num_levels; set eval.dequantization='uniform'"),
])
def test_dequantization_fields_are_checked_when_the_spec_is_built(fields, fragment):
    with pytest.raises(ValueError, match=fragment):
        Spec.from_config(tiny(eval=fields))          # a 2-D toy: nothing to dequantize


def test_dequantization_fields_of_the_digits_config_reach_the_spec():
    from configs.vp.digits_edm import get_config
    spec = Spec.from_config(get_config())
    assert (spec.eval.dequantization, spec.eval.dequantization_sigma) == ("truncated_normal", 0.05)
    assert not spec.data.uniform_dequantization
    assert Spec.from_config(get_config(), overrides={"eval.dequantization": "uniform"}).eval.dequantization == "uniform"
