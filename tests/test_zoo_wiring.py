"""Issue 14 wiring: reference statistics computed once per data set (eval.fid_stats), IS and KID next
to FID in report.json, the image_prep cache as a data set (data.cache) and DataLoader workers."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from score_sde import builders, checkpoint, datasets, distributed, evaluation, image_prep, inception, metrics, training
from score_sde.pipeline.spec import Spec
from test_evaluation import _sampler_dir, _tiny_digits_config


@pytest.fixture
def feature_calls(monkeypatch):
    """Counts Inception passes: (number of images) per call."""
    calls = []
    real = inception.inception_features

    def counted(net, images, *args, **kwargs):
        calls.append(int(images.shape[0]))
        return real(net, images, *args, **kwargs)

    monkeypatch.setattr(inception, "inception_features", counted)
    return calls


def _two_checkpoints(cfg, workdir: str) -> None:
    for step in (1, 2):
        torch.manual_seed(step)
        state = builders.create_state(cfg, torch.device("cpu"))
        checkpoint.save_checkpoint(checkpoint.checkpoint_path(workdir, step),
                                   builders.state_dict_for_checkpoint(dict(state, step=step)))


def test_reference_stats_once_and_is_kid_in_report(tmp_path, inception_file, feature_calls):
    stats = str(tmp_path / "digits_stats.npz")
    wd = str(tmp_path / "wd")
    cfg = _tiny_digits_config(inception_file, begin_ckpt=1, end_ckpt=2, num_reference=3, fid_stats=stats,
                              num_samples=2, batch_size=2,
                              enable_is=True, enable_kid=True, fid_rounding="floor")
    _two_checkpoints(cfg, wd)
    evaluation.evaluate(cfg, wd)
    assert feature_calls == [2, 3, 2]  # samples, the reference (once, written to fid_stats), samples again
    ref = metrics.load_reference_stats(stats)
    assert ref["pool_3"].shape == (3, 2048) and ref["logits"].shape == (3, 1008)
    out = _sampler_dir(os.path.join(wd, "eval", "ckpt_2"), "unipc")
    rep = json.load(open(os.path.join(out, "report.json")))
    m = rep["metrics"]
    assert rep["settings"]["inception"] == {"is": True, "kid": True, "rounding": "floor", "fid_stats": stats}
    samples = torch.from_numpy(np.load(os.path.join(out, "samples.npz"))["samples"])
    net, fc = inception.load_inception(inception_file), inception.load_inception_logits(inception_file)
    feats = inception.inception_features(net, metrics.to_uint8(samples, "floor"), batch_size=2)
    assert m["fid"] == pytest.approx(metrics.fid_to_reference(feats, ref), rel=1e-6)
    assert m["kid"] == pytest.approx(metrics.kernel_inception_distance(feats, ref["pool_3"]), rel=1e-6)
    is_mean, is_std = metrics.inception_score(inception.inception_logits(fc, feats))
    assert m["inception_score"] == pytest.approx(is_mean, rel=1e-6) and m["inception_score_std"] == is_std
    # the file now exists: the reference is read, never recomputed (any later run, any checkpoint)
    ctx = evaluation._context(Spec.from_config(cfg))
    feature_calls.clear()
    again = evaluation._reference_stats(ctx, net, fc, torch.zeros(3, 1, 8, 8))
    assert feature_calls == [] and np.array_equal(again["pool_3"], ref["pool_3"])
    with pytest.raises(ValueError, match="fid_rounding"):
        Spec.from_config(cfg, overrides={"eval.fid_rounding": "trunc"})


def _png_folder(folder, n: int = 5) -> None:
    from PIL import Image
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))


def _folder_spec(tmp_path, **data) -> Spec:
    return Spec.from_config({"data": dict(dataset="image_folder", root=str(tmp_path / "imgs"), image_size=8,
                                          num_channels=3, eval_fraction=0.2, **data)})


def test_data_cache_written_once_from_root_and_read(tmp_path):
    _png_folder(str(tmp_path / "imgs"))
    cache = str(tmp_path / "c" / "imgs8.npy")
    spec = _folder_spec(tmp_path, cache=cache, preprocess="resize_small")
    train, evals = datasets.get_dataset(spec)
    assert os.path.isfile(cache) and len(train) == 4 and len(evals) == 1 and train.shape == (3, 8, 8)
    arr = np.load(cache)
    names = image_prep.list_images(str(tmp_path / "imgs"))
    expected = image_prep.preprocess(open(os.path.join(str(tmp_path / "imgs"), names[0]), "rb").read(), 8,
                                     "resize_small")
    np.testing.assert_array_equal(arr[0], expected)
    assert json.load(open(cache + ".json"))["method"] == "resize_small"
    mtime = os.path.getmtime(cache)
    datasets.get_dataset(spec)  # present: read, not rebuilt
    assert os.path.getmtime(cache) == mtime
    with pytest.raises(ValueError, match="data.cache .* holds 8-bit images of shape"):
        datasets.get_dataset(_folder_spec(tmp_path, cache=cache).replace(data={"image_size": 16}))
    with pytest.raises(ValueError, match="data.preprocess"):
        _folder_spec(tmp_path, preprocess="bilinear")


def test_num_workers_give_the_same_batches(tmp_path):
    _png_folder(str(tmp_path / "imgs"), n=8)
    spec = _folder_spec(tmp_path, cache=str(tmp_path / "imgs8.npy"), random_flip=True, uniform_dequantization=True)
    train, _ = datasets.get_dataset(spec)
    info = distributed.DistInfo(0, 1, 0, torch.device("cpu"))
    first = [next(training.batch_iterator(train, 3, 0, 5, info, num_workers=w)) for w in (0, 2)]
    torch.testing.assert_close(first[0], first[1], rtol=0, atol=0)
