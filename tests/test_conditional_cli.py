"""Issue 11, the CLI half: labels from every data source, the conditional spec fields, the conditional modes
(sample with a label / guidance, train_classifier, inpaint) on a tiny digits model, and unconditional runs
unchanged."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from score_sde import datasets, training
from score_sde.models import get_model
from score_sde.pipeline import conditional
from score_sde.pipeline.spec import Spec, is_spec_field
from tests.test_datasets import _fake_cifar_batches, _write_cifar_folder
from tests.test_training import ENV, ROOT, tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def _spec(**data):
    return Spec.from_config({"data": data, "training": {"sde": "vpsde"}})


# ------------------------------------------------------------------------------------------ labels
def test_digits_labels_are_sklearn_targets_and_images_unchanged():
    from sklearn.datasets import load_digits
    plain = datasets.get_dataset(_spec(dataset="digits", image_size=8, num_channels=1, num_levels=17))
    labelled = datasets.get_dataset(_spec(dataset="digits", image_size=8, num_channels=1, num_levels=17,
                                          num_classes=10))
    target = load_digits().target
    _, ev_idx = datasets.fixed_split(len(target), datasets.DIGITS_NUM_EVAL)
    assert torch.equal(labelled[1].labels, torch.from_numpy(target[ev_idx]).long())
    for p, lab in zip(plain, labelled):
        x, y = lab[3]
        assert torch.equal(x, p[3]) and y.dtype == torch.long and lab.shape == p.shape
    assert torch.is_tensor(plain[0][0])  # unconditional: images only, as before


def test_cifar_labels_are_parsed(tmp_path):
    batches = _fake_cifar_batches()
    _write_cifar_folder(tmp_path, batches)
    tr, ev = datasets.get_dataset(_spec(dataset="cifar10", root=str(tmp_path), num_classes=10))
    assert tr.labels.tolist() == sum((batches[n][b"labels"] for n in datasets.CIFAR_TRAIN), [])
    assert ev.labels.tolist() == batches["test_batch"][b"labels"]


def test_image_folder_one_subfolder_per_class(tmp_path):
    from PIL import Image
    for k, name in enumerate(["cat", "dog", "emu"]):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 60 * k + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    tr, ev = datasets.get_dataset(_spec(dataset="image_folder", root=str(tmp_path), image_size=8, num_classes=3,
                                        eval_fraction=0.25))
    for ds in (tr, ev):
        for i in range(len(ds)):
            x, y = ds[i]
            assert int(y) == int(round(float(x[0, 0, 0]) * 256 - 0.5)) // 60  # level 60 k + i -> class k
    with pytest.raises(ValueError, match="num_classes=3"):
        datasets.get_dataset(_spec(dataset="image_folder", root=str(tmp_path), image_size=8, num_classes=2))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="class subfolders"):
        datasets.get_dataset(_spec(dataset="image_folder", root=str(tmp_path), image_size=8, num_classes=3))


# ------------------------------------------------------------------------------------------ spec
def test_label_and_guidance_are_sampling_fields_not_sampler_options():
    assert is_spec_field("sampling.label") and is_spec_field("sampling.guidance")
    s = Spec.from_config({"sampling": {"method": "ddim", "steps": 7, "label": 3}},
                         overrides={"sampling.guidance": "2", "sampling.method": "unipc", "inpaint.mask": "box"})
    assert (s.sampling.method, s.sampling.label, s.sampling.guidance, dict(s.sampling.options)) == ("unipc", 3, 2.0, {})
    assert s.inpaint.mask == "box" and Spec.from_config(s.to_json()) == s
    with pytest.raises(ValueError, match="sampling.label"):
        Spec.from_config({"sampling": {"label": -1}})
    with pytest.raises(ValueError, match="inpaint.mask"):
        Spec.from_config({"inpaint": {"mask": "circle"}})


def test_unconditional_model_and_batches_unchanged():
    config = tiny("vp/digits_ddpmpp_continuous")
    torch.manual_seed(0)
    a = get_model(Spec.from_config(config))
    torch.manual_seed(0)
    b = get_model(Spec.from_config(config, overrides={"data.num_classes": "10"}))
    assert not hasattr(a, "class_embed") and set(b.state_dict()) - set(a.state_dict()) == {"class_embed.weight"}
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    batch = torch.randn(4, 1, 8, 8)
    assert training.split_labels(batch, Spec.from_config(config), torch.device("cpu"), True)[0] is batch


# ------------------------------------------------------------------------------------------ CLI
TINY = {"model.num_scales": "50", "training.batch_size": "8", "training.n_iters": "2",
        "training.log_freq": "1", "training.eval_freq": "1", "training.snapshot_freq": "2",
        "training.snapshot_sampling": "False", "sampling.steps": "3", "device": "cpu", "eval.num_samples": "20",
        "classifier.n_iters": "2", "classifier.batch_size": "8", "inpaint.num_images": "3", "inpaint.steps": "3",
        "inpaint.particles": "2"}


def _run(workdir, mode, eval_folder="eval", **overrides):
    """main.run in this process (the command line minus flag parsing; one subprocess test checks that)."""
    import main
    sys.path.insert(0, ROOT)
    from configs.vp.digits_conditional import get_config
    config = get_config()
    config.model.nf = 16  # an architecture field: set on the config, as config_flags does
    main.run(config, str(workdir), mode, eval_folder, {**TINY, **overrides}, progress=False)


def _npz(folder):
    (sub,) = os.listdir(folder)
    return np.load(os.path.join(folder, sub, "samples.npz"))


def test_cli_conditional_modes(tmp_path):
    wd = tmp_path / "run"
    _run(wd, "train")
    _run(wd, "sample")  # label None: one row per class
    npz = _npz(wd / "eval" / "sample_2")
    assert npz["samples"].shape == (20, 1, 8, 8) and npz["labels"].tolist() == sum([[c, c] for c in range(10)], [])
    _run(wd, "sample", "g", **{"sampling.label": "7", "sampling.guidance": "1.5"})
    assert set(_npz(wd / "g" / "sample_2")["labels"]) == {7}
    _run(wd, "train_classifier")
    assert os.path.isfile(wd / "classifier" / "classifier.pth")
    _run(wd, "sample", "c", **{"sampling.label": "1", "sampling.classifier": str(wd)})
    assert _npz(wd / "c" / "sample_2")["samples"].shape == (20, 1, 8, 8)
    _run(wd, "inpaint", **{"inpaint.mask": "box"})
    out = wd / "eval" / "inpaint_2" / "smc_box"
    rep = json.load(open(out / "report.json"))
    assert rep["num_images"] == 3 and np.isfinite(rep["mse_unobserved"]) and os.path.isfile(out / "grid.png")
    z = np.load(out / "restored.npz")
    m = z["mask"].astype(bool)
    assert np.allclose(z["restored"][m], z["truth"][m], atol=1e-6)  # observed pixels kept
    with pytest.raises(ValueError, match="choose a label < 10"):
        _run(wd, "sample", **{"sampling.label": "10"})
    with pytest.raises(ValueError, match="needs RGB data"):
        _run(wd, "colorize")
    # the command line: the same error in one line, exit status 1
    cmd = [sys.executable, "main.py", "--config=configs/vp/digits_conditional.py", f"--workdir={wd}",
           "--mode=sample", "--config.model.nf=16", "--config.model.num_scales=50", "--config.sampling.label=10"]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "choose a label < 10" in r.stderr and r.stderr.count("\n") == 1, r.stderr[-500:]


def test_guidance_on_an_unconditional_model_is_one_line_error():
    spec = Spec.from_config(tiny("vp/digits_ddpmpp_continuous"), overrides={"sampling.guidance": "1"})
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        conditional.check_labels(spec)
