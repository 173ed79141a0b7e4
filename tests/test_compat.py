"""Import of score_sde_pytorch checkpoints: synthetic checkpoints in the original layout."""
from collections import OrderedDict

import pytest
import torch

from score_sde.models import compat, get_model
from test_models import COMPAT_DIR, LAYOUTS, config_for, load_layout, small_unet


def _is_trainable(layout: dict, key: str) -> bool:
    """In the original, buffers (sigmas) and the fixed Fourier weights are not trained (not in the EMA)."""
    fourier = layout["model_config"].get("embedding_type") == "fourier" and layout["model_name"] == "ncsnpp"
    return key != "sigmas" and not (fourier and key == "all_modules.0.W")


def synthetic_original(layout: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    model = OrderedDict(("module." + k, torch.randn(shape, generator=g)) for k, shape in layout["state_dict"])
    shadow = [torch.randn(shape, generator=g) for k, shape in layout["state_dict"] if _is_trainable(layout, k)]
    return {"model": model, "ema": {"decay": 0.9999, "num_updates": 1300, "shadow_params": shadow},
            "optimizer": {"state": {}, "param_groups": []}, "step": 1300}


def _meta_model(name: str):
    with torch.device("meta"):
        return get_model(config_for(name))


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_original_key_maps_one_to_one(name):
    layout = load_layout(name)
    model = _meta_model(name)
    shapes = OrderedDict(("module." + k, s) for k, s in layout["state_dict"])
    mapping = compat.key_mapping(compat.strip_prefix(shapes), model)
    assert list(mapping) == [k for k, _ in layout["state_dict"]]          # nothing unexpected
    assert sorted(mapping.values()) == sorted(model.state_dict())         # nothing missing
    trainable = [k for k, _ in layout["state_dict"] if _is_trainable(layout, k)]
    ours_trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert [mapping[k] for k in trainable] == ours_trainable              # EMA order = our parameters() order


@pytest.mark.parametrize("name", ["vp__ddpm__cifar10", "ve__cifar10_ncsnpp_continuous", "ve__ncsn__cifar10"])
def test_load_and_round_trip_real_tensors(name):
    layout = load_layout(name)
    src = synthetic_original(layout)
    model = get_model(config_for(name))
    converted = compat.load_score_sde_pytorch(src, model, which="model")
    mapping = compat.key_mapping(compat.strip_prefix(src["model"]), model)
    ours = model.state_dict()
    for sk, ok in mapping.items():
        assert torch.equal(ours[ok], src["model"]["module." + sk]), sk
    assert converted["step"] == 1300 and converted["ema"]["num_updates"] == 1300

    compat.load_score_sde_pytorch(src, model, which="ema")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(torch.equal(p, s) for p, s in zip(trainable, src["ema"]["shadow_params"]))
    if "module.sigmas" in src["model"]:                                  # NCSN's checkpoints carry none
        assert torch.equal(model.sigmas, src["model"]["module.sigmas"])  # buffers come from 'model'

    back = compat.to_score_sde_pytorch(converted, model, [(k, s) for k, s in layout["state_dict"]])
    assert list(back["model"]) == list(src["model"])
    assert all(torch.equal(back["model"][k], v) for k, v in src["model"].items())
    assert all(torch.equal(a, b) for a, b in zip(back["ema"]["shadow_params"], src["ema"]["shadow_params"]))
    assert back["step"] == src["step"]


def test_convert_cli_writes_a_weights_only_checkpoint(tmp_path):
    name = "vp__ddpm__cifar10"
    src = synthetic_original(load_layout(name), seed=1)
    torch.save(src, tmp_path / "checkpoint_26.pth")
    cfg_file = tmp_path / "configs" / "ddpm_cifar10.py"
    cfg_file.parent.mkdir()
    cfg_file.write_text(
        "import json, ml_collections\n"
        "def get_config():\n"
        f"    layout = json.load(open({str(COMPAT_DIR / (name + '.json'))!r}))\n"
        "    return ml_collections.ConfigDict({'model': layout['model_config'],\n"
        "        'data': {'image_size': 32, 'num_channels': 3, 'centered': True},\n"
        "        'training': {'continuous': False, 'sde': 'vpsde'}})\n")
    dst = tmp_path / "out" / "ours.pth"
    compat.main(["--config", str(cfg_file), "--src", str(tmp_path / "checkpoint_26.pth"), "--dst", str(dst),
                 "--which", "ema"])
    ours = torch.load(dst, map_location="cpu", weights_only=True)
    # the current checkpoint format: version and checksum (fingerprint only for a complete config)
    assert set(ours) - {"fingerprint"} == {"model", "ema", "step", "format_version", "checksum"}
    assert ours["step"] == 1300
    from score_sde import checkpoint
    assert checkpoint.load_checkpoint(str(dst))["checksum"] == ours["checksum"]  # verifies the checksum
    model = get_model(config_for(name))
    model.load_state_dict(ours["model"], strict=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(torch.equal(p, s) for p, s in zip(trainable, src["ema"]["shadow_params"]))
    assert all(torch.equal(a, b) for a, b in zip(ours["ema"]["shadow_params"], src["ema"]["shadow_params"]))


# ----------------------------------------------------------------------------- errors
def _shapes(name):
    return OrderedDict((k, list(s)) for k, s in load_layout(name)["state_dict"])


def test_shape_mismatch_names_key_and_both_shapes():
    shapes = _shapes("ve__cifar10_ncsnpp_continuous")
    shapes["all_modules.4.Conv_0.weight"] = [128, 128, 1, 1]
    with pytest.raises(ValueError, match=r"all_modules\.4\.Conv_0\.weight has shape \[128, 128, 1, 1\] "
                                         r"but our .*conv1\.weight has shape \[128, 128, 3, 3\]"):
        compat.key_mapping(shapes, _meta_model("ve__cifar10_ncsnpp_continuous"))


def test_wrong_config_missing_and_unexpected_entries():
    name = "vp__cifar10_ddpmpp_continuous"
    model = _meta_model(name)
    shapes = _shapes(name)
    short = OrderedDict(list(shapes.items())[:-1])
    with pytest.raises(ValueError, match="missing an entry for our conv_out.bias"):
        compat.key_mapping(short, model)
    shapes["all_modules.999.bias"] = [3]
    with pytest.raises(ValueError, match=r"unexpected checkpoint entry all_modules\.999\.bias"):
        compat.key_mapping(shapes, model)
    with pytest.raises(ValueError):  # the deep layout does not fit the shallow model
        compat.key_mapping(_shapes("vp__cifar10_ddpmpp_deep_continuous"), model)


def test_ema_and_file_errors(tmp_path):
    name = "vp__ddpm__cifar10"
    layout = load_layout(name)
    model = _meta_model(name)
    src = synthetic_original(layout)
    mapping = compat.key_mapping(_shapes(name), model)
    with pytest.raises(ValueError, match="shadow parameters"):
        compat.convert_ema({"shadow_params": src["ema"]["shadow_params"][:-1]}, model, mapping)
    bad = list(src["ema"]["shadow_params"])
    bad[3] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"shadow_params\[3\] has shape \[2\]"):
        compat.convert_ema({"shadow_params": bad}, model, mapping)
    with pytest.raises(ValueError, match="no 'model' entry"):
        compat.convert_state({"ema": src["ema"]}, model)
    with pytest.raises(FileNotFoundError):
        compat.load_score_sde_pytorch(tmp_path / "absent.pth", model)
    with pytest.raises(ValueError, match="which="):
        compat.load_score_sde_pytorch(src, model, which="best")
    torch.save({"model": {}, "code": _Pickled()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights-only"):
        compat.load_score_sde_pytorch(tmp_path / "pickled.pth", model)


class _Pickled:
    """An arbitrary object: loading it needs pickled code, which weights_only refuses."""


def _code_order(layout: dict) -> "OrderedDict[str, list]":
    """The DDPM layout with each residual block's tensors in the attribute order of score_sde_pytorch's
    layers.ResnetBlockDDPM (GroupNorm_0, GroupNorm_1, Conv_0, Conv_1, Dense_0, NIN_0) and indices
    shifted by one, as if a parameter-free module sat at index 0."""
    rank = {"GroupNorm_0": 0, "GroupNorm_1": 1, "Conv_0": 2, "Conv_1": 3, "Dense_0": 4, "NIN_0": 5}
    groups: "OrderedDict[str, list]" = OrderedDict()
    for key, shape in layout["state_dict"]:
        parts = key.split(".")
        head = ".".join(parts[:2])
        if parts[0] == "all_modules":
            key = ".".join(["all_modules", str(int(parts[1]) + 1)] + parts[2:])
        groups.setdefault(head, []).append((key, shape))
    out = OrderedDict()
    for entries in groups.values():
        if any(".GroupNorm_1." in k for k, _ in entries):
            entries = sorted(entries, key=lambda e: rank[e[0].split(".")[2]])
        out.update(entries)
    return out


def test_tensors_inside_a_block_are_paired_by_name_and_ema_is_reordered():
    name = "vp__ddpm__cifar10"
    layout = load_layout(name)
    model = _meta_model(name)
    shapes = _code_order(layout)
    assert list(shapes)[9] == "all_modules.4.GroupNorm_1.weight"  # first block, code order
    mapping = compat.key_mapping(shapes, model)
    assert mapping["all_modules.4.GroupNorm_1.weight"] == "down.0.stages.0.res.norm2.weight"
    assert mapping["all_modules.4.Dense_0.bias"] == "down.0.stages.0.res.temb_proj.bias"
    assert sorted(mapping.values()) == sorted(model.state_dict())
    trainable_src = [k for k in shapes if k != "sigmas"]
    shadow = [torch.full((1,), float(i)).expand(*shapes[k]) for i, k in enumerate(trainable_src)]
    ema = compat.convert_ema({"shadow_params": shadow, "decay": 0.9, "num_updates": 5}, model, mapping)
    inverse = {ok: sk for sk, ok in mapping.items()}
    for (our_name, _), s in zip(model.named_parameters(), ema["shadow_params"]):
        assert s.flatten()[0].item() == trainable_src.index(inverse[our_name])


def test_converted_ema_feeds_the_training_ema_and_score_fn():
    from score_sde import parameterization, sde_lib
    from score_sde.models.ema import ExponentialMovingAverage

    torch.manual_seed(0)
    cfg = small_unet()
    model = get_model(cfg)
    state = model.state_dict()
    # original-style names for this small model: one all_modules entry per block, tensors in order
    names = OrderedDict((ours, ours if ours == "sigmas" else f"all_modules.{i}.t{j}.{ours.rsplit('.', 1)[-1]}")
                        for i, group in enumerate(compat._our_groups(model, with_buffers=True))
                        for j, (ours, _, _) in enumerate(group))
    shadow = [p.detach() + 1.0 for p in model.parameters() if p.requires_grad]
    src = {"model": OrderedDict(("module." + names[k], state[k]) for k in names),
           "ema": {"decay": 0.99, "num_updates": 3, "shadow_params": shadow}, "step": 3}
    converted = compat.load_score_sde_pytorch(src, model, which="model")
    ema = ExponentialMovingAverage(model.parameters(), decay=0.5)
    ema.load_state_dict(converted["ema"])
    ema.copy_to(model.parameters())
    assert all(torch.equal(p, s) for p, s in zip([p for p in model.parameters() if p.requires_grad], shadow))
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
    score_fn = parameterization.get_score_fn(sde, model.eval(), continuous=True)
    x = torch.rand(2, 2, 8, 8)
    out = score_fn(x, torch.tensor([0.3, 0.9]))
    assert out.shape == x.shape and model.prediction == "score" and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- outputs of the original networks
# tests/data/compat_outputs.json holds, per published config, fingerprints of score_sde_pytorch's own network
# output (its code run once out of tree on the weights and inputs defined below; see docs/models.md). Loading
# the same weights through compat must reproduce them.
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402

OUTPUTS_FILE = COMPAT_DIR.parent / "compat_outputs.json"
OUTPUTS = json.loads(OUTPUTS_FILE.read_text()) if OUTPUTS_FILE.is_file() else {}
# one 32-px config per distinct code path runs by default (1-3 s each); the others (deeper or sub-VP twins of
# these, the 256-px networks at ~15 s each, the 1024-px one) with SCORE_SDE_SLOW_TESTS=1
FAST_OUTPUTS = {"ve__cifar10_ncsnpp", "ve__cifar10_ncsnpp_continuous", "vp__cifar10_ddpmpp",
                "vp__ddpm__cifar10_continuous"}


def layout_weights(layout: dict, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Deterministic weights in the original layout (sigmas left out), scaled so activations stay O(1):
    matrices / kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.01), other vectors N(0, 0.01)."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for key, shape in layout["state_dict"]:
        if key == "sigmas":
            continue
        w = torch.randn(shape, generator=g)
        if len(shape) >= 2:
            w /= math.sqrt(math.prod(shape[1:]))
        elif "GroupNorm" in key and key.endswith("weight"):
            w = 1.0 + 0.1 * w
        elif not key.endswith(".W"):          # Fourier frequencies stay N(0, 1)
            w = 0.1 * w
        out[key] = w
    return out


def fingerprint_inputs(config, batch: int):
    """Fixed inputs [batch, C, S, S] ~ N(0, 1) and the labels the network sees for this SDE / time mode."""
    g = torch.Generator().manual_seed(1)
    c, s, m = config.data.num_channels, config.data.image_size, config.model
    x = torch.randn(batch, c, s, s, generator=g)
    if not config.training.continuous:
        k = torch.randint(0, m.num_scales, (batch,), generator=g)                # level / time-step index
        return x, (k if m.name == "ncsn" else k.float())
    u = torch.rand(batch, generator=g, dtype=torch.float64)
    if config.training.sde == "vesde":
        return x, (m.sigma_min * (m.sigma_max / m.sigma_min) ** u).float()      # sigma(t)
    return x, (999.0 * u).float()                                               # t * (N - 1)


def fingerprint(out: torch.Tensor) -> dict:
    """Shape, norm, 8 random projections and the first 16 values of a network output (float64)."""
    o = out.detach().to(torch.float64).flatten()
    v = torch.randn(8, o.numel(), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return {"shape": list(out.shape), "norm": o.norm().item(), "proj": (v @ o / math.sqrt(o.numel())).tolist(),
            "head": o[:16].tolist()}


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_converted_weights_reproduce_the_original_outputs(name):
    if name not in FAST_OUTPUTS and not os.environ.get("SCORE_SDE_SLOW_TESTS"):
        pytest.skip("a twin of a default case, or 256 / 1024 px: set SCORE_SDE_SLOW_TESTS=1")
    ref, config = OUTPUTS[name], config_for(name)
    with torch.device("meta"):
        model = get_model(config)
    model = model.to_empty(device="cpu").eval()         # every tensor is overwritten below: skip the init
    from score_sde.models.ncsnpp import get_sigmas
    if hasattr(model, "sigmas"):
        model.sigmas.copy_(torch.as_tensor(get_sigmas(config)))
    src = {"model": OrderedDict(("module." + k, v) for k, v in layout_weights(load_layout(name)).items())}
    compat.load_score_sde_pytorch(src, model, which="model")
    x, labels = fingerprint_inputs(config, ref["shape"][0])
    with torch.no_grad():
        got = fingerprint(model(x, labels))
    assert got["shape"] == ref["shape"]
    scale = ref["norm"] / math.sqrt(math.prod(ref["shape"]))          # rms of the original output
    assert abs(got["norm"] - ref["norm"]) <= 1e-5 * ref["norm"]
    assert max(abs(a - b) for a, b in zip(got["proj"], ref["proj"])) <= 1e-5 * scale
    assert max(abs(a - b) for a, b in zip(got["head"], ref["head"])) <= 1e-5 * scale


def test_original_outputs_cover_every_layout():
    # score_sde_pytorch's NCSN cannot run without patching its code (docs/models.md, "Architecture"); its
    # bitwise equality was checked out of tree on the patched original instead of recording a fingerprint
    assert sorted(OUTPUTS) == [n for n in LAYOUTS if n != "ve__ncsn__cifar10"]
