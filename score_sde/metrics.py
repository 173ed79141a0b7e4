"""Sample-quality metrics: sliced Wasserstein-2 between point sets, the Fréchet (FID) distance, IS and
KID; and how evaluation scores a sample set against its reference split (sample-set metrics, the
Inception metrics from local weights with cached reference features), all on plain tensors."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

from . import inception
from .pipeline.spec import EvalSpec, as_spec

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_points(x: ArrayLike, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch of points [N, ...], got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def random_directions(n: int, dim: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``n`` directions uniform on the unit sphere S^{dim-1} (normalised Gaussians), float64 [n, dim]."""
    theta = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def wasserstein2_1d_sorted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared W2 between empirical 1-D measures given sorted samples along the last dim.

    W2^2 = int_0^1 (F^-1(q) - G^-1(q))^2 dq, evaluated exactly on the union of both quantile grids
    (so unequal sample sizes are handled by quantile matching). a: [P, n], b: [P, m] -> [P]."""
    n, m = a.shape[-1], b.shape[-1]
    if n == m:
        return ((a - b) ** 2).mean(-1)
    grid = torch.unique(torch.cat([torch.arange(n + 1, dtype=torch.float64) / n,
                                   torch.arange(m + 1, dtype=torch.float64) / m]))
    width, mid = grid[1:] - grid[:-1], 0.5 * (grid[1:] + grid[:-1])
    ia = (mid * n).floor().long().clamp_(max=n - 1)
    ib = (mid * m).floor().long().clamp_(max=m - 1)
    return ((a[..., ia] - b[..., ib]) ** 2 * width).sum(-1)


def sliced_wasserstein(x: ArrayLike, y: ArrayLike, n_projections: int = 256,
                       generator: Optional[torch.Generator] = None) -> float:
    """Sliced W2: sqrt(E_theta W2^2(theta.x, theta.y)), theta uniform on the sphere (Monte Carlo).

    x: [N, ...], y: [M, ...] flattened to points; computed in float64 on the CPU."""
    x, y = _as_points(x, "x").cpu(), _as_points(y, "y").cpu()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    theta = random_directions(n_projections, x.shape[1], generator)
    px = torch.sort(theta @ x.T, dim=1).values
    py = torch.sort(theta @ y.T, dim=1).values
    return float(wasserstein2_1d_sorted(px, py).mean().sqrt())


def feature_statistics(features: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D] in float64."""
    f = np.asarray(torch.as_tensor(features).detach().cpu().numpy(), dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(s: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a covariance; an error if it is clearly not positive semi-definite."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    scale = max(1.0, float(np.abs(w).max(initial=0.0)))
    if w.size and w.min() < -1e-6 * scale:
        raise ValueError(f"{name} is not positive semi-definite (eigenvalue {w.min():.3g}); pass a covariance")
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982):

    d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}), with
    tr (s1 s2)^{1/2} = tr (s1^{1/2} s2 s1^{1/2})^{1/2} from two symmetric eigendecompositions: exact for
    singular covariances too (no offset, no complex round-off as with sqrtm of the non-symmetric s1 s2)."""
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {s1.shape}, sigma2 {s2.shape}")
    r1 = _psd_sqrt(s1, "sigma1")
    _psd_sqrt(s2, "sigma2")
    inner = np.linalg.eigvalsh((r1 @ s2 @ r1 + (r1 @ s2 @ r1).T) / 2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(np.clip(inner, 0.0, None)).sum())


def fid_from_features(features1: ArrayLike, features2: ArrayLike) -> float:
    """FID between two feature sets [N, D] (e.g. Inception pool3 features).

    With fewer samples than dimensions, sigma_i = A_i^T A_i for the centred, 1/sqrt(N_i - 1)-scaled
    features A_i, and tr (sigma1 sigma2)^{1/2} is the nuclear norm of A1 A2^T (N1 x N2): exact and cheap."""
    f1, f2 = (np.asarray(f.detach().cpu() if isinstance(f, torch.Tensor) else f, dtype=np.float64)
              for f in (features1, features2))
    (mu1, s1), (mu2, s2) = feature_statistics(f1), feature_statistics(f2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"shape mismatch: features1 {f1.shape}, features2 {f2.shape} (same D needed)")
    if min(f1.shape[0], f2.shape[0]) >= f1.shape[1]:
        return frechet_distance(mu1, s1, mu2, s2)
    a1, a2 = ((f - f.mean(0)) / np.sqrt(f.shape[0] - 1) for f in (f1, f2))
    diff = mu1 - mu2
    cross = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * cross)

# ----------------------------------------------------------------------------- FID / IS / KID as the papers do
# Protocol of score_sde_pytorch / TTUR / EDM: samples become uint8 images before Inception, the reference
# set's pool3 features are computed once and stored in an .npz (key "pool_3", optionally "logits"; the
# layout of score_sde_pytorch's assets/stats/cifar10_stats.npz), and every checkpoint is scored against it.
STATS_KEYS = ("pool_3", "logits")


def to_uint8(images: torch.Tensor, rounding: str = "round") -> torch.Tensor:
    """Images in [0, 1] -> uint8 levels 0..255, as written to PNG before Inception sees them.

    rounding="round": nearest level (EDM, torch-fidelity on saved PNGs); "floor": score_sde_pytorch's
    np.clip(x * 255, 0, 255).astype(np.uint8), which truncates. Our data sets' bin centres (k + 0.5)/256
    round back to level k exactly (reference images must not be dequantized)."""
    if rounding not in ("round", "floor"):
        raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    x = torch.as_tensor(images).detach().to(torch.float32) * 255.0
    x = x.round() if rounding == "round" else x.floor()
    return x.clamp_(0, 255).to(torch.uint8)


def inception_score(logits: ArrayLike, splits: int = 1) -> Tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016) from classifier logits [N, K].

    p(y) is the mean of p(y|x) within each of ``splits`` contiguous parts; returns (mean, std) over the
    parts. score_sde_pytorch (tfgan's classifier_score_from_logits) uses one part; Salimans et al. ten."""
    z = np.asarray(torch.as_tensor(logits).detach().cpu(), dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < splits or splits < 1:
        raise ValueError(f"logits must be [N >= splits, K] with splits >= 1, got shape {z.shape}, splits={splits}")
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))          # log p(y|x), stable
    scores = []
    for part in np.array_split(log_p, splits):
        log_py = np.log(np.exp(part).mean(axis=0, keepdims=True))
        scores.append(np.exp((np.exp(part) * (part - log_py)).sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018, eq. 4)."""
    d, m, n = x.shape[1], x.shape[0], y.shape[0]
    kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kernel_inception_distance(features1: ArrayLike, features2: ArrayLike, block_size: int = 1024) -> float:
    """KID: unbiased polynomial-kernel MMD^2 between feature sets [N, D], averaged over blocks.

    As tfgan's kernel_classifier_distance_from_activations (used by score_sde_pytorch): both sets are
    split into ceil(max(N1, N2) / block_size) contiguous blocks, and the block estimates are averaged."""
    f1, f2 = (np.asarray(torch.as_tensor(f).detach().cpu(), dtype=np.float64) for f in (features1, features2))
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got {f1.shape} and {f2.shape}")
    n_blocks = -(-max(len(f1), len(f2)) // block_size)
    if min(len(f1), len(f2)) < 2 * n_blocks:
        raise ValueError(f"KID needs at least 2 features per block ({n_blocks} blocks of at most {block_size}); "
                         f"got {len(f1)} and {len(f2)}: pass more samples or a larger block_size")
    return float(np.mean([_polynomial_mmd2(a, b) for a, b in zip(np.array_split(f1, n_blocks),
                                                                  np.array_split(f2, n_blocks))]))


def save_reference_stats(path: str, pool_3: ArrayLike, logits: Optional[ArrayLike] = None) -> None:
    """Write a reference set's Inception features to ``path`` (.npz, score_sde_pytorch's layout)."""
    arrays = {"pool_3": np.asarray(torch.as_tensor(pool_3).detach().cpu(), dtype=np.float32)}
    if arrays["pool_3"].ndim != 2:
        raise ValueError(f"pool_3 must be [N, D], got shape {arrays['pool_3'].shape}")
    if logits is not None:
        arrays["logits"] = np.asarray(torch.as_tensor(logits).detach().cpu(), dtype=np.float32)
    tmp = f"{path}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_reference_stats(path: str) -> dict:
    """Read an .npz of reference features: {"pool_3": [N, D] float64, "logits": [N, K] if stored}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference statistics {path} not found; compute them once with "
                                f"score_sde.metrics.save_reference_stats (or use score_sde_pytorch's *_stats.npz)")
    with np.load(path, allow_pickle=False) as f:
        if "pool_3" not in f.files:
            raise ValueError(f"{path} has no 'pool_3' array (found {f.files}); expected score_sde_pytorch's "
                             f"stats layout: pool_3 [N, 2048], optionally logits")
        return {k: np.asarray(f[k], dtype=np.float64) for k in STATS_KEYS if k in f.files}


def fid_to_reference(features: ArrayLike, reference: dict) -> float:
    """FID between sample features [N, D] and a loaded reference (``load_reference_stats``)."""
    return fid_from_features(reference["pool_3"], features)


# ----------------------------------------------------------------------------- a sample set against its reference
def sliced_w2_to_reference(samples: torch.Tensor, reference: torch.Tensor, floor: torch.Tensor,
                           seed: int) -> Dict[str, float]:
    """Sliced W2 of the samples to the reference set, and its floor: the same distance for `floor`
    (as many held-out items of the other split); both with directions drawn from `seed`."""
    sw = lambda a: sliced_wasserstein(a, reference, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    return {"sliced_wasserstein": sw(samples), "sliced_wasserstein_floor": sw(floor)}


def density_gap(log_prob: Callable[[torch.Tensor], torch.Tensor], samples: torch.Tensor,
                reference: torch.Tensor) -> Dict[str, float]:
    """With the exact log-density (toy_ring): the mean NLL of the samples and of the reference (same
    space), and delta_log_p = data_nll - sample_nll (> 0: samples too concentrated; < 0: too diffuse)."""
    sample_nll, data_nll = float(-log_prob(samples.double()).mean()), float(-log_prob(reference.double()).mean())
    return {"sample_nll": sample_nll, "data_nll": data_nll, "delta_log_p": data_nll - sample_nll}


def inception_enabled(ev: EvalSpec) -> bool:
    """True when eval asks for any Inception metric (FID, IS or KID)."""
    return ev.enable_fid or ev.enable_is or ev.enable_kid


def check_inception_path(config: Any) -> str:
    """eval.inception_path when eval.enable_fid; a clear error when it is unset or missing."""
    path = (config if isinstance(config, EvalSpec) else as_spec(config).eval).inception_path
    if not path or not os.path.isfile(str(path)):
        raise FileNotFoundError(
            f"eval.enable_fid needs local Inception weights but eval.inception_path={path!r} is not a file; "
            f"set --config.eval.inception_path=/path/to/pt_inception-2015-12-05.pth or eval.enable_fid=False")
    return str(path)


def reference_features(ev: EvalSpec, net: torch.nn.Module, fc: Optional[torch.nn.Linear], reference: torch.Tensor,
                       cache: Dict[Any, Any]) -> Dict[str, Any]:
    """The reference split's Inception features, computed once per data set (issue 14): from/to the
    eval.fid_stats .npz when set (reused by every later run and checkpoint), else once per run (`cache`)."""
    if "inception_reference" not in cache:
        images = lambda: to_uint8(reference)  # noqa: E731  bin centres round back to their exact levels
        if ev.fid_stats:
            os.makedirs(os.path.dirname(os.path.abspath(str(ev.fid_stats))), exist_ok=True)
            cache["inception_reference"] = inception.reference_stats(str(ev.fid_stats), net, images, fc,
                                                                     batch_size=ev.batch_size)
        else:
            feats = inception.inception_features(net, images(), batch_size=ev.batch_size)
            cache["inception_reference"] = {"pool_3": feats.double().numpy()}
    return cache["inception_reference"]


def inception_metrics(samples: torch.Tensor, reference: torch.Tensor, ev: EvalSpec, device: Any,
                      cache: Dict[Any, Any], progress: bool = False) -> Dict[str, float]:
    """FID, Inception Score and KID as eval.enable_fid/enable_is/enable_kid ask, from one Inception pass
    over the samples (data space, uint8 by eval.fid_rounding, as the papers and common tools) and the
    reference features (`reference_features`, cached in `cache`)."""
    net = inception.load_inception(check_inception_path(ev), device=device)
    feats = inception.inception_features(net, to_uint8(samples, ev.fid_rounding), batch_size=ev.batch_size,
                                         progress=progress)
    fc = inception.load_inception_logits(str(ev.inception_path)) if ev.enable_is else None
    out: Dict[str, float] = {}
    if ev.enable_fid or ev.enable_kid:
        ref = reference_features(ev, net, fc, reference, cache)
        if ev.enable_fid:
            out["fid"] = fid_to_reference(feats, ref)
        if ev.enable_kid:
            out["kid"] = kernel_inception_distance(feats, ref["pool_3"])
    if ev.enable_is:
        out["inception_score"], out["inception_score_std"] = inception_score(inception.inception_logits(fc, feats))
    return out
