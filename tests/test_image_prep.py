"""LSUN / FFHQ-style image preprocessing and the .npy cache, on small images the tests create."""
import io
import json
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from score_sde import image_prep


def _image(w, h, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def sources(tmp_path):
    """The same 5 images (different shapes) as a nested folder, a .zip and a .tar.gz."""
    shapes = [(12, 8), (8, 12), (16, 16), (10, 9), (9, 10)]
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    names = []
    for i, (w, h) in enumerate(shapes):
        name = f"sub/{i}.png" if i % 2 else f"{i}.png"
        Image.fromarray(_image(w, h, i)).save(folder / name)
        names.append(name)
    (folder / "notes.txt").write_text("not an image")
    zpath, tpath = tmp_path / "imgs.zip", tmp_path / "imgs.tar.gz"
    with zipfile.ZipFile(zpath, "w") as z, tarfile.open(tpath, "w:gz") as t:
        for n in names:
            z.write(folder / n, n)
            t.add(folder / n, n)
    return {"folder": str(folder), "zip": str(zpath), "tar": str(tpath), "names": sorted(names)}


def test_folder_and_archives_give_the_same_cache(sources, tmp_path):
    caches = {}
    for kind in ("folder", "zip", "tar"):
        assert image_prep.list_images(sources[kind]) == sources["names"]
        dst = str(tmp_path / f"{kind}.npy")
        assert image_prep.build_cache(sources[kind], dst, size=4) == 5
        caches[kind] = np.load(dst)
    assert caches["folder"].shape == (5, 3, 4, 4) and caches["folder"].dtype == np.uint8
    assert np.array_equal(caches["folder"], caches["zip"]) and np.array_equal(caches["folder"], caches["tar"])
    meta = json.load(open(str(tmp_path / "folder.npy") + ".json"))
    assert meta["count"] == 5 and meta["method"] == "crop_resize" and meta["first"] == sources["names"][0]


def test_crop_resize_is_central_square_then_bicubic(sources, tmp_path):
    raw = _image(12, 8, 0)                        # "0.png": 12 wide, 8 high -> columns 2..9
    expected = np.asarray(Image.fromarray(raw[:, 2:10]).resize((4, 4), Image.BICUBIC)).transpose(2, 0, 1)
    data = open(f"{sources['folder']}/0.png", "rb").read()
    assert np.array_equal(image_prep.preprocess(data, 4, "crop_resize"), expected)
    assert np.array_equal(image_prep.preprocess(data, 8, "crop_resize"), raw[:, 2:10].transpose(2, 0, 1))
    grey = image_prep.preprocess(data, 4, "crop_resize", channels=1)
    assert grey.shape == (1, 4, 4)


def test_resize_small_scales_the_short_side_then_crops(sources):
    raw = _image(12, 8, 0)
    small = np.asarray(Image.fromarray(raw).resize((6, 4), Image.BILINEAR))   # short side 8 -> 4
    data = open(f"{sources['folder']}/0.png", "rb").read()
    assert np.array_equal(image_prep.preprocess(data, 4, "resize_small"), small[:, 1:5].transpose(2, 0, 1))


def test_box_downsampling_rounds_at_every_halving():
    a = np.zeros((4, 4, 1), dtype=np.uint8)
    a[:2, :2, 0] = [[0, 1], [1, 1]]              # mean 0.75 -> 1
    a[:2, 2:, 0] = [[0, 0], [1, 1]]              # mean 0.5 -> 0 (rint: half to even)
    a[2:, :2, 0] = [[3, 3], [3, 4]]              # mean 3.25 -> 3
    a[2:, 2:, 0] = [[255, 255], [255, 254]]      # mean 254.75 -> 255
    assert image_prep.box_downsample(a, 2)[..., 0].tolist() == [[1, 0], [3, 255]]
    assert image_prep.box_downsample(a, 1)[..., 0].tolist() == [[round((1 + 0 + 3 + 255) / 4)]]  # 64.75 -> 65
    assert np.array_equal(image_prep.box_downsample(a, 4), a)
    with pytest.raises(ValueError, match="size \\* 2\\^k"):
        image_prep.box_downsample(np.zeros((6, 6, 3), np.uint8), 4)


def test_cached_images_levels_dequantization_flip_and_split(sources, tmp_path):
    dst = str(tmp_path / "c.npy")
    image_prep.build_cache(sources["folder"], dst, size=4, num_workers=1)      # the worker-process path
    levels = torch.from_numpy(np.load(dst)).float()
    image_prep.build_cache(sources["folder"], str(tmp_path / "serial.npy"), size=4)
    assert np.array_equal(np.load(dst), np.load(str(tmp_path / "serial.npy")))
    ds = image_prep.CachedImages(dst)
    assert len(ds) == 5 and ds.shape == (3, 4, 4) and torch.equal(ds[2], (levels[2] + 0.5) / 256)
    torch.manual_seed(0)
    deq = image_prep.CachedImages(dst, dequantize=True)[1]
    assert (deq >= levels[1] / 256).all() and (deq < (levels[1] + 1) / 256).all() and not torch.equal(deq, ds[1])
    flips = {torch.equal(image_prep.CachedImages(dst, flip=True)[0], ds[0].flip(-1)) for _ in range(20)}
    assert flips == {True, False}
    train, ev = image_prep.cached_datasets(dst, eval_fraction=0.4, flip=True)
    assert sorted(list(train.indices) + list(ev.indices)) == list(range(5)) and len(ev) == 2
    assert ev.flip is False and train.flip is True
    clone = pickle.loads(pickle.dumps(ev))                      # what a DataLoader worker receives
    assert clone._array is None and torch.equal(clone[1], ev[1]) and torch.equal(ev[1], ds[ev.indices[1]])
    loader = torch.utils.data.DataLoader(ev, batch_size=2)
    assert next(iter(loader)).shape == (2, 3, 4, 4)


def test_command_line_writes_the_cache(sources, tmp_path, capsys):
    dst = str(tmp_path / "out" / "ffhq.npy")
    assert image_prep.main(["--src", sources["zip"], "--dst", dst, "--size", "2", "--limit", "3"]) == 0
    assert np.load(dst).shape == (3, 3, 2, 2) and "wrote 3 images" in capsys.readouterr().out


def test_errors_name_the_problem(sources, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a folder nor"):
        image_prep.list_images(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        image_prep.list_images(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown preprocessing method"):
        image_prep.build_cache(sources["folder"], str(tmp_path / "x.npy"), 4, method="lanczos")
    with pytest.raises(ValueError, match="must end in .npy"):
        image_prep.build_cache(sources["folder"], str(tmp_path / "x.bin"), 4)
    with pytest.raises(ValueError, match="cannot decode image bad.png"):
        image_prep.preprocess(b"not a png", 4, name="bad.png")
    with pytest.raises(FileNotFoundError, match="python -m score_sde.image_prep"):
        image_prep.CachedImages(str(tmp_path / "none.npy"))
    np.save(tmp_path / "floats.npy", np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="not an image cache"):
        image_prep.CachedImages(str(tmp_path / "floats.npy"))
    with pytest.raises(ValueError, match="eval_fraction"):
        image_prep.fixed_split(5, 1.0)
    assert not list(tmp_path.glob("*.tmp.npy"))


def test_worker_batches_keep_order_and_cover_everything():
    assert list(image_prep._chunks(iter(range(5)), 2)) == [[0, 1], [2, 3], [4]]
    assert list(image_prep._chunks(iter([]), 3)) == []
