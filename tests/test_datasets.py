"""Data set tests on small fake files in tmp_path (real CIFAR-10 python format, PNG/JPEG images)."""
import os
import pickle
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from score_sde import datasets


def cfg(**data):
    return SimpleNamespace(data=SimpleNamespace(**data))


def _all(ds):
    return torch.stack([ds[i] for i in range(len(ds))])


# ---------------------------------------------------------------------------- toys
@pytest.mark.parametrize("name", ["checkerboard", "moons", "swiss_roll"])
def test_toys_shape_and_determinism(name):
    c = cfg(dataset=name, num_train=300, num_eval=50, seed=3)
    tr, ev = datasets.get_dataset(c)
    assert len(tr) == 300 and len(ev) == 50 and tr.shape == (2,)
    x = _all(tr)
    assert x.dtype == torch.float32 and x.shape == (300, 2) and torch.isfinite(x).all()
    assert torch.equal(x, _all(datasets.get_dataset(c)[0]))             # same seed, same data
    assert not torch.equal(x[:50], _all(ev))                             # train and eval differ
    assert not torch.equal(x, _all(datasets.get_dataset(cfg(dataset=name, num_train=300, num_eval=50, seed=4))[0]))


def test_checkerboard_support():
    x = datasets.sample_toy("checkerboard", 4000, 0)
    assert (x.abs() <= 2).all()
    cell = (x.floor() + 2).long()  # cell indices 0..3
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)
    assert (counts[counts > 0] > 400).all() and (counts > 0).sum() == 8


def test_swiss_roll_radius_matches_angle():
    x = datasets.sample_toy("swiss_roll", 2000, 0)
    r = x.norm(dim=1) * 5  # radius = angle in [1.5 pi, 4.5 pi] before noise
    assert r.min() > 1.5 * np.pi - 1.5 and r.max() < 4.5 * np.pi + 1.5


def test_toy_errors():
    with pytest.raises(ValueError, match="unknown config.data.dataset"):
        datasets.get_dataset(cfg(dataset="nope"))
    with pytest.raises(ValueError, match="num_train"):
        datasets.get_dataset(cfg(dataset="moons", num_train=0))


def test_toy_ring_and_its_density():
    from score_sde import toy
    tr, _ = datasets.get_dataset(cfg(dataset="toy_ring", num_train=2000, num_eval=10))
    x = _all(tr).double()
    gm = datasets.get_toy_density(cfg(dataset="toy_ring"))
    ref = toy.ring_mixture()
    assert torch.equal(gm.means, ref.means)
    # samples land on every component about equally often
    occ = torch.bincount(gm.assign(x), minlength=gm.num_components).double() / len(x)
    assert (occ - 1 / gm.num_components).abs().max() < 0.04
    # centred space: the density of 2x - 1 is the pushed-forward mixture (change of variables in 2-D)
    gmc = datasets.get_toy_density(cfg(dataset="toy_ring", centered=True))
    scaler = datasets.get_data_scaler(cfg(dataset="toy_ring", centered=True))
    assert torch.allclose(gmc.log_prob(scaler(x[:20])), ref.log_prob(x[:20]) - 2 * np.log(2.0), atol=1e-10)
    assert datasets.get_toy_density(cfg(dataset="moons")) is None


# ---------------------------------------------------------------------------- digits
def test_digits_split_shapes_and_levels():
    tr, ev = datasets.get_dataset(cfg(dataset="digits", image_size=8, num_channels=1))
    assert (len(tr), len(ev)) == (1497, 300) and tr.num_levels == 17 and tr.shape == (1, 8, 8)
    from sklearn.datasets import load_digits
    raw = torch.from_numpy(load_digits().images).float()
    x = _all(tr)[:, 0]
    assert x.dtype == torch.float32
    assert torch.allclose(x * 17 - 0.5, x.mul(17).sub(0.5).round())   # bin centres (k + 0.5)/17
    # the split is disjoint and covers the data set: match every item back to its raw image
    keys = {tuple(im.flatten().tolist()) for im in raw}
    got = [tuple((im * 17 - 0.5).round().flatten().tolist()) for im in torch.cat([x, _all(ev)[:, 0]])]
    assert set(got) <= keys and len(got) == 1797
    tr_idx, ev_idx = datasets.fixed_split(1797, 300)
    assert len(set(tr_idx) & set(ev_idx)) == 0 and len(set(tr_idx) | set(ev_idx)) == 1797
    assert torch.equal(x, (raw[torch.from_numpy(tr_idx)] + 0.5) / 17)


def test_digits_dequantization_stays_in_bin():
    torch.manual_seed(0)
    tr, _ = datasets.get_dataset(cfg(dataset="digits", uniform_dequantization=True))
    from sklearn.datasets import load_digits
    tr_idx, _ = datasets.fixed_split(1797, 300)
    k = torch.from_numpy(load_digits().images[tr_idx[:200]]).float().unsqueeze(1)
    x = torch.stack([tr[i] for i in range(200)])
    assert (k / 17 <= x).all() and (x < (k + 1) / 17).all()
    assert not torch.allclose(x, (k + 0.5) / 17)  # really random
    assert x.min() >= 0 and x.max() < 1


def test_digits_geometry_mismatch_is_clear():
    with pytest.raises(ValueError, match="image_size=8"):
        datasets.get_dataset(cfg(dataset="digits", image_size=32))
    with pytest.raises(ValueError, match="num_levels=17"):
        datasets.get_dataset(cfg(dataset="digits", num_levels=256))


# ---------------------------------------------------------------------------- CIFAR-10
def _fake_cifar_batches(n=4, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i, name in enumerate(datasets.CIFAR_TRAIN + datasets.CIFAR_TEST):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[:, 0] = i  # tag each batch
        out[name] = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                     b"data": data, b"filenames": [b"x.png"] * n}
    return out


def _write_cifar_folder(root, batches):
    folder = root / datasets.CIFAR_DIR
    folder.mkdir(parents=True)
    for name, b in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump(b, f)
    return folder


def _write_cifar_tar(root, batches):
    folder = _write_cifar_folder(root / "src", batches)
    archive = root / datasets.CIFAR_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=datasets.CIFAR_DIR)
    return archive


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_cifar_formats(tmp_path, layout):
    batches = _fake_cifar_batches()
    (_write_cifar_folder if layout == "folder" else _write_cifar_tar)(tmp_path, batches)
    tr, ev = datasets.get_dataset(cfg(dataset="cifar10", root=str(tmp_path), random_flip=False))
    assert (len(tr), len(ev)) == (20, 4) and tr.shape == (3, 32, 32) and tr.num_levels == 256
    expected = torch.from_numpy(batches["data_batch_2"][b"data"][1].reshape(3, 32, 32)).float()
    assert torch.equal(tr[5], (expected + 0.5) / 256)  # item 5 = batch 2, row 1 (CHW, row-major)
    assert torch.equal(ev[0][0, 0, 0], torch.tensor(5.5 / 256))  # test batch tagged 5


def test_cifar_root_may_be_the_extracted_folder_or_archive(tmp_path):
    batches = _fake_cifar_batches(n=2)
    folder = _write_cifar_folder(tmp_path / "a", batches)
    archive = _write_cifar_tar(tmp_path / "b", batches)
    for root in (folder, archive):
        tr, ev = datasets.get_dataset(cfg(dataset="cifar10", root=str(root)))
        assert (len(tr), len(ev)) == (10, 2)


def test_cifar_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz.*data_batch_1"):
        datasets.get_dataset(cfg(dataset="cifar10", root=str(tmp_path)))
    batches = _fake_cifar_batches(n=2)
    folder = _write_cifar_folder(tmp_path, batches)
    os.remove(folder / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        datasets.get_dataset(cfg(dataset="cifar10", root=str(tmp_path)))
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="data_batch_3 is malformed.*3072"):
        datasets.get_dataset(cfg(dataset="cifar10", root=str(tmp_path)))
    with open(folder / "data_batch_3", "wb") as f:
        f.write(b"garbage")
    with pytest.raises(ValueError, match="data_batch_3 is malformed"):
        datasets.get_dataset(cfg(dataset="cifar10", root=str(tmp_path)))


def test_cifar_batch_with_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    batches = _fake_cifar_batches(n=2)
    folder = _write_cifar_folder(tmp_path, batches)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="not allowed"):
        datasets.get_dataset(cfg(dataset="cifar10", root=str(tmp_path)))
    assert not marker.exists()


def test_cifar_corrupt_archive(tmp_path):
    (tmp_path / datasets.CIFAR_ARCHIVE).write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="not a readable tar.gz"):
        datasets.get_dataset(cfg(dataset="cifar10", root=str(tmp_path)))


def test_flip_only_on_train(tmp_path):
    batches = _fake_cifar_batches(n=2)
    _write_cifar_folder(tmp_path, batches)
    tr, ev = datasets.get_dataset(cfg(dataset="cifar10", root=str(tmp_path), random_flip=True))
    tr0, ev0 = datasets.get_dataset(cfg(dataset="cifar10", root=str(tmp_path), random_flip=False))
    torch.manual_seed(0)
    flips = [not torch.equal(tr[0], tr0[0]) for _ in range(200)]
    assert 60 < sum(flips) < 140
    for _ in range(200):
        x = tr[0]
        assert torch.equal(x, tr0[0]) or torch.equal(x, tr0[0].flip(-1))
        assert torch.equal(ev[0], ev0[0])


def test_dataloader_worker_seeding_governs_dequantization(tmp_path):
    from torch.utils.data import DataLoader
    tr, _ = datasets.get_dataset(cfg(dataset="digits", uniform_dequantization=True))
    sub = torch.utils.data.Subset(tr, range(8))
    torch.manual_seed(1)
    a = next(iter(DataLoader(sub, batch_size=8)))
    torch.manual_seed(1)
    b = next(iter(DataLoader(sub, batch_size=8)))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------- image folder
def _write_images(root):
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (17, 23), (64, 64), (33, 12), (20, 20), (50, 70), (9, 9), (31, 45), (28, 28), (12, 60)]
    (root / "sub").mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        ext = "png" if i % 2 == 0 else "jpg"
        folder = root / "sub" if i % 3 == 0 else root
        Image.fromarray(arr).save(folder / f"img{i:02d}.{ext}")
    (root / "notes.txt").write_text("not an image")


@pytest.mark.parametrize("channels", [3, 1])
def test_image_folder(tmp_path, channels):
    _write_images(tmp_path)
    c = cfg(dataset="image_folder", root=str(tmp_path), image_size=16, num_channels=channels,
            eval_fraction=0.2, uniform_dequantization=True)
    tr, ev = datasets.get_dataset(c)
    assert (len(tr), len(ev)) == (8, 2) and tr.num_levels == 256
    assert set(tr.files).isdisjoint(ev.files) and len(set(tr.files) | set(ev.files)) == 10
    assert tr.files == datasets.get_dataset(c)[0].files  # fixed split
    torch.manual_seed(0)
    for ds in (tr, ev):
        for i in range(len(ds)):
            x = ds[i]
            assert x.shape == (channels, 16, 16) and x.dtype == torch.float32
            assert x.min() >= 0 and x.max() < 1


def test_image_folder_centre_crop(tmp_path):
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, 10:20] = 200  # only the central 10x10 square is bright
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).save(tmp_path / "b.png")
    levels = datasets.load_image_levels(str(tmp_path / "a.png"), 10, "RGB")
    assert levels.shape == (3, 10, 10) and (levels == 200).all()


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.get_dataset(cfg(dataset="image_folder", root=str(tmp_path / "missing")))
    with pytest.raises(FileNotFoundError, match="holds no"):
        datasets.get_dataset(cfg(dataset="image_folder", root=str(tmp_path)))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "bad2.png").write_bytes(b"not a png")
    tr, _ = datasets.get_dataset(cfg(dataset="image_folder", root=str(tmp_path), image_size=8))
    with pytest.raises(ValueError, match="cannot read image .*bad"):
        tr[0]
    with pytest.raises(ValueError, match="eval_fraction"):
        datasets.get_dataset(cfg(dataset="image_folder", root=str(tmp_path), eval_fraction=1.5))


# ---------------------------------------------------------------------------- scalers and keys
def test_scalers_are_inverse():
    x = torch.rand(5, 3)
    for centered in (False, True):
        c = cfg(dataset="digits", centered=centered)
        s, inv = datasets.get_data_scaler(c), datasets.get_data_inverse_scaler(c)
        assert torch.allclose(inv(s(x)), x)
    assert torch.equal(datasets.get_data_scaler(cfg(dataset="digits", centered=True))(torch.tensor([0.0, 1.0])),
                       torch.tensor([-1.0, 1.0]))


def test_config_keys_are_documented():
    root = os.path.join(os.path.dirname(__file__), "..")
    doc = open(os.path.join(root, "docs", "data.md"), encoding="utf-8").read()
    for key in datasets.CONFIG_KEYS:
        assert f"`{key}`" in doc, key
