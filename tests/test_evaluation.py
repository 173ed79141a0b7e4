"""Evaluation pipeline: tiny checkpoints evaluated with three samplers plus bits/dim, resume, safety."""
from __future__ import annotations

import json
import math
import os
import pathlib

import ml_collections
import numpy as np
import pytest
import torch

from multiproc import launch, rank_env
from score_sde import builders, checkpoint, evaluation, sampling
from score_sde.models import compat

# ---------------------------------------------------------------------------------------------
# A tiny config and checkpoints
# ---------------------------------------------------------------------------------------------
def tiny_config(**eval_overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed, c.device = 0, "cpu"
    c.training = dict(sde="vpsde", continuous=True, reduce_mean=False, likelihood_weighting=False,
                      precision="fp32", channels_last=False)
    c.data = dict(dataset="toy_ring", dim=2, centered=False, num_train=64, num_eval=48,
                  uniform_dequantization=False, random_flip=False, num_levels=None)
    c.model = dict(name="mlp", hidden_dims=(16, 16), embedding_dim=8, ema_rate=0.9,
                   beta_min=0.1, beta_max=20.0, num_scales=100, sigma_min=0.01, sigma_max=5.0)
    c.optim = dict(optimizer="Adam", lr=1e-3, beta1=0.9, eps=1e-8, weight_decay=0.0, warmup=0, grad_clip=1.0)
    c.sampling = dict(method="ddim", steps=4, eta=0.0, skip_type="uniform", predictor="reverse_diffusion",
                      corrector="langevin", snr=0.16, n_steps_each=1, noise_removal=True,
                      probability_flow=False, order=2, eps=None, progress=False,
                      solver="RK45", backend="scipy", rtol=1e-3, atol=1e-3)
    c.eval = dict(begin_ckpt=0, end_ckpt=None, batch_size=4, enable_loss=True, enable_bpd=True,
                  enable_sampling=True, num_samples=10, bpd_dataset="test", bpd_trace="exact",
                  bpd_num_batches=1, enable_fid=False, inception_path=None, import_ckpt=None)
    c.eval.update(eval_overrides)
    return c


def _poisoned_checkpoint(config, step: int, seed: int) -> dict:
    """A checkpoint whose raw weights are NaN and whose EMA weights are sane: only EMA gives finite output."""
    torch.manual_seed(seed)
    state = builders.create_state(config, torch.device("cpu"))
    ckpt = builders.state_dict_for_checkpoint(dict(state, step=step))
    ckpt["model"] = {k: torch.full_like(v, float("nan")) for k, v in ckpt["model"].items()}
    return ckpt


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    wd = str(tmp_path_factory.mktemp("wd"))
    cfg = tiny_config()
    for step in (5, 10):
        checkpoint.save_checkpoint(checkpoint.checkpoint_path(wd, step), _poisoned_checkpoint(cfg, step, step))
    return wd


def _sampler_dir(root: str, method: str) -> str:
    found = [d for d in os.listdir(root) if d.startswith(method + "_")]
    assert len(found) == 1, found
    return os.path.join(root, found[0])


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluated(workdir):
    """Checkpoint step 10 only (begin_ckpt=6) evaluated with three samplers plus loss and bits/dim."""
    for method in ("ddim", "pc", "ode"):
        cfg = tiny_config(begin_ckpt=6)
        cfg.sampling.method = method
        if method == "ode":
            cfg.sampling.steps = None   # adaptive RK45: tolerances, not a step count
        evaluation.evaluate(cfg, workdir)
    return os.path.join(workdir, "eval")


def test_range_selects_steps(evaluated):
    assert sorted(os.listdir(evaluated)) == ["ckpt_10"]


@pytest.mark.parametrize("method", ["ddim", "pc", "ode"])
def test_sampler_outputs(evaluated, method):
    out = _sampler_dir(os.path.join(evaluated, "ckpt_10"), method)
    samples = np.load(os.path.join(out, "samples.npz"))["samples"]
    assert samples.shape == (10, 2)           # 10 = 4 + 4 + 2: a short last batch
    assert np.isfinite(samples).all()         # EMA weights used (the raw weights are NaN)
    assert os.path.getsize(os.path.join(out, "samples.png")) > 0
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["sampler"] == method and rep["num_samples"] == 10 and rep["checkpoint_step"] == 10
    assert rep["nfe"] > 0 and rep["num_batches"] == 3 and rep["seconds"] > 0
    assert rep["options"].get("steps") == (None if method == "ode" else 4)
    assert rep["options"]["eps"] is None       # not set: the sampler's own endpoint rule (recorded as such)
    m = rep["metrics"]
    assert m["sliced_wasserstein"] > 0 and m["sliced_wasserstein_floor"] > 0
    assert m["delta_log_p"] == pytest.approx(m["data_nll"] - m["sample_nll"])


def test_loss_and_bpd_reports(evaluated):
    loss = json.load(open(os.path.join(evaluated, "ckpt_10", "loss.json")))
    assert loss["num_examples"] == 48 and math.isfinite(loss["loss"]) and loss["loss"] > 0
    bpd = json.load(open(os.path.join(evaluated, "ckpt_10", "bpd.json")))
    assert bpd["num_examples"] == 4        # bpd_num_batches=1 batch of eval.batch_size=4
    # toy data have no quantization levels: bits/dim is the differential NLL over d ln 2
    assert bpd["bits_per_dim"] == pytest.approx(bpd["nll_nats"] / (2 * math.log(2.0)))


def test_rerun_skips_and_changed_options_get_new_folder(evaluated, workdir):
    ckdir = os.path.join(evaluated, "ckpt_10")
    files = [os.path.join(ckdir, "loss.json"), os.path.join(ckdir, "bpd.json"),
             os.path.join(_sampler_dir(ckdir, "ddim"), "report.json"),
             os.path.join(_sampler_dir(ckdir, "ddim"), "samples.npz")]
    before = [os.stat(f).st_mtime_ns for f in files]
    evaluation.evaluate(tiny_config(begin_ckpt=6), workdir)
    assert [os.stat(f).st_mtime_ns for f in files] == before
    cfg = tiny_config(begin_ckpt=6, enable_loss=False, enable_bpd=False)
    cfg.sampling.steps = 3
    evaluation.evaluate(cfg, workdir)
    ddim_dirs = sorted(d for d in os.listdir(ckdir) if d.startswith("ddim_"))
    assert len(ddim_dirs) == 2
    reports = [json.load(open(os.path.join(ckdir, d, "report.json"))) for d in ddim_dirs]
    assert sorted(r["options"]["steps"] for r in reports) == [3, 4]


def test_samples_reproducible_from_seed(tmp_path, workdir):
    def draw(seed: int, folder: str) -> np.ndarray:
        cfg = tiny_config(num_samples=6)
        cfg.seed = seed
        out = evaluation.sample(cfg, workdir, eval_folder=folder)
        return np.load(os.path.join(out, "samples.npz"))["samples"]

    a, b, c = draw(1, "s_a"), draw(1, "s_b"), draw(2, "s_c")
    assert a.shape == (6, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert os.path.isdir(os.path.join(workdir, "s_a", "sample_10"))   # newest checkpoint


def test_import_score_sde_pytorch_checkpoint(tmp_path):
    cfg = tiny_config(enable_loss=False, enable_bpd=False, num_samples=4)
    ours = _poisoned_checkpoint(cfg, 7, 0)
    model = builders.build_model(cfg, torch.device("cpu"))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]   # score_sde_pytorch's all_modules
    layout = {f"all_modules.{i}.{leaf}": list(t.shape)
              for i, m in enumerate(linears) for leaf, t in m.state_dict().items()}
    original = compat.to_score_sde_pytorch(ours, model, layout)
    assert all(k.startswith("module.all_modules.") for k in original["model"])
    src = str(tmp_path / "checkpoint_26.pth")
    torch.save(original, src)
    cfg.eval.import_ckpt = src
    evaluation.evaluate(cfg, str(tmp_path / "wd"))
    out = _sampler_dir(str(tmp_path / "wd" / "eval" / "imported_checkpoint_26"), "ddim")
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["checkpoint_step"] == 7 and rep["checkpoint"] == src
    assert np.isfinite(np.load(os.path.join(out, "samples.npz"))["samples"]).all()


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_code_checkpoint_refused(tmp_path):
    marker = tmp_path / "executed"
    path = checkpoint.checkpoint_path(str(tmp_path), 3)
    os.makedirs(os.path.dirname(path))
    torch.save({"model": {}, "step": 3, "payload": _Evil(str(marker))}, path)
    with pytest.raises(ValueError, match="pickled code"):
        evaluation.evaluate(tiny_config(), str(tmp_path))
    assert not marker.exists()


def test_sampler_from_config_maps_options():
    seen = {}

    def recorder(sde, shape, *, steps=1, eta=0.0, eps=None, device=None, dtype=torch.float64, progress=True):
        seen.update(steps=steps, eta=eta, eps=eps, device=device, dtype=dtype, progress=progress, shape=shape)
        return lambda score_fn, generator=None, x_T=None, callback=None: (None, 0)

    if "_eval_test_recorder" not in sampling.SAMPLERS:
        sampling.register_sampler("_eval_test_recorder")(recorder)
    cfg = tiny_config()
    cfg.sampling.method, cfg.sampling.steps, cfg.sampling.eta = "_eval_test_recorder", 7, 0.3
    sde = builders.sde_from_config(cfg)
    evaluation.sampler_from_config(cfg, sde, (5, 2), device=torch.device("cpu"))
    assert seen == dict(steps=7, eta=0.3, eps=None, device=torch.device("cpu"), dtype=torch.float32,
                        progress=False, shape=(5, 2))   # eps unset: the sampler's own default decides
    cfg.sampling.eps = 0.05
    assert evaluation.sampler_settings(cfg, sde)[1] == {"steps": 7, "eta": 0.3, "eps": 0.05}


def test_unknown_sampler_rejected():
    cfg = tiny_config()
    cfg.sampling.method = "no_such_sampler"
    with pytest.raises(ValueError, match="choose one of .*ddim"):
        evaluation.sampler_from_config(cfg, builders.sde_from_config(cfg), (2, 2))


def test_no_checkpoint_in_range(workdir):
    with pytest.raises(FileNotFoundError, match=r"\[11, None\].*found steps \[5, 10\]"):
        evaluation.evaluate(tiny_config(begin_ckpt=11), workdir)


def test_fid_without_weights_is_a_clear_error(tmp_path):
    cfg = tiny_config(enable_fid=True, inception_path=str(tmp_path / "missing.pth"))
    cfg.data.dataset = "digits"
    with pytest.raises(FileNotFoundError, match="inception_path"):
        evaluation.evaluate(cfg, str(tmp_path))


def _tiny_digits_config(inception_path: str, **eval_overrides) -> ml_collections.ConfigDict:
    """The embedded default shrunk to seconds: nf=16, 2 UniPC steps, 4 samples, FID from local weights."""
    import importlib

    cfg = importlib.import_module("configs.vp.digits_ddpmpp_continuous").get_config()
    cfg.device, cfg.model.nf = "cpu", 16
    cfg.sampling.steps = 2
    cfg.eval.update(dict(begin_ckpt=1, end_ckpt=1, batch_size=4, enable_loss=False, enable_bpd=False,
                         enable_sampling=True, num_samples=4, enable_fid=True, inception_path=inception_path,
                         num_reference=5))
    cfg.eval.update(eval_overrides)
    return cfg


def _evaluate_fresh_model(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Seed-0 initial weights saved as step 1, evaluated as the config enables; returns that state."""
    torch.manual_seed(0)
    state = builders.create_state(cfg, torch.device("cpu"))
    checkpoint.save_checkpoint(checkpoint.checkpoint_path(workdir, 1),
                               builders.state_dict_for_checkpoint(dict(state, step=1)))
    evaluation.evaluate(cfg, workdir)
    return state


@pytest.mark.parametrize("split", ["test", "train"])
def test_fid_end_to_end_from_local_weights(tmp_path, inception_file, split):
    """evaluate() -> report.json fid equals the Frechet distance of Inception features of the saved
    samples and of the first num_reference items of the chosen split, recomputed here."""
    from score_sde import datasets, inception, metrics

    cfg = _tiny_digits_config(inception_file, reference_split=split)
    _evaluate_fresh_model(cfg, str(tmp_path))
    out = _sampler_dir(os.path.join(str(tmp_path), "eval", "ckpt_1"), "unipc")
    m = json.load(open(os.path.join(out, "report.json")))["metrics"]
    assert m["reference_split"] == split and m["num_reference"] == 5
    samples = torch.from_numpy(np.load(os.path.join(out, "samples.npz"))["samples"])
    assert samples.shape == (4, 1, 8, 8) and 0.0 <= float(samples.min()) and float(samples.max()) <= 1.0
    train, test = datasets.get_dataset(cfg)
    torch.manual_seed(cfg.seed)  # the eval split's dequantization noise, drawn as evaluation draws it
    ref = torch.stack([(test if split == "test" else train)[i] for i in range(5)])
    net = inception.load_inception(inception_file, "cpu")
    feats = [inception.inception_features(net, metrics.to_uint8(x), batch_size=4) for x in (samples, ref)]
    expected = float(metrics.fid_from_features(*feats))
    assert math.isfinite(m["fid"]) and m["fid"] > 0
    assert m["fid"] == pytest.approx(expected, rel=1e-4)


def test_bad_reference_settings_fail_before_work(tmp_path):
    with pytest.raises(ValueError, match=r"eval.reference_split='valid'; choose one of \('test', 'train'\)"):
        evaluation.evaluate(tiny_config(reference_split="valid"), str(tmp_path))
    with pytest.raises(ValueError, match="eval.num_reference=1 must be an integer >= 2"):
        evaluation.evaluate(tiny_config(num_reference=1), str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Two gloo processes: uneven per-rank work, gathered after the loops, rank 0 writes
# ---------------------------------------------------------------------------------------------
def _rank_main(rank: int, world: int, port: int, workdir: str) -> None:
    rank_env(rank, world, port)
    cfg = tiny_config(num_samples=7, batch_size=2, bpd_num_batches=2, enable_loss=True)
    try:
        evaluation.evaluate(cfg, workdir, eval_folder="eval_ddp")
    finally:
        from score_sde import distributed
        distributed.cleanup()


def test_two_processes_match_single_process(tmp_path, gloo):
    wd = str(tmp_path)
    cfg = tiny_config(num_samples=7, batch_size=2, bpd_num_batches=2)
    checkpoint.save_checkpoint(checkpoint.checkpoint_path(wd, 1), _poisoned_checkpoint(cfg, 1, 0))
    launch(_rank_main, 2, wd)
    evaluation.evaluate(cfg, wd, eval_folder="eval_single")
    read = lambda folder: np.load(os.path.join(_sampler_dir(os.path.join(wd, folder, "ckpt_1"), "ddim"),  # noqa
                                               "samples.npz"))["samples"]
    multi, single = read("eval_ddp"), read("eval_single")
    assert multi.shape == single.shape == (7, 2)
    # global batch j draws from a generator keyed (seed, j), whichever rank runs it: every row is equal
    np.testing.assert_allclose(multi, single, rtol=1e-6, atol=1e-6)
    bpd = json.load(open(os.path.join(wd, "eval_ddp", "ckpt_1", "bpd.json")))
    bpd_single = json.load(open(os.path.join(wd, "eval_single", "ckpt_1", "bpd.json")))
    assert bpd["bits_per_dim"] == pytest.approx(bpd_single["bits_per_dim"], rel=1e-6)
    loss = json.load(open(os.path.join(wd, "eval_ddp", "ckpt_1", "loss.json")))
    assert bpd["num_examples"] == 4 and loss["num_examples"] == 48


@pytest.mark.parametrize("centered, expected", [(True, math.log2(17) - 1), (False, math.log2(17))])
def test_image_bits_per_dim_uses_levels_and_centering(centered, expected):
    """nll = 0 nats in model space: bpd = log2(L) - log2(scale) (scale 2 for [-1, 1], 1 for [0, 1])."""
    cfg = tiny_config()
    cfg.data.update(dict(dataset="digits", num_levels=17, centered=centered, image_size=8, num_channels=1))
    bpd = evaluation._bits_per_dim(torch.zeros(3, dtype=torch.float64), cfg, (1, 8, 8))
    np.testing.assert_allclose(bpd.numpy(), expected, rtol=1e-12)


def test_bpd_split_gives_bin_centres_even_when_training_dequantizes():
    cfg = tiny_config()
    cfg.data.update(dict(dataset="digits", num_levels=17, image_size=8, num_channels=1))
    cfg.data.uniform_dequantization = True
    torch.manual_seed(0)
    x = evaluation._split(cfg, "test")[0] * 17                 # as training sees it: k + u
    centres = evaluation._split(cfg, "test", centres=True)[0] * 17
    assert torch.equal(torch.floor(x), torch.floor(centres))   # same levels k
    assert torch.equal(centres - torch.floor(centres), torch.full_like(x, 0.5))
    assert not torch.allclose(x - torch.floor(x), torch.full_like(x, 0.5))


@pytest.mark.parametrize("dequantizer", ["uniform", "truncated_normal"])
def test_eval_bits_per_dim_is_the_dequantized_bound_of_the_bin_centres(tmp_path, dequantizer):
    """bpd.json's figure is dequantization.discrete_nll of the eval split's bin centres under batch 0's
    generator, over d ln 2; the truncated normal's sigma (None: a quarter bin) is reported and keys the cache."""
    from score_sde import datasets, dequantization, shards

    cfg = _tiny_digits_config("unused", enable_fid=False, enable_sampling=False, enable_bpd=True, batch_size=3,
                              bpd_num_batches=1, dequantization=dequantizer)
    cfg.eval.likelihood.update(dict(trace="hutchinson-rademacher", rtol=1e-3, atol=1e-3))
    state = _evaluate_fresh_model(cfg, str(tmp_path))
    bpd = json.load(open(os.path.join(str(tmp_path), "eval", "ckpt_1", "bpd.json")))
    assert bpd["dequantization"] == dequantizer
    sigma = 2.0 / 17 / 4 if dequantizer == "truncated_normal" else None
    assert bpd.get("dequantization_sigma") == sigma and bpd["settings"].get("dequantization_sigma", None) is None
    _, test = datasets.get_dataset(_centred(cfg))
    y = 2 * torch.stack([test[i] for i in range(3)]) - 1
    ema = state["ema"]
    ema.copy_to(state["model"].parameters())
    score_fn = builders.score_fn_from_model(cfg, builders.sde_from_config(cfg), state["model"].eval())
    nats, _ = dequantization.discrete_nll(builders.sde_from_config(cfg), score_fn, y, num_levels=17, data_scale=2.0,
                                          data_shift=-1.0,
                                          dequantizer=dequantizer, sigma=sigma, trace="hutchinson-rademacher",
                                          rtol=1e-3, atol=1e-3,
                                          generator=shards.batch_generator(cfg.seed, shards.STREAM_BPD, 0))
    assert bpd["bits_per_dim"] == pytest.approx(float(nats.mean()) / (64 * math.log(2)), rel=1e-6)
    # score_sde.load(...).bits_per_dim: the same bound, from data-space items anywhere inside their bins
    import score_sde
    exp = score_sde.load(str(tmp_path), config=cfg)
    jittered = (y + 1) / 2 + (torch.rand(y.shape) - 0.5) / 17
    per_item = exp.bits_per_dim(jittered, generator=shards.batch_generator(cfg.seed, shards.STREAM_BPD, 0))
    assert float(per_item.mean()) == pytest.approx(bpd["bits_per_dim"], rel=1e-6)


def _centred(cfg):
    """A copy of the ConfigDict whose data are not dequantized: the bin centres."""
    out = ml_collections.ConfigDict(cfg.to_dict())
    out.data.uniform_dequantization = False
    return out
