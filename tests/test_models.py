"""Model registry, layouts of the published configs, forward shapes and exact small-scale properties."""
import json
import math
import os
from pathlib import Path

import ml_collections
import pytest
import torch

from score_sde.models import get_model, layers, registered_models

# score_sde_pytorch layout files (one JSON per published config: model config, parameter count,
# ordered state-dict entries); SCORE_SDE_COMPAT_DIR overrides the location.
COMPAT_DIR = Path(os.environ.get("SCORE_SDE_COMPAT_DIR", Path(__file__).parent / "data" / "compat"))
LAYOUTS = sorted(p.stem for p in COMPAT_DIR.glob("*.json"))


def test_layout_files_are_present():
    """Guards the parametrized layout tests below against silently running on zero files."""
    assert len(LAYOUTS) == 17, f"expected the 17 published layouts in {COMPAT_DIR}, found {LAYOUTS}"


def load_layout(name: str) -> dict:
    return json.loads((COMPAT_DIR / f"{name}.json").read_text())


def config_for(name: str) -> ml_collections.ConfigDict:
    """The model config of a layout plus its data/training settings (CIFAR-10 32x32x3, CelebA-HQ 256x256x3;
    continuous labels for the *_continuous layouts, discrete level indices otherwise)."""
    layout = load_layout(name)
    if "data" in layout:  # newer layout files record the data and training fields they were built with
        return ml_collections.ConfigDict({"model": dict(layout["model_config"]), "data": dict(layout["data"]),
                                          "training": dict(layout["training"])})
    sde = name.split("__")[0]
    return ml_collections.ConfigDict({
        "model": dict(layout["model_config"]),
        "data": {"image_size": 256 if "celebahq" in name else 32, "num_channels": 3, "centered": sde != "ve"},
        "training": {"continuous": "continuous" in name,
                     "sde": {"vp": "vpsde", "subvp": "subvpsde", "ve": "vesde"}[sde]},
    })


def small_unet(name="ncsnpp", sde="vesde", **model):
    base = dict(name=name, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                resamp_with_conv=True, conditional=True, fir=False, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
                resblock_type="biggan", progressive="none", progressive_input="none", progressive_combine="sum",
                attention_type="ddpm", embedding_type="fourier", init_scale=0.0, fourier_scale=16, conv_size=3,
                scale_by_sigma=False, nonlinearity="swish", normalization="GroupNorm", sigma_min=0.01, sigma_max=50.0,
                num_scales=10, beta_min=0.1, beta_max=20.0)
    base.update(model)
    return ml_collections.ConfigDict({
        "model": base, "data": {"image_size": 8, "num_channels": 2, "centered": sde != "vesde"},
        "training": {"continuous": base["embedding_type"] == "fourier", "sde": sde}})


# ----------------------------------------------------------------------------- published layouts
@pytest.mark.parametrize("layout", LAYOUTS)
def test_published_layouts_have_identical_parameters(layout):
    ref = load_layout(layout)
    with torch.device("meta"):
        model = get_model(config_for(layout))
    assert sum(p.numel() for p in model.parameters()) == ref["n_params"]
    ours = [list(t.shape) for t in model.state_dict().values()]
    assert ours == [shape for _, shape in ref["state_dict"]]


def test_ddpm_cifar10_count_is_the_published_one():
    assert load_layout("vp__ddpm__cifar10")["n_params"] == 35_218_947


# ----------------------------------------------------------------------------- registry / prediction
def test_unknown_model_name_lists_registered_models():
    cfg = small_unet(name="nope")
    with pytest.raises(ValueError, match="registered models: .*ddpm.*mlp.*ncsnpp"):
        get_model(cfg)
    assert {"ddpm", "ncsnpp", "ddpmpp", "mlp"} <= set(registered_models())


@pytest.mark.parametrize("sde,expected", [("vpsde", "eps"), ("subvpsde", "eps"), ("vesde", "score")])
def test_prediction_defaults_follow_the_sde(sde, expected):
    assert get_model(small_unet(sde=sde)).prediction == expected


def test_prediction_override_and_errors():
    cfg = small_unet()
    cfg.model.prediction = "v"
    assert get_model(cfg).prediction == "v"
    cfg.model.prediction = "noise"
    with pytest.raises(ValueError, match="prediction"):
        get_model(cfg)
    cfg = small_unet()
    del cfg.training["sde"]
    with pytest.raises(ValueError, match="config.model.prediction"):
        get_model(cfg)


# ----------------------------------------------------------------------------- forward shapes
NCSNPP_VARIANTS = {
    "ncsnpp_fir_skip": dict(fir=True, progressive="output_skip", progressive_input="input_skip"),
    "ncsnpp_fir_residual": dict(fir=True, progressive="residual", progressive_input="residual"),
    "ncsnpp_cat": dict(progressive_input="input_skip", progressive_combine="cat"),
    "ddpmpp_positional": dict(embedding_type="positional", resblock_type="ddpm", skip_rescale=False),
    "ddpm_blocks_fir": dict(resblock_type="ddpm", fir=True, progressive="residual", progressive_input="residual"),
    "unconditional": dict(conditional=False),
}


@pytest.mark.parametrize("variant", sorted(NCSNPP_VARIANTS))
def test_ncsnpp_variants_forward_and_backward(variant):
    torch.manual_seed(0)
    cfg = small_unet(**NCSNPP_VARIANTS[variant])
    model = get_model(cfg)
    x = torch.rand(2, 2, 8, 8)
    labels = torch.tensor([0.5, 3.0]) if cfg.model.embedding_type == "fourier" else torch.tensor([1, 7])
    out = model(x, labels)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    unused = ("temb_proj",) if not cfg.model.conditional else ()  # exist (for checkpoints) but unused
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None and not any(u in n for u in unused)]
    assert not missing


def test_ddpm_small_digits_config():
    cfg = ml_collections.ConfigDict({
        "model": dict(name="ddpm", nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
                      resamp_with_conv=True, conditional=True, scale_by_sigma=False, nonlinearity="swish",
                      sigma_min=0.01, sigma_max=50.0, num_scales=1000),
        "data": {"image_size": 8, "num_channels": 1, "centered": True}, "training": {"sde": "vpsde"}})
    model = get_model(cfg)
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([0, 999]))
    assert out.shape == (2, 1, 8, 8) and model.prediction == "eps"
    cfg.model.nf = 20  # 20 and 40 channels: GroupNorm falls back to a divisor of the channels
    assert get_model(cfg)(torch.randn(2, 1, 8, 8), torch.tensor([1.5, 2.5])).shape == (2, 1, 8, 8)


def test_mlp_forward_and_errors():
    cfg = ml_collections.ConfigDict({"model": {"name": "mlp", "hidden_dims": (32, 32), "embedding_dim": 16},
                                     "data": {"dim": 2}, "training": {"sde": "vpsde"}})
    model = get_model(cfg)
    assert model(torch.randn(2, 2), torch.tensor([0.1, 900.0])).shape == (2, 2)
    with pytest.raises(ValueError, match="x \\[B, d\\]"):
        model(torch.randn(2, 2, 1), torch.tensor([0.1, 0.2]))


# ----------------------------------------------------------------------------- exact properties
def _twin_models(**model):
    """Two models with identical weights differing only in the given config fields."""
    torch.manual_seed(0)
    a = get_model(small_unet())
    b = get_model(small_unet(**model))
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.eval()
        with torch.no_grad():  # non-zero output layers so the outputs are informative
            for p in (p for p in m.parameters() if p.requires_grad):
                p.copy_(torch.sin(torch.arange(p.numel(), dtype=p.dtype)).reshape(p.shape) * 0.1)
    return a, b


def test_scale_by_sigma_divides_by_the_continuous_label():
    plain, scaled = _twin_models(scale_by_sigma=True)
    x, sigma = torch.rand(2, 2, 8, 8), torch.tensor([0.3, 20.0])
    with torch.no_grad():
        torch.testing.assert_close(scaled(x, sigma), plain(x, sigma) / sigma.view(-1, 1, 1, 1))


def test_scale_by_sigma_discrete_uses_the_sigma_table():
    cfg = small_unet(embedding_type="positional", scale_by_sigma=True, resblock_type="ddpm")
    model = get_model(cfg).eval()
    sigmas = torch.exp(torch.linspace(math.log(50.0), math.log(0.01), 10))
    torch.testing.assert_close(model.sigmas, sigmas)
    plain = get_model(small_unet(embedding_type="positional", resblock_type="ddpm")).eval()
    plain.load_state_dict(model.state_dict())
    x, idx = torch.rand(2, 2, 8, 8), torch.tensor([0, 9])
    with torch.no_grad():
        torch.testing.assert_close(model(x, idx), plain(x, idx) / sigmas[idx].view(-1, 1, 1, 1))


def test_uncentered_data_is_mapped_to_minus_one_one():
    raw, centered = _twin_models()
    centered.opts.centered = True
    x, sigma = torch.rand(2, 2, 8, 8), torch.tensor([1.0, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(raw(x, sigma), centered(2 * x - 1, sigma))


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 1.0, 250.0])
    emb = layers.timestep_embedding(t, 16)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb[:, 0], torch.sin(t))
    torch.testing.assert_close(emb[:, 8], torch.cos(t))
    torch.testing.assert_close(emb[:, 7], torch.sin(t / 10000.0))   # lowest frequency is 1/max_positions
    assert layers.timestep_embedding(t, 7).shape == (3, 7)


def test_fourier_projection_closed_form():
    proj = layers.GaussianFourierProjection(4, scale=16.0)
    assert not proj.W.requires_grad
    x = torch.tensor([0.5, -1.0])
    arg = 2 * math.pi * x[:, None] * proj.W[None, :]
    torch.testing.assert_close(proj(x), torch.cat([torch.sin(arg), torch.cos(arg)], dim=1))


def test_default_init_bounds():
    w = torch.empty(64, 32, 3, 3)
    layers.default_init_(w, scale=1.0)
    bound = math.sqrt(3.0 / ((64 + 32) * 9 / 2))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    layers.default_init_(w, scale=0.0)
    assert w.abs().max() < 1e-4


@pytest.mark.parametrize("field,value,match", [("progressive", "bogus", "model.progressive"),
                                               ("resblock_type", "wide", "model.resblock_type"),
                                               ("nonlinearity", "tanhh", "model.nonlinearity"),
                                               ("progressive_combine", "mul", "model.progressive_combine"),
                                               ("normalization", "InstanceNorm", "model.normalization"),
                                               ("attention_type", "legacy", "model.attention_type")])
def test_bad_options_raise(field, value, match):
    with pytest.raises(ValueError, match=match):
        get_model(small_unet(**{field: value}))


def test_bad_image_size_and_fourier_discrete():
    cfg = small_unet(ch_mult=(1, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="image_size"):
        get_model(cfg)
    cfg = small_unet()
    cfg.training.continuous = False
    with pytest.raises(ValueError, match="fourier"):
        get_model(cfg)


# ----------------------------------------------------------------------------- NCSN / NCSNv2 RefineNet
def small_ncsn(name="ncsn", image_size=8, **model):
    base = dict(name=name, nf=8, normalization="InstanceNorm++", nonlinearity="elu", interpolation="bilinear",
                scale_by_sigma=name == "ncsnv2_64", sigma_min=0.01, sigma_max=50.0, num_scales=10)
    base.update(model)
    return ml_collections.ConfigDict({
        "model": base, "data": {"image_size": image_size, "num_channels": 2, "centered": False},
        "training": {"continuous": False, "sde": "vesde"}})


def test_ncsn_cifar10_config_has_the_published_layout():
    """configs/ve/ncsn/cifar10.py builds score_sde_pytorch's 'ncsn' network: same count, same ordered shapes."""
    import importlib
    ref = load_layout("ve__ncsn__cifar10")
    assert ref["n_params"] == 39_750_659 and ref["model_name"] == "ncsn"
    config = importlib.import_module("configs.ve.ncsn.cifar10").get_config()
    with torch.device("meta"):
        model = get_model(config)
    assert sum(p.numel() for p in model.parameters()) == ref["n_params"]
    assert [list(t.shape) for t in model.state_dict().values()] == [shape for _, shape in ref["state_dict"]]
    assert model.prediction == "score" and not model.scale_by_sigma


@pytest.mark.parametrize("name", ["ncsn", "ncsnv2_64"])
@pytest.mark.parametrize("dtype,batch,size", [(torch.float32, 3, 8), (torch.float64, 1, 8), (torch.float32, 2, 28)])
def test_ncsn_forward_backward_shapes_and_dtypes(name, dtype, batch, size):
    torch.manual_seed(0)
    model = get_model(small_ncsn(name, image_size=size)).to(dtype)
    x = torch.rand(batch, 2, size, size, dtype=dtype)
    out = model(x, torch.arange(batch) % 10)
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    out.square().sum().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_ncsn_is_conditioned_on_the_level_index_only_through_its_norms():
    torch.manual_seed(0)
    model = get_model(small_ncsn()).eval()
    x = torch.rand(2, 2, 8, 8)
    with torch.no_grad():
        for emb in (m for m in model.modules() if isinstance(m, torch.nn.Embedding)):
            emb.weight.add_(0.1 * torch.randn_like(emb.weight))   # betas start at 0: make every row matter
        at3, at7 = model(x, torch.tensor([3, 3])), model(x, torch.tensor([7, 7]))
        assert (at3 - at7).abs().max() > 1e-3
        mixed = model(x, torch.tensor([3, 7]))                      # per-sample conditioning, no batch mixing
        torch.testing.assert_close(mixed, torch.stack([at3[0], at7[1]]), rtol=0, atol=1e-6)
        for emb in (m for m in model.modules() if isinstance(m, torch.nn.Embedding)):
            emb.weight[[3, 7]] = emb.weight[[7, 3]].clone()         # swap the two levels' rows everywhere
        assert torch.equal(model(x, torch.tensor([7, 7])), at3)


def test_ncsnv2_divides_an_unconditional_output_by_sigma():
    torch.manual_seed(0)
    model = get_model(small_ncsn("ncsnv2_64")).eval()
    assert not any(isinstance(m, torch.nn.Embedding) for m in model.modules())
    x, idx = torch.rand(1, 2, 8, 8).expand(2, -1, -1, -1), torch.tensor([0, 9])
    sigmas = torch.exp(torch.linspace(math.log(50.0), math.log(0.01), 10))
    with torch.no_grad():
        out = model(x, idx) * sigmas[idx].view(-1, 1, 1, 1)
    torch.testing.assert_close(out[0], out[1])


def test_conditional_instance_norm_plus_closed_form():
    from score_sde.models.ncsn import ConditionalInstanceNormPlus
    torch.manual_seed(0)
    norm = ConditionalInstanceNormPlus(4, num_levels=3)
    with torch.no_grad():
        norm.embed.weight.normal_()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64) * torch.arange(1.0, 5.0, dtype=torch.float64).view(1, 4, 1, 1)
    labels = torch.tensor([2, 0])
    out = norm.double()(x, labels)
    gamma, alpha, beta = norm.embed.weight.double()[labels].chunk(3, dim=-1)
    mu, var = x.mean(dim=(2, 3)), x.var(dim=(2, 3), unbiased=False)
    mu_plus = (mu - mu.mean(1, keepdim=True)) / torch.sqrt(mu.var(1, keepdim=True) + 1e-5)  # unbiased across C
    torch.testing.assert_close(out.mean(dim=(2, 3)), gamma * alpha * mu_plus + beta)
    torch.testing.assert_close(out.var(dim=(2, 3), unbiased=False), gamma ** 2 * var / (var + 1e-5))


def test_ncsn_score_fn_feeds_the_level_index():
    """Discrete VE: t = T is level 0 (sigma_max), as score_sde_pytorch's labels (T - t)(N - 1)."""
    from score_sde import parameterization, sde_lib
    torch.manual_seed(0)
    model = get_model(small_ncsn()).eval()
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
    score_fn = parameterization.get_score_fn(sde, model, continuous=False)
    x = torch.rand(2, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(score_fn(x, torch.ones(2)), model(x, torch.tensor([0, 0])), rtol=0, atol=0)
        torch.testing.assert_close(score_fn(x, torch.full((2,), 1e-5)), model(x, torch.tensor([9, 9])),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("name,field,value,match", [
    ("ncsn", "normalization", "GroupNorm", "model.normalization='GroupNorm' is not supported"),
    ("ncsn", "interpolation", "nearest", "model.interpolation"),
    ("ncsn", "nonlinearity", "tanhh", "model.nonlinearity"),
    ("ncsnv2_64", "scale_by_sigma", False, "always divides its output by sigma")])
def test_ncsn_bad_options_raise(name, field, value, match):
    with pytest.raises(ValueError, match=match):
        get_model(small_ncsn(name, **{field: value}))


def test_ncsn_bad_labels_and_data_raise():
    cfg = small_ncsn()
    cfg.training.continuous = True
    with pytest.raises(ValueError, match="training.continuous=False"):
        get_model(cfg)
    with pytest.raises(ValueError, match="must be even"):
        get_model(small_ncsn(image_size=9))
    model = get_model(small_ncsn())
    with pytest.raises(ValueError, match="integer noise-level index"):
        model(torch.rand(2, 2, 8, 8), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        model(torch.rand(2, 2, 8, 8), torch.tensor([1]))
