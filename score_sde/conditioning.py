"""Controllable generation (Song et al. 2021, section 5 and appendix I): guidance and inverse problems.

Guidance is a score wrapper, so every sampler and the likelihood accept it unchanged:
  classifier_guidance   s(x, t) + scale * grad_x log p_t(c | x)                     (eq. 14 with scale 1)
  classifier_free       (1 + w) s(x, t, c) - w s(x, t)                             (Ho & Salimans 2022, eq. 6)

Inverse problems observe y = A x_0 (+ noise). Three entry points, one engine:
  inpaint(sde, score_fn, y, mask)          A = the identity rows where mask == 1 (returned x == y there)
  colorize(sde, score_fn, gray)            A = the channel mean, per pixel
  linear_inverse(sde, score_fn, A, y, ...) any dense A [m, D] on the flattened data, optional Gaussian noise
Each is solved in an orthonormal basis where the observation reads single coordinates (the channel rotation of
score_sde_pytorch's colorizer; the right singular vectors of A). The forward noise is isotropic, so rotating x
rotates its score and the SDE is unchanged.

Methods (option `method`):
  "smc"  (default) a particle filter over the reverse process. Run the observed coordinates' forward process from
         y (sampled top-down as its exact Gaussian bridge) and condition the reverse chain on that path: the
         unobserved coordinates are the hidden state of a state-space model whose transitions are the reverse
         kernels. The forward process acts on each coordinate independently, so p(x_0 | observed path) =
         p(x_0 | y) (the filtering argument of FPS, Dou & Song 2024, and MCGdiff, Cardoso et al. 2023): the
         weighted particles converge to the exact posterior as `particles` and `steps` grow.
  "pc"   score_sde_pytorch's replacement inpainter/colorizer: predictor-corrector sampling where the observed
         coordinates are overwritten after every update by a fresh draw of the forward marginal of y. Cheap,
         but biased: it never corrects the unobserved coordinates for how likely y is under them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch

from .sampling import common, pc
from .sampling import algebra
from .utils import batch_broadcast, rand_like, randn_like

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LogProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Label = Union[int, torch.Tensor]
METHODS = ("smc", "pc")


# ----------------------------------------------------------------------------- guidance
def _label_vector(label: Label, x: torch.Tensor, num_classes: Optional[int] = None) -> torch.Tensor:
    """An int or a [B] integer tensor as a [B] long tensor on x's device, range-checked."""
    if isinstance(label, bool) or not (isinstance(label, int) or torch.is_tensor(label)):
        raise ValueError(f"label must be an int or a [batch] integer tensor, got {type(label).__name__}")
    if torch.is_tensor(label):
        if label.dtype.is_floating_point or label.dim() != 1 or label.shape[0] != x.shape[0]:
            raise ValueError(f"label tensor must be integer of shape [batch]=[{x.shape[0]}], got "
                             f"{label.dtype} {tuple(label.shape)}")
        labels = label.to(device=x.device, dtype=torch.long)
    else:
        labels = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
    if (labels < 0).any() or (num_classes is not None and (labels >= num_classes).any()):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.unique().tolist()}")
    return labels


def classifier_guidance(score_fn: ScoreFn, log_prob_fn: LogProbFn, label: Label, scale: float = 1.0) -> ScoreFn:
    """score_fn(x, t) + scale * grad_x log p_t(label | x); log_prob_fn(x, t) -> [B, C] log-probabilities.

    With the exact noisy classifier and scale = 1 this is the exact score of p_t(x | label) (eq. 14).
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number (1 follows Bayes' rule), got {scale!r}")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        outer = x.requires_grad  # a caller differentiating through the score (likelihood traces) keeps the graph
        with torch.enable_grad():
            xg = x if outer else x.detach().requires_grad_(True)
            logp = log_prob_fn(xg, t)
            if logp.dim() != 2 or logp.shape[0] != x.shape[0]:
                raise ValueError(f"log_prob_fn must return [batch, classes] = [{x.shape[0]}, C], "
                                 f"got {tuple(logp.shape)}")
            labels = _label_vector(label, x, logp.shape[1])
            (grad,) = torch.autograd.grad(logp.gather(1, labels[:, None]).sum(), xg, create_graph=outer)
        return score_fn(x, t) + scale * grad.to(x.dtype)
    return guided


def classifier_free(cond_score_fn: Callable, label: Label, guidance: float) -> ScoreFn:
    """(1 + w) s(x, t, c) - w s(x, t) with s(x, t) = cond_score_fn(x, t, None), the null-class score.

    guidance w = 0 is the plain conditional score (one evaluation); w = -1 the unconditional one.
    """
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number (0 = plain conditional), got {guidance!r}")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = cond_score_fn(x, t, _label_vector(label, x))
        if guidance == 0:
            return cond
        return (1 + guidance) * cond - guidance * cond_score_fn(x, t, None)
    return guided


def with_labels(cond_score_fn: Callable, labels: Optional[torch.Tensor]) -> ScoreFn:
    """score_fn(x, t) = cond_score_fn(x, t, labels): fixed labels (a training batch's, after label dropout, or
    None for the null class) for any loss or sampler that takes a plain score_fn."""
    return lambda x, t: cond_score_fn(x, t, labels)


def conditional_score_fn(sde, model: Callable, *, continuous: bool = True, prediction: Optional[str] = None,
                         train: bool = False
                         ) -> Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]:
    """cond_score_fn(x, t, label) of a class-conditional network model(x, noise_label, y=label); label None
    asks the network for its null class (it must have been trained with label dropout). train=True keeps the
    network in training mode, for losses.dsm_loss(sde, with_labels(fn, labels), x0)."""
    from . import parameterization
    kind = parameterization.model_prediction_kind(model, prediction)
    pre = parameterization.model_preconditioning(model)  # EDM's F (issue 12); the lambda below hides it

    def fn(x: torch.Tensor, t: torch.Tensor, label: Optional[torch.Tensor]) -> torch.Tensor:
        if label is None:
            null = getattr(getattr(model, "module", model), "null_class", None)
            if null is None:
                raise ValueError("this network has no null class; build it with num_classes > 0 to get the "
                                 "unconditional score (classifier-free guidance)")
            label = torch.full((x.shape[0],), null, dtype=torch.long, device=x.device)
        if isinstance(model, torch.nn.Module):
            model.train(train)
        net = lambda xx, noise_label: model(xx, noise_label, y=label)  # noqa: E731
        return parameterization.get_score_fn(sde, net, continuous=continuous, prediction=kind,
                                             preconditioning=pre)(x, t)
    return fn


# ----------------------------------------------------------------------------- observation bases
@dataclass
class _Basis:
    """An orthonormal change of coordinates w = to(x) (x = back(w)) in which y observes single coordinates."""
    to: Callable[[torch.Tensor], torch.Tensor]
    back: Callable[[torch.Tensor], torch.Tensor]

    def score(self, score_fn: ScoreFn) -> ScoreFn:
        return lambda w, t: self.to(score_fn(self.back(w), t))  # orthonormal: grad in w = rotated grad in x


_IDENTITY = _Basis(lambda x: x, lambda w: w)


def _flat_basis(V: torch.Tensor, shape) -> _Basis:
    """w = V^T x on the flattened data (V [D, D] orthonormal columns)."""
    return _Basis(lambda x: (x.reshape(x.shape[0], -1) @ V.to(x)).reshape(x.shape),
                  lambda w: (w.reshape(w.shape[0], -1) @ V.T.to(w)).reshape(w.shape))


def _channel_basis(M: torch.Tensor) -> _Basis:
    """w_c = sum_k x_k M[k, c] per pixel (M orthonormal, channels at dim 1)."""
    return _Basis(lambda x: torch.einsum("bkhw,kc->bchw", x, M.to(x)),
                  lambda w: torch.einsum("bchw,kc->bkhw", w, M.to(w)))


# ----------------------------------------------------------------------------- the particle filter
def _grid(sde, steps: Optional[int], eps: Optional[float], spacing: str = "uniform"):
    """steps + 1 times from T down to eps: uniform in t, or EDM's sigma spacing (Karras et al. 2022, eq. 5, rho 7)."""
    n = common.check_positive_int("steps", sde.N if steps is None else steps)
    eps = algebra.resolve_eps(sde, eps)
    if algebra.check_choice("spacing", spacing, ("uniform", "edm")) == "uniform":
        return [float(t) for t in common.uniform_times(sde.T, eps, n)]
    ends = sde.sigma(torch.tensor([eps, sde.T], dtype=torch.float64))
    times = sde.t_from_sigma(common.edm_sigmas(float(ends[0]), float(ends[1]), n + 1))
    return [sde.T] + [float(t) for t in times[1:-1]] + [eps]


def _ms(sde, t: float) -> Tuple[float, float]:
    tt = torch.tensor([t], dtype=torch.float64)
    return float(sde.mean_coeff(tt)), float(sde.marginal_std(tt))


def _systematic(probs: torch.Tensor, generator) -> torch.Tensor:
    """Systematic resampling indices [B, K] for rows of probabilities [B, K]."""
    B, K = probs.shape
    u = (rand_like(probs[:, :1], generator) + torch.arange(K, device=probs.device, dtype=probs.dtype)) / K
    return torch.searchsorted(probs.cumsum(1), u).clamp(max=K - 1)


def _smc(sde, score_fn: ScoreFn, y: torch.Tensor, mask: torch.Tensor, obs_var: torch.Tensor, generator,
         particles: int = 16, steps: Optional[int] = None, eps: Optional[float] = None,
         resample_threshold: float = 0.5, spacing: str = "edm", variance: str = "beta_tilde"
         ) -> Tuple[torch.Tensor, int]:
    """Filter p(x_0 | y) for coordinate observations u = y + N(0, obs_var) of u = x_0 (obs_var = 0: exact).

    In VE units u_t = x_t / m(t) = x_0 + sigma(t) z, an observed coordinate's path is u_t = y + N(0, sigma(t)^2 -
    obs_var): observed while sigma(t)^2 > obs_var, then hidden. Sampled top-down as a Brownian bridge pinned at y.
    """
    K = common.check_positive_int("particles", particles)
    algebra.check_choice("variance", variance, ("beta_tilde", "beta"))
    if not 0 <= resample_threshold <= 1:
        raise ValueError(f"resample_threshold must lie in [0, 1] (a fraction of particles), got {resample_threshold}")
    times, B, shape = _with_noise_levels(sde, _grid(sde, steps, eps, spacing), obs_var), y.shape[0], y.shape[1:]
    score_fn = common.CountingScore(score_fn)
    rep = lambda v: v.repeat_interleave(K, dim=0)  # noqa: E731  [B, ...] -> [B*K, ...], particles of a row adjacent
    mask_b = mask.bool()

    def tilde(t: float) -> torch.Tensor:  # sigma(t)^2 - obs_var: the observed path's variance around y
        m, s = _ms(sde, t)
        return (s / m) ** 2 - obs_var

    m, _ = _ms(sde, times[0])
    var_u = tilde(times[0])
    u = y + var_u.clamp(min=0).sqrt() * randn_like(y, generator)  # one observed path per row, shared by particles
    x = sde.prior_sampling((B * K, *shape), generator=generator, device=y.device, dtype=y.dtype)
    x = torch.where(rep(mask_b & (var_u > 0)), rep(m * u), x)
    logw = torch.zeros(B, K, dtype=torch.float64, device=y.device)
    for t, t_next in zip(times[:-1], times[1:]):
        a, v, s, s_next = pc._coeffs(sde, t, t_next)
        # reverse-kernel variance: the posterior's beta_tilde (Ho et al. eq. 7) or the forward step's v
        beta = v * s_next ** 2 / s ** 2 if variance == "beta_tilde" else v
        mean = algebra.ancestral_mean(x, score_fn(x, common.batch_time(t, x)), a, v)  # eq. 47
        var_next = tilde(t_next)
        on = var_next >= -1e-9 * obs_var  # still observed at t' (round-off at a noise level's own time: u = y)
        var_next = var_next.clamp(min=0)
        # observed path one step down: Brownian bridge from (var_u, u) to (0, y)
        ratio = (var_next / var_u.clamp(min=1e-300)).clamp(0, 1)
        u = torch.where(on, y + ratio * (u - y) + (var_next * (1 - ratio)).sqrt() * randn_like(y, generator), u)
        observed = rep(mask_b & on)
        x_obs = rep(_ms(sde, t_next)[0] * u)
        resid = torch.where(observed, x_obs - mean, torch.zeros_like(mean))
        logw = logw - 0.5 * resid.reshape(B, K, -1).double().pow(2).sum(-1) / beta  # log N(y_t'; mean, beta)
        # the weight depends on x_t only: resample parents before drawing children (fully adapted filter)
        logw, mean = _maybe_resample(logw, mean, resample_threshold, generator)
        x = torch.where(observed, x_obs, mean + beta ** 0.5 * randn_like(x, generator))
        var_u = var_next
    m, s = _ms(sde, times[-1])
    x0 = algebra.tweedie(x, score_fn(x, common.batch_time(times[-1], x)), m, s)  # final denoising (noise removal)
    x0 = torch.where(rep(mask_b & (obs_var == 0)), rep(y), x0)
    probs = torch.softmax(logw, 1)
    pick = torch.searchsorted(probs.cumsum(1), rand_like(probs[:, :1], generator)).clamp(max=K - 1).squeeze(1)
    return x0.reshape(B, K, *shape)[torch.arange(B, device=y.device), pick.to(y.device)], score_fn.nfe


def _with_noise_levels(sde, times: list, obs_var: torch.Tensor, most: int = 64) -> list:
    """Add the times where sigma(t)^2 equals a noisy observation's variance, so each noisy coordinate is last
    observed exactly where its path is pinned at y (up to `most` distinct levels; beyond, the nearest grid time)."""
    levels = torch.unique(obs_var[obs_var > 0].double().cpu())
    if levels.numel() == 0 or levels.numel() > most:
        return times
    taus = [float(t) for t in sde.t_from_sigma(levels.sqrt()) if times[-1] < float(t) < times[0]]
    return sorted(set(times) | set(taus), reverse=True)


def _maybe_resample(logw: torch.Tensor, x: torch.Tensor, threshold: float, generator):
    """Resample the rows whose effective sample size fell below threshold * K; their weights become equal."""
    B, K = logw.shape
    probs = torch.softmax(logw, dim=1)
    low = 1.0 / probs.pow(2).sum(1) < threshold * K
    if not low.any():
        return logw, x
    idx = torch.where(low[:, None], _systematic(probs, generator),
                      torch.arange(K, device=logw.device).expand(B, K))
    flat = (idx + K * torch.arange(B, device=logw.device)[:, None]).reshape(-1).to(x.device)
    return torch.where(low[:, None], torch.zeros_like(logw), logw - logw.max(1, keepdim=True).values), x[flat]


# ----------------------------------------------------------------------------- score_sde_pytorch's replacement PC
def _pc(sde, score_fn: ScoreFn, y: torch.Tensor, mask: torch.Tensor, generator, predictor: str = "reverse_diffusion",
        corrector: str = "langevin", snr: float = 0.16, n_steps_each: int = 1, steps: Optional[int] = None,
        eps: Optional[float] = None) -> Tuple[torch.Tensor, int]:
    """Predictor-corrector with the observed coordinates replaced by a fresh forward-marginal draw of y at the
    current time after every corrector and predictor update (score_sde_pytorch's get_pc_inpainter)."""
    predict, correct = pc._lookup("predictor", predictor, pc.PREDICTORS), pc._lookup("corrector", corrector,
                                                                                  pc.CORRECTORS)
    snr = algebra.check_positive("snr", snr)
    common.check_positive_int("n_steps_each", n_steps_each)
    times, score_fn, mask = _grid(sde, steps, eps), common.CountingScore(score_fn), mask.to(y.dtype)

    def replace(x: torch.Tensor, t: float) -> torch.Tensor:
        mean, std = sde.marginal_prob(y, common.batch_time(t, y))
        return x * (1 - mask) + (mean + batch_broadcast(std, y) * randn_like(y, generator)) * mask

    x = y * mask + sde.prior_sampling(y.shape, generator=generator, device=y.device, dtype=y.dtype) * (1 - mask)
    x_mean = x
    for t, t_next in zip(times[:-1], times[1:]):
        x, _ = correct(sde, score_fn, x, t, generator, snr, n_steps_each)
        x = replace(x, t)
        x, x_mean = predict(sde, score_fn, x, t, t_next, generator, False)
        x = replace(x, t)
    return x_mean * (1 - mask) + y * mask, score_fn.nfe


# ----------------------------------------------------------------------------- public solvers
def _solve(sde, score_fn: ScoreFn, w_obs: torch.Tensor, mask: torch.Tensor, basis: _Basis, generator,
           method: str, obs_var: Optional[torch.Tensor] = None, **options) -> Tuple[torch.Tensor, int]:
    algebra.check_choice("method", method, METHODS)
    score_w = basis.score(score_fn)
    if method == "pc":
        if obs_var is not None and bool((obs_var > 0).any()):
            raise ValueError("method='pc' handles exact observations only; use method='smc' for noisy ones")
        w, nfe = _pc(sde, score_w, w_obs, mask, generator, **options)
    else:
        var = torch.zeros_like(w_obs) if obs_var is None else obs_var
        w, nfe = _smc(sde, score_w, w_obs, mask, var, generator, **options)
    return basis.back(w), nfe


def _check_options(method: str, options: dict) -> None:
    valid = {"smc": ("particles", "steps", "eps", "resample_threshold", "spacing", "variance"),
             "pc": ("predictor", "corrector", "snr", "n_steps_each", "steps", "eps")}.get(method)
    if valid is None:
        raise ValueError(f"unknown inpainting method {method!r}; choose one of {list(METHODS)}")
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"method {method!r} got unknown option(s) {unknown}; valid options: {list(valid)}")


def inpaint(sde, score_fn: ScoreFn, y: torch.Tensor, mask: torch.Tensor, generator: Optional[torch.Generator] = None,
            method: str = "smc", **options) -> Tuple[torch.Tensor, int]:
    """Sample p(x | x[mask == 1] = y[mask == 1]) for each batch row; returns (x, nfe) with x == y where observed.

    Options: smc -- particles (16), steps (sde.N), eps (sde.sampling_eps), resample_threshold (0.5);
             pc  -- predictor, corrector, snr, n_steps_each, steps, eps (as the "pc" sampler).
    """
    _check_options(method, options)
    if not torch.is_tensor(y) or not torch.is_tensor(mask) or y.dim() < 2:
        raise ValueError("y and mask must be tensors shaped like the batch [B, ...]")
    try:
        mask = torch.broadcast_to(mask, y.shape)
    except RuntimeError:
        raise ValueError(f"mask {tuple(mask.shape)} must be shaped like y {tuple(y.shape)} (or broadcast to it)") \
            from None
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 (unknown) and 1 (observed)")
    x, nfe = _solve(sde, score_fn, y, mask, _IDENTITY, generator, method, **options)
    return torch.where(mask.bool(), y, x), nfe


MASKS = ("half", "box", "random")


def make_mask(kind: str, shape, fraction: float = 0.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """An inpainting mask [B, C, H, W] (1 = observed) of the CLI's kinds:
    "half"   the left half of the columns observed (the right half restored);
    "box"    everything observed except a centred square covering `fraction` of the area;
    "random" each pixel (all channels together) observed with probability `fraction`."""
    algebra.check_choice("mask", kind, MASKS)
    if len(shape) != 4:
        raise ValueError(f"make_mask needs an image batch shape (B, C, H, W), got {tuple(shape)}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    B, C, H, W = shape
    mask = torch.ones(B, 1, H, W)
    if kind == "half":
        mask[..., W // 2:] = 0
    elif kind == "box":
        h, w = max(1, round(H * fraction ** 0.5)), max(1, round(W * fraction ** 0.5))
        top, left = (H - h) // 2, (W - w) // 2
        mask[..., top:top + h, left:left + w] = 0
    else:
        mask = (rand_like(mask, generator) < fraction).to(mask.dtype)
    return mask.expand(B, C, H, W).contiguous()


# orthonormal colour decoupling of score_sde_pytorch's colorizer: column 0 is the (scaled) grey level
_COLOR = torch.tensor([[1 / math.sqrt(3), -math.sqrt(2 / 3), 0.0],
                       [1 / math.sqrt(3), 1 / math.sqrt(6), -1 / math.sqrt(2)],
                       [1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)]], dtype=torch.float64)


def colorize(sde, score_fn: ScoreFn, gray: torch.Tensor, generator: Optional[torch.Generator] = None,
             method: str = "smc", **options) -> Tuple[torch.Tensor, int]:
    """Sample RGB images [B, 3, H, W] whose channel mean equals `gray` ([B, 1, H, W], or [B, 3, H, W] with
    equal channels); options as `inpaint`."""
    _check_options(method, options)
    if not torch.is_tensor(gray) or gray.dim() != 4 or gray.shape[1] not in (1, 3):
        raise ValueError(f"gray must be [B, 1, H, W] (or [B, 3, H, W] with equal channels), got "
                         f"{tuple(gray.shape) if torch.is_tensor(gray) else type(gray).__name__}")
    g = gray.mean(1, keepdim=True)
    w_obs = torch.cat([g * math.sqrt(3), torch.zeros_like(g), torch.zeros_like(g)], 1)  # grey = w_0 / sqrt 3
    mask = torch.zeros_like(w_obs)
    mask[:, 0] = 1
    x, nfe = _solve(sde, score_fn, w_obs, mask, _channel_basis(_COLOR), generator, method, **options)
    return x - x.mean(1, keepdim=True) + g, nfe  # exact channel mean despite round-off


def linear_inverse(sde, score_fn: ScoreFn, A: torch.Tensor, y: torch.Tensor, shape, noise_std: float = 0.0,
                   generator: Optional[torch.Generator] = None, method: str = "smc",
                   **options) -> Tuple[torch.Tensor, int]:
    """Sample p(x | A x_flat + noise_std n = y) for each row of y [B, m]; A [m, D] with D = prod(shape[1:]).

    Solved in the right-singular basis of A: w = V^T x observes w_i = (U^T y)_i / S_i with noise noise_std / S_i.
    """
    _check_options(method, options)
    A = torch.as_tensor(A)
    D = math.prod(shape[1:])
    if A.dim() != 2 or A.shape[1] != D or y.dim() != 2 or y.shape != (shape[0], A.shape[0]):
        raise ValueError(f"need A [m, {D}] and y [{shape[0]}, m] for shape {tuple(shape)}, got "
                         f"{tuple(A.shape)} and {tuple(y.shape)}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    U, S, Vh = torch.linalg.svd(A.double(), full_matrices=True)
    rank = int((S > S.max() * 1e-10).sum()) if S.numel() else 0
    w = torch.zeros(shape[0], D, dtype=torch.float64, device=y.device)
    w[:, :rank] = (y.double() @ U[:, :rank].to(y.device)) / S[:rank].to(y.device)
    mask = torch.zeros_like(w)
    mask[:, :rank] = 1
    obs_var = torch.zeros_like(w)
    obs_var[:, :rank] = (noise_std / S[:rank].to(y.device)) ** 2
    basis = _flat_basis(Vh.T.to(y.device), shape)
    to_shape = lambda v: v.to(y.dtype).reshape(shape)  # noqa: E731
    return _solve(sde, score_fn, to_shape(w), to_shape(mask), basis, generator, method,
                  obs_var=to_shape(obs_var), **options)
