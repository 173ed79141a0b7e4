"""FID protocol of the papers: uint8 samples, cached reference features (.npz), Inception Score and KID."""
import math

import numpy as np
import pytest
import torch

from score_sde import inception, metrics


def _rng(seed):
    return np.random.default_rng(seed)


def test_to_uint8_rounds_and_recovers_data_levels():
    k = torch.arange(256, dtype=torch.float64)
    centres = (k + 0.5) / 256                                  # our data sets' bin centres
    assert torch.equal(metrics.to_uint8(centres), k.to(torch.uint8))
    assert torch.equal(metrics.to_uint8(k / 255), k.to(torch.uint8))        # score_sde_pytorch's k / 255
    x = torch.tensor([-0.2, 0.0, 0.51 / 255, 0.49 / 255, 254.6 / 255, 1.3])
    assert metrics.to_uint8(x).tolist() == [0, 0, 1, 0, 255, 255]
    assert metrics.to_uint8(x, rounding="floor").tolist() == [0, 0, 0, 0, 254, 255]   # score_sde_pytorch
    with pytest.raises(ValueError, match="rounding"):
        metrics.to_uint8(x, rounding="nearest")


def _direct_is(logits):
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    py = p.mean(0)
    return math.exp(np.mean([sum(pi[j] * math.log(pi[j] / py[j]) for j in range(len(py))) for pi in p]))


def test_inception_score_against_direct_formula_and_closed_forms():
    z = _rng(0).normal(size=(40, 7)) * 3
    assert metrics.inception_score(z)[0] == pytest.approx(_direct_is(z), rel=1e-12)
    mean, std = metrics.inception_score(z, splits=4)
    parts = [_direct_is(p) for p in np.array_split(z, 4)]
    assert mean == pytest.approx(np.mean(parts), rel=1e-12) and std == pytest.approx(np.std(parts), rel=1e-10)
    # K equally frequent, fully confident classes: IS = K; identical predictions: IS = 1
    confident = np.eye(5)[np.arange(50) % 5] * 200.0
    assert metrics.inception_score(confident)[0] == pytest.approx(5.0, rel=1e-9)
    assert metrics.inception_score(np.tile(z[:1], (9, 1)))[0] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="splits"):
        metrics.inception_score(z[:3], splits=4)


def _direct_mmd2(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_against_direct_double_sum_and_blocks():
    x, y = _rng(1).normal(size=(12, 6)), _rng(2).normal(size=(9, 6)) + 0.5
    assert metrics.kernel_inception_distance(x, y) == pytest.approx(_direct_mmd2(x, y), rel=1e-12)
    blocks = np.mean([_direct_mmd2(a, b) for a, b in zip(np.array_split(x, 3), np.array_split(y, 3))])
    assert metrics.kernel_inception_distance(x, y, block_size=4) == pytest.approx(blocks, rel=1e-12)
    # unbiased: for two samples of one distribution the estimate is centred on 0, for a shift it is not
    same = [metrics.kernel_inception_distance(_rng(s).normal(size=(30, 4)), _rng(s + 99).normal(size=(30, 4)))
            for s in range(40)]
    assert abs(np.mean(same)) < 3 * np.std(same) / math.sqrt(len(same))
    assert metrics.kernel_inception_distance(x, y + 3.0) > 10 * np.std(same)
    with pytest.raises(ValueError, match="at least 2 features per block"):
        metrics.kernel_inception_distance(x[:3], y, block_size=1)


def test_kid_kernel_matches_scikit_learn():
    pairwise = pytest.importorskip("sklearn.metrics.pairwise")
    x, y = _rng(3).normal(size=(15, 8)), _rng(4).normal(size=(11, 8))
    kern = lambda a, b: pairwise.polynomial_kernel(a, b, degree=3, gamma=1.0 / 8, coef0=1)  # noqa: E731
    kxx, kyy, kxy = kern(x, x), kern(y, y), kern(x, y)
    mmd2 = ((kxx.sum() - np.trace(kxx)) / (15 * 14) + (kyy.sum() - np.trace(kyy)) / (11 * 10) - 2 * kxy.mean())
    assert metrics.kernel_inception_distance(x, y) == pytest.approx(mmd2, rel=1e-12)


def test_reference_stats_npz_round_trip(tmp_path):
    pool, logits = _rng(5).normal(size=(20, 16)).astype(np.float32), _rng(6).normal(size=(20, 10))
    path = str(tmp_path / "cifar10_stats.npz")
    metrics.save_reference_stats(path, pool, logits)
    with np.load(path) as f:                       # score_sde_pytorch's layout: plain arrays by name
        assert sorted(f.files) == ["logits", "pool_3"] and f["pool_3"].shape == (20, 16)
    ref = metrics.load_reference_stats(path)
    assert np.array_equal(ref["pool_3"], pool) and np.allclose(ref["logits"], logits, atol=1e-6)
    samples = _rng(7).normal(size=(20, 16)) + 1.0
    assert metrics.fid_to_reference(samples, ref) == pytest.approx(metrics.fid_from_features(pool, samples))
    metrics.save_reference_stats(path, pool)         # logits are optional
    assert set(metrics.load_reference_stats(path)) == {"pool_3"}
    np.savez(str(tmp_path / "other.npz"), mu=np.zeros(3))
    with pytest.raises(ValueError, match="no 'pool_3'"):
        metrics.load_reference_stats(str(tmp_path / "other.npz"))
    with pytest.raises(FileNotFoundError, match="compute them once"):
        metrics.load_reference_stats(str(tmp_path / "absent.npz"))


class _TinyFeatures(torch.nn.Module):
    """Stands in for Inception: per-channel means and a learned projection -> 2048 features."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2048)

    def forward(self, x):
        return self.proj(x.mean(dim=(2, 3)))


def test_reference_stats_are_computed_once_and_reused(tmp_path):
    torch.manual_seed(0)
    net, fc = _TinyFeatures(), torch.nn.Linear(2048, 10)
    images = metrics.to_uint8(torch.rand(6, 3, 8, 8))
    calls = []

    def load_images():
        calls.append(1)
        return images

    path = str(tmp_path / "stats.npz")
    first = inception.reference_stats(path, net, load_images, fc=fc, batch_size=4)
    second = inception.reference_stats(path, net, load_images, fc=fc)
    assert len(calls) == 1 and np.array_equal(first["pool_3"], second["pool_3"])
    expected = inception.inception_features(net, images.float() / 255.0)   # uint8 input == its /255 floats
    assert np.allclose(first["pool_3"], expected.numpy(), atol=1e-5)
    assert np.allclose(first["logits"], fc(expected).detach().numpy(), atol=1e-4)


def test_inception_logits_from_the_weights_file(inception_file, tmp_path):
    fc = inception.load_inception_logits(inception_file)
    assert fc.weight.shape == (1008, 2048)
    assert inception.inception_logits(fc, torch.ones(2, 2048)).shape == (2, 1008)
    path = str(tmp_path / "nofc.pth")
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="fc.weight"):
        inception.load_inception_logits(path)
    with pytest.raises(FileNotFoundError, match="pt_inception"):
        inception.load_inception_logits(str(tmp_path / "absent.pth"))


def test_fid_matches_pytorch_fid_when_installed():
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    a, b = _rng(8).normal(size=(300, 12)), _rng(9).normal(size=(300, 12)) * 1.2 + 0.3
    (m1, s1), (m2, s2) = metrics.feature_statistics(a), metrics.feature_statistics(b)
    assert metrics.fid_from_features(a, b) == pytest.approx(fid_score.calculate_frechet_distance(m1, s1, m2, s2),
                                                           rel=1e-6)
