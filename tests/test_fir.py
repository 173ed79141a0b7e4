"""FIR up/down-sampling against direct float64 computations (scipy / explicit matrices)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import signal

from score_sde.models import fir


def reference_upfirdn2d(x: np.ndarray, k: np.ndarray, up: int, down: int, p0: int, p1: int) -> np.ndarray:
    """Explicit zero insertion, zero padding / cropping, true 2-D convolution, decimation."""
    n, c, h, w = x.shape
    z = np.zeros((n, c, h * up, w * up))
    z[:, :, ::up, ::up] = x
    z = np.pad(z, ((0, 0), (0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0))))
    z = z[:, :, max(-p0, 0):z.shape[2] - max(-p1, 0), max(-p0, 0):z.shape[3] - max(-p1, 0)]
    out = np.stack([np.stack([signal.convolve2d(z[i, j], k, mode="valid") for j in range(c)]) for i in range(n)])
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize("up,down,p0,p1", [(1, 1, 0, 0), (2, 1, 2, 1), (1, 2, 1, 1), (2, 2, 1, 2), (3, 1, 1, 0),
                                           (1, 1, -1, 2), (2, 1, 0, -1)])
def test_upfirdn2d_matches_direct_convolution(up, down, p0, p1):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 7, 7))
    k = rng.normal(size=(4, 4))  # not symmetric: catches a missing kernel flip
    got = fir.upfirdn2d(torch.from_numpy(x), torch.from_numpy(k), up=up, down=down, pad=(p0, p1)).numpy()
    want = reference_upfirdn2d(x, k, up, down, p0, p1)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-12)


def _bilinear_up_matrix(n: int) -> np.ndarray:
    """[1,3,3,1]/4 upsampling: y[2i] = (x[i-1] + 3x[i])/4, y[2i+1] = (3x[i] + x[i+1])/4, zeros outside."""
    u = np.zeros((2 * n, n))
    for i in range(n):
        u[2 * i, i] += 0.75
        u[2 * i + 1, i] += 0.75
        if i > 0:
            u[2 * i, i - 1] += 0.25
        if i < n - 1:
            u[2 * i + 1, i + 1] += 0.25
    return u


def _fir_down_matrix(n: int) -> np.ndarray:
    """[1,3,3,1]/8 downsampling: y[i] = (x[2i-1] + 3x[2i] + 3x[2i+1] + x[2i+2]) / 8, zeros outside."""
    d = np.zeros((n // 2, n))
    for i in range(n // 2):
        for off, wgt in zip((-1, 0, 1, 2), (1, 3, 3, 1)):
            if 0 <= 2 * i + off < n:
                d[i, 2 * i + off] = wgt / 8
    return d


def test_upsample_2d_is_separable_bilinear():
    x = np.random.default_rng(1).normal(size=(1, 2, 5, 5))
    u = _bilinear_up_matrix(5)
    want = np.einsum("ai,ncij,bj->ncab", u, x, u)
    got = fir.upsample_2d(torch.from_numpy(x), [1, 3, 3, 1]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_downsample_2d_matches_explicit_filter():
    x = np.random.default_rng(2).normal(size=(2, 1, 8, 8))
    d = _fir_down_matrix(8)
    want = np.einsum("ai,ncij,bj->ncab", d, x, d)
    got = fir.downsample_2d(torch.from_numpy(x), [1, 3, 3, 1]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_box_kernel_gives_nearest_and_average():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(fir.upsample_2d(x, [1, 1]), fir.naive_upsample_2d(x))
    torch.testing.assert_close(fir.downsample_2d(x, [1, 1]), F.avg_pool2d(x, 2))
    torch.testing.assert_close(fir.naive_downsample_2d(fir.naive_upsample_2d(x)), x)


def test_fused_conv_resampling_equals_unfused_in_the_interior():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    k = [1, 3, 3, 1]
    up = fir.upsample_conv_2d(x, w, k)
    up_ref = F.conv2d(fir.upsample_2d(x, k), w, padding=1)
    assert up.shape == up_ref.shape == (2, 5, 16, 16)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], up_ref[..., 1:-1, 1:-1])
    down = fir.conv_downsample_2d(x, w, k)
    down_ref = fir.downsample_2d(F.conv2d(x, w, padding=1), k)
    assert down.shape == down_ref.shape == (2, 5, 4, 4)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], down_ref[..., 1:-1, 1:-1])


def test_fir_conv_module_and_bad_arguments():
    conv = fir.FIRConv2d(3, 4, 3, down=True)
    assert conv(torch.randn(1, 3, 8, 8)).shape == (1, 4, 4, 4)
    with pytest.raises(ValueError, match="at most one"):
        fir.FIRConv2d(3, 4, 3, up=True, down=True)
    with pytest.raises(ValueError, match="odd"):
        fir.FIRConv2d(3, 4, 2)
    with pytest.raises(ValueError, match="square"):
        fir.setup_kernel(np.ones((2, 3)))
