"""Metric tests against closed forms (float64)."""
import math

import numpy as np
import pytest
import torch

from score_sde import metrics


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_sw2_identical_sets_is_zero():
    x = torch.randn(200, 5, generator=_gen(0))
    assert metrics.sliced_wasserstein(x, x.clone(), n_projections=64, generator=_gen(1)) == 0.0
    # permuting the points changes nothing (it is a distance between measures)
    assert metrics.sliced_wasserstein(x, x[torch.randperm(200, generator=_gen(2))], 64, _gen(1)) < 1e-12


def test_sw2_of_a_shift_matches_closed_form():
    # each projection shifts by theta.mu, so SW2^2 = E_theta (theta.mu)^2 = |mu|^2 / d
    d = 4
    x = torch.randn(500, d, generator=_gen(0), dtype=torch.float64)
    mu = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    sw = metrics.sliced_wasserstein(x, x + mu, n_projections=20000, generator=_gen(3))
    assert sw == pytest.approx(mu.norm().item() / math.sqrt(d), rel=0.02)
    # with the same directions the Monte-Carlo average is reproduced exactly
    theta = metrics.random_directions(20000, d, _gen(3))
    assert sw == pytest.approx(((theta @ mu) ** 2).mean().sqrt().item(), rel=1e-10)


def test_sw2_between_independent_gaussians_is_close_to_shift():
    d, n = 3, 4000
    mu = torch.tensor([2.0, 0.0, 0.0])
    x = torch.randn(n, d, generator=_gen(0))
    y = torch.randn(n, d, generator=_gen(1)) + mu
    sw = metrics.sliced_wasserstein(x, y, n_projections=2000, generator=_gen(2))
    assert sw == pytest.approx(2.0 / math.sqrt(d), rel=0.05)


def test_sw2_unequal_sizes_by_quantile_matching():
    # in 1-D SW2 = W2; quantiles of {0,1} vs {0,1,2}: squared gaps 1 on [1/3,1/2) and [2/3,1) -> 1/2
    x = torch.tensor([[1.0], [0.0]])
    y = torch.tensor([[2.0], [0.0], [1.0]])
    assert metrics.sliced_wasserstein(x, y, n_projections=3) == pytest.approx(math.sqrt(0.5), rel=1e-12)
    # duplicating every point leaves the empirical measure unchanged
    z = torch.randn(7, 3, generator=_gen(4))
    assert metrics.sliced_wasserstein(z, torch.cat([z, z]), 16, _gen(5)) == pytest.approx(0.0, abs=1e-12)


def test_sw2_rejects_bad_input():
    with pytest.raises(ValueError, match="same dimension"):
        metrics.sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="non-empty"):
        metrics.sliced_wasserstein(torch.zeros(0, 2), torch.zeros(3, 2))


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_distance_matches_eigendecomposition():
    # tr (s1 s2)^{1/2} = tr (s1^{1/2} s2 s1^{1/2})^{1/2}, the latter symmetric: use eigh
    rng = np.random.default_rng(1)
    d = 8
    mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _spd(rng, d), _spd(rng, d)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(inner))
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_singular_covariances_are_exact():
    d = 5
    s = np.zeros((d, d))
    s[0, 0] = 1.0  # rank one: (s s)^{1/2} = s exactly, no offset needed
    assert metrics.frechet_distance(np.zeros(d), s, np.ones(d), s) == pytest.approx(float(d), abs=1e-12)
    t = np.zeros((d, d))
    t[0, 0] = 4.0  # commuting: tr (s t)^{1/2} = 2, so d^2 = 1 + 4 - 4 = (sqrt 1 - sqrt 4)^2
    assert metrics.frechet_distance(np.zeros(d), s, np.zeros(d), t) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="sigma2 is not positive semi-definite"):
        metrics.frechet_distance(np.zeros(d), s, np.zeros(d), -s)


@pytest.mark.parametrize("n1,n2,d", [(4, 6, 20), (30, 40, 8)])
def test_fid_from_few_features_equals_the_covariance_route(n1, n2, d):
    """n < D takes the nuclear norm of A1 A2^T; it must equal the D x D eigen route on the same data."""
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(n1, d)), rng.normal(1.0, 2.0, size=(n2, d)) @ rng.normal(size=(d, d))
    direct = metrics.frechet_distance(*metrics.feature_statistics(f1), *metrics.feature_statistics(f2))
    # the D x D route takes square roots of round-off-sized eigenvalues of a singular matrix: ~1e-9 rel
    assert metrics.fid_from_features(f1, f2) == pytest.approx(direct, rel=1e-7)
    assert metrics.fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.fid_from_features(f1, f2[:, :-1])


def test_frechet_distance_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_feature_statistics_and_fid():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(50, 3))
    mu, sigma = metrics.feature_statistics(torch.from_numpy(f))
    assert np.allclose(mu, f.mean(0)) and np.allclose(sigma, (f - f.mean(0)).T @ (f - f.mean(0)) / 49)
    assert metrics.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, 2.0, 0.0])
    assert metrics.fid_from_features(f, f + shift) == pytest.approx(5.0, rel=1e-8)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.feature_statistics(np.zeros((1, 3)))


# ---------------------------------------------------------------------------- FID Inception network
from score_sde import inception  # noqa: E402


def test_inception_layout_matches_fid_network():
    net = inception.FIDInceptionV3()
    # torchvision's Inception-v3 has 27,161,264 parameters; minus AuxLogits (3,326,696) and fc (2,049,000)
    assert sum(p.numel() for p in net.parameters()) == 21_785_568
    keys = net.state_dict().keys()
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in keys and "Conv2d_4a_3x3.conv.weight" in keys
    assert net.Mixed_7b.pool == "avg" and net.Mixed_7c.pool == "max"


def test_inception_loads_local_file_and_extracts_features(inception_file, inception_net):
    net = inception.load_inception(inception_file, "cpu")
    grey = torch.rand(2, 1, 8, 8, generator=_gen(0))
    f = inception.inception_features(net, grey, batch_size=1)
    assert f.shape == (2, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all() and f.abs().mean() > 1e-3
    # same weights as the source network; grey repeated to RGB; batching and pre-resizing change nothing
    big = torch.nn.functional.interpolate(grey.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear",
                                          align_corners=False)
    with torch.no_grad():
        direct = inception_net(2 * big - 1)
    assert torch.allclose(f, direct, rtol=1e-4, atol=1e-5)
    assert torch.allclose(inception.inception_features(net, big, batch_size=2), f, rtol=1e-4, atol=1e-5)


def test_inception_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.eval.inception_path"):
        inception.load_inception(str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="config.eval.inception_path"):
        inception.load_inception(None)
    path = str(tmp_path / "wrong.pth")
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="missing .*Conv2d_1a_3x3.bn"):
        inception.load_inception(path)
    with pytest.raises(ValueError, match=r"\[N, 1 or 3, H, W\]"):
        inception.inception_features(inception.FIDInceptionV3(), torch.zeros(2, 2, 8, 8))
