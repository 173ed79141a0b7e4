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


def test_frechet_distance_singular_covariances_are_regularised():
    d = 5
    s = np.zeros((d, d))
    s[0, 0] = 1.0  # rank one: sqrtm of a singular product
    got = metrics.frechet_distance(np.zeros(d), s, np.ones(d), s)
    assert got == pytest.approx(float(d), abs=1e-4)


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
