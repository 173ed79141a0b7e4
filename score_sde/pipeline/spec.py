"""The experiment spec: a config (ConfigDict, dict or JSON) turned ONCE into frozen, typed sections.

    spec = Spec.from_config(config)             # every default and every check lives here
    spec.training.n_iters; spec.sampling.method; spec.sampling.options   # what the sampler gets

Only this module (and main.py) reads a ConfigDict; everything below takes a `Spec` or typed arguments.
Each section is a frozen dataclass; its field defaults are THE defaults (config files may omit any
field). A section also answers `section.get(name, default)` so that code written against config
sections (the model constructors) reads the spec unchanged.

Adding a field: add it, with its type and default, to the section dataclass (and a check in its
`_check`). Adding a section: write a frozen `Section` subclass and add it to `Spec` (`_SECTIONS`
maps the config's section name to the class). Sampler options are NOT listed here: they are the
keyword-only arguments of the registered sampler factories (`sampler_option_types`).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

SDE_NAMES = ("vpsde", "subvpsde", "vesde")
PREDICTIONS = ("eps", "score", "x0", "v")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
SPLITS = ("test", "train")
TRACES = ("exact", "hutchinson-rademacher", "hutchinson-gaussian")
LIKELIHOOD_TRACES = TRACES + ("hutchinson-orthogonal",)
DEQUANTIZERS = ("uniform", "truncated_normal")          # dequantization.DEQUANTIZERS
WEIGHTINGS = ("eps", "likelihood", "x0", "v", "edm")     # losses.WEIGHTINGS
TIME_SAMPLINGS = ("uniform", "importance", "lognormal")  # losses.TIME_SAMPLINGS
PRECONDITIONINGS = ("none", "edm")                       # models.preconditioning.PRECONDITIONINGS
# sampler keyword arguments the pipeline fills itself (not config fields)
RUNTIME_OPTIONS = ("device", "dtype", "progress")


class Section:
    """Read access shared by every section: attributes, `get(name, default)` and `[name]`."""

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def __contains__(self, name: str) -> bool:
        return hasattr(self, name)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: (lambda v: v.to_dict() if isinstance(v, Section) else v)(getattr(self, f.name))
                for f in dataclasses.fields(self)}

    def _check(self) -> None:
        """Raise ValueError naming the field and the fix; sections override this."""

    def __post_init__(self) -> None:
        self._check()


def _positive(section: str, **values: Any) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"config.{section}.{name} must be a positive integer, got {v!r}")


def _choice(section: str, name: str, value: Any, allowed: Tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"config.{section}.{name}={value!r}; choose one of {allowed}")


def _bools(section: str, obj: Any, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(obj, name), bool):
            raise ValueError(f"config.{section}.{name} must be True or False, got {getattr(obj, name)!r}")


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
# What data.num_channels / image_size / num_levels are when a config leaves them unset (None): the data
# set's own geometry (digits are 8x8 grey with 17 levels; toys have no levels), else 32-px RGB 8-bit
# (CIFAR-10; the resize target of image folders and caches).
GEOMETRY_DEFAULTS: Dict[str, Any] = {"num_channels": 3, "image_size": 32, "num_levels": 256}
DATASET_GEOMETRY: Dict[str, Dict[str, Any]] = {"digits": {"num_channels": 1, "image_size": 8, "num_levels": 17}}


def dataset_geometry(dataset: str) -> Dict[str, Any]:
    """(num_channels, image_size, num_levels) a data set gets for the fields its config leaves unset."""
    from ..datasets import TOY_DATASETS
    toy = {"num_levels": None} if dataset in TOY_DATASETS else {}
    return {**GEOMETRY_DEFAULTS, **DATASET_GEOMETRY.get(dataset, {}), **toy}


@dataclass(frozen=True)
class DataSpec(Section):
    dataset: str = "cifar10"
    root: Optional[str] = None              # cifar10 / image_folder files
    image_size: Optional[int] = None        # None: the data set's (dataset_geometry: 8 digits, else 32)
    num_channels: Optional[int] = None      # None: the data set's (1 digits, else 3)
    num_levels: Optional[int] = None        # None: the data set's (17 digits, 256 images, None for toys)
    centered: bool = False                  # model space [-1, 1] instead of [0, 1]
    random_flip: bool = False
    uniform_dequantization: bool = False
    dim: int = 2                            # toy data sets: dimension of a point
    num_train: int = 10000                  # toy data sets: sizes and seed of the draws
    num_eval: int = 2000
    seed: int = 0
    eval_fraction: float = 0.1              # image_folder: held-out fraction
    # issue 14: the image_prep cache, the paper's preprocessing, DataLoader workers
    cache: Optional[str] = None             # image_prep .npy cache, read instead of the files (written
                                            # once from `root` when missing)
    preprocess: str = "crop_resize"         # how the cache is written: crop_resize | resize_small | box
    num_workers: int = 0                    # DataLoader / cache-writing worker processes (0: in-process)
    # issue 11: class labels (None: unconditional; data sets then yield images only)
    num_classes: Optional[int] = None

    def _check(self) -> None:
        from ..datasets import DATASETS
        from ..image_prep import METHODS
        object.__setattr__(self, "dataset", str(self.dataset).lower())
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown config.data.dataset {self.dataset!r}; choose one of {DATASETS}")
        for name, value in dataset_geometry(self.dataset).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.num_classes is not None:
            _positive("data", num_classes=self.num_classes)
        _bools("data", self, "centered", "random_flip", "uniform_dequantization")
        _choice("data", "preprocess", self.preprocess, METHODS)
        if self.cache is not None and not str(self.cache).endswith(".npy"):
            raise ValueError(f"config.data.cache={self.cache!r} must be an .npy file written by "
                             f"python -m score_sde.image_prep (or None)")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"config.data.num_workers must be an integer >= 0, got {self.num_workers!r}")

    @property
    def is_toy(self) -> bool:
        from ..datasets import TOY_DATASETS
        return self.dataset in TOY_DATASETS

    @property
    def quantization(self) -> Dict[str, Any]:
        """Where the levels sit in model space: level k at data_scale (k + 1/2)/L + data_shift, [-1, 1] for
        centered data, [0, 1] otherwise (num_levels 256 where the data have none: toys' Gaussian decoder)."""
        return dict(num_levels=int(self.num_levels or 256), data_scale=2.0 if self.centered else 1.0,
                    data_shift=-1.0 if self.centered else 0.0)

    @property
    def is_discrete(self) -> bool:
        """Images on data.num_levels grey levels: their bits/dim are a code length of the levels."""
        return not self.is_toy and bool(self.num_levels)

    @property
    def shape(self) -> Tuple[int, ...]:
        """One item: (dim,) for toy points, (C, H, W) for images."""
        return (self.dim,) if self.is_toy else (self.num_channels, self.image_size, self.image_size)


@dataclass(frozen=True)
class ModelSpec(Section):
    """SDE parameters, EMA, prediction type; architecture fields (nf, ch_mult, ...) in `arch`."""
    name: str = "ncsnpp"
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    beta_min: float = 0.1
    beta_max: float = 20.0
    ema_rate: float = 0.9999
    prediction: Optional[str] = None        # None: eps for VP/subVP, score for VE (the model's default)
    dropout: float = 0.1
    embedding_type: str = "fourier"
    arch: Mapping[str, Any] = field(default_factory=dict)   # read by the model's constructor
    # issue 12: improved DDPM's learned reverse variances (2x output channels; discrete VP training)
    learned_variance: bool = False
    # issue 12 (p4edm): EDM's network preconditioning (Karras et al. 2022, eq. 7); see docs/models.md
    preconditioning: str = "none"           # none | edm (the network is EDM's F; continuous time only)
    sigma_data: float = 0.5                 # EDM's sigma_data: the data's std (0.5 for images in [-1, 1])

    def __getattr__(self, name: str) -> Any:  # only called for names that are not fields
        arch = self.__dict__.get("arch", {})
        if name in arch:
            return arch[name]
        raise AttributeError(f"config.model has no field {name!r}")

    def __contains__(self, name: str) -> bool:
        return name in self.__dict__ or name in self.__dict__.get("arch", {})

    def to_dict(self) -> Dict[str, Any]:
        out = super().to_dict()
        return {**{k: v for k, v in out.items() if k != "arch"}, **dict(out["arch"])}

    def _check(self) -> None:
        object.__setattr__(self, "arch", types.MappingProxyType(dict(self.arch)))
        if self.prediction is not None:
            _choice("model", "prediction", self.prediction, PREDICTIONS)
        if not 0.0 <= self.ema_rate < 1.0:
            raise ValueError(f"config.model.ema_rate must be in [0, 1), got {self.ema_rate!r}")
        _positive("model", num_scales=self.num_scales)
        _bools("model", self, "learned_variance")
        _choice("model", "preconditioning", self.preconditioning, PRECONDITIONINGS)  # issue 12 (p4edm)
        if isinstance(self.sigma_data, bool) or not isinstance(self.sigma_data, (int, float)) or not self.sigma_data > 0:
            raise ValueError(f"config.model.sigma_data must be > 0 (the data's std; 0.5 for images in [-1, 1]), "
                             f"got {self.sigma_data!r}")


@dataclass(frozen=True)
class TrainingSpec(Section):
    sde: str = "vpsde"
    continuous: bool = True
    reduce_mean: bool = False
    likelihood_weighting: bool = False
    batch_size: int = 128                   # global: split evenly across torchrun processes
    n_iters: int = 1300001
    log_freq: int = 50
    eval_freq: int = 100
    snapshot_freq: int = 50000
    snapshot_freq_for_preemption: int = 10000
    snapshot_sampling: bool = True
    precision: str = "auto"                 # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    channels_last: bool = False
    # issue 12: the objective (losses.get_step_fn); see docs/likelihood.md
    weighting: Optional[str] = None         # eps | likelihood | x0 | v | edm; None: eps (likelihood if likelihood_weighting)
    time_sampling: str = "uniform"          # uniform | importance (log sigma^2 uniform) | lognormal (EDM)
    hybrid_lambda: float = 1e-3             # improved DDPM's L_simple + lambda L_vlb (model.learned_variance)
    # issue 11: probability of replacing a label by the null class (classifier-free training)
    label_dropout: float = 0.0
    # issue 12 (p4edm): EDM's P_mean, P_std of time_sampling='lognormal' (ln sigma ~ N(P_mean, P_std^2))
    lognormal_mean: float = -1.2
    lognormal_std: float = 1.2

    def _check(self) -> None:
        object.__setattr__(self, "sde", str(self.sde).lower())
        if isinstance(self.label_dropout, bool) or not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"config.training.label_dropout={self.label_dropout!r} must lie in [0, 1) "
                             f"(0.1-0.2 for classifier-free guidance)")
        object.__setattr__(self, "precision", str(self.precision).lower())
        if self.sde not in SDE_NAMES:
            raise ValueError(f"unknown training.sde {self.sde!r}; choose one of {SDE_NAMES}")
        _choice("training", "precision", self.precision, PRECISIONS)
        _bools("training", self, "continuous", "reduce_mean", "likelihood_weighting", "snapshot_sampling",
               "compile", "channels_last")
        if self.weighting is not None:
            _choice("training", "weighting", self.weighting, WEIGHTINGS)
        _choice("training", "time_sampling", self.time_sampling, TIME_SAMPLINGS)
        if not self.hybrid_lambda >= 0:
            raise ValueError(f"config.training.hybrid_lambda must be >= 0, got {self.hybrid_lambda!r}")
        if isinstance(self.lognormal_std, bool) or not self.lognormal_std > 0:  # issue 12 (p4edm)
            raise ValueError(f"config.training.lognormal_std must be > 0 (EDM's P_std: 1.2), got {self.lognormal_std!r}")
        _positive("training", batch_size=self.batch_size, n_iters=self.n_iters, log_freq=self.log_freq,
                  eval_freq=self.eval_freq, snapshot_freq=self.snapshot_freq,
                  snapshot_freq_for_preemption=self.snapshot_freq_for_preemption)

    @property
    def loss_kind(self) -> str:
        """'dsm' for continuous training; discrete: 'smld' for VE (NCSN), 'ddpm' for VP/subVP."""
        if self.continuous:
            return "dsm"
        return "smld" if self.sde == "vesde" else "ddpm"


@dataclass(frozen=True)
class OptimSpec(Section):
    optimizer: str = "Adam"
    lr: float = 2e-4
    beta1: float = 0.9
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 5000
    grad_clip: float = 1.0

    def _check(self) -> None:
        _choice("optim", "optimizer", self.optimizer, ("Adam", "AdamW"))


@dataclass(frozen=True)
class ScheduleOptimizeSpec(Section):
    """sampling.optimize (issue 13): how `--mode schedule` optimizes the schedule stored next to the
    checkpoint (sampling.optimize_schedule; `sampling.schedule="optimized"` then loads it)."""
    steps: Optional[int] = None             # levels to optimize; None: the sampler's `steps`
    batch: int = 256                        # prior draws the error is averaged over
    sweeps: int = 2                         # coordinate-descent passes over the interior levels
    ref_steps: int = 200                    # DPM-Solver++(3M) levels of the reference solution

    def _check(self) -> None:
        _positive("sampling.optimize", batch=self.batch, sweeps=self.sweeps, ref_steps=self.ref_steps)
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 3):
            raise ValueError(f"config.sampling.optimize.steps={self.steps!r} must be an integer >= 3 "
                             f"(or None: the sampler's steps)")


@dataclass(frozen=True)
class SamplingSpec(Section):
    """The sampler and the options it is given; options left out take the sampler's own defaults.

    `others` keeps the config file's options for other samplers (e.g. pc's predictor in a ddim
    config): they apply when the method is switched (`with_options`, the command line)."""
    method: str = "pc"
    options: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = False                  # a progress bar over the sampler's steps (rank 0)
    others: Mapping[str, Any] = field(default_factory=dict)
    # issue 13: the stored optimized schedule (--mode schedule; sampling.schedule="optimized")
    optimize: ScheduleOptimizeSpec = field(default_factory=ScheduleOptimizeSpec)
    # issue 11: conditional sampling (not sampler options: score wrappers, score_sde/pipeline/conditional.py)
    label: Optional[int] = None             # a class; None on a conditional model: a grid of every class
    guidance: float = 0.0                   # classifier-free w, or the classifier-guidance scale
    classifier: Optional[str] = None        # a workdir trained by --mode train_classifier: classifier guidance

    def _check(self) -> None:
        if isinstance(self.optimize, Mapping):
            object.__setattr__(self, "optimize", _build(ScheduleOptimizeSpec, "sampling.optimize",
                                                        dict(self.optimize)))
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))
        object.__setattr__(self, "others", types.MappingProxyType(dict(self.others)))
        check_sampler_options(self.method, self.options)
        if self.label is not None and (isinstance(self.label, bool) or not isinstance(self.label, int)
                                       or self.label < 0):
            raise ValueError(f"config.sampling.label must be a class index >= 0 or None, got {self.label!r}")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) or self.guidance < 0:
            raise ValueError(f"config.sampling.guidance must be a number >= 0, got {self.guidance!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"method": self.method, **dict(self.others), **dict(self.options), "progress": self.progress,
                "optimize": self.optimize.to_dict(), **{k: getattr(self, k) for k in CONDITIONING_FIELDS}}

    def with_options(self, method: Optional[str] = None, **options: Any) -> "SamplingSpec":
        """This sampling with another method and/or explicit options (None: the sampler's default)."""
        return resolve_sampling(self.to_dict(), {**({"method": method} if method else {}), **options}, self.progress)


LIKELIHOOD_BACKENDS = ("scipy", "torchdiffeq")
VLB_VARIANCES = ("beta", "beta_tilde", "learned")


@dataclass(frozen=True)
class LikelihoodSpec(Section):
    """eval.likelihood (issue 12): the probability-flow ODE protocol of bits/dim (likelihood.get_likelihood_fn).

    eps = 1e-5 is score_sde_pytorch's (its published bits/dim); one Rademacher probe is its trace."""
    eps: float = 1e-5                       # the ODE starts at t = eps (sde.sampling_eps is 1e-3 for VP)
    trace: str = "hutchinson-rademacher"    # or exact, hutchinson-gaussian, hutchinson-orthogonal
    num_probes: int = 1
    rtol: float = 1e-5
    atol: float = 1e-5
    backend: str = "scipy"                  # scipy or torchdiffeq
    method: Optional[str] = None            # None: RK45 (scipy) / dopri5 (torchdiffeq); an adaptive solver
    # session 4: None integrates the divergence along the ODE; K: the two-pass quadrature at K log-sigma
    # midpoints with fresh probes per node (likelihood.quadrature_nll, docs/likelihood.md)
    nodes: Optional[int] = None

    def _check(self) -> None:
        if self.nodes is not None:
            _positive("eval.likelihood", nodes=self.nodes)
        _choice("eval.likelihood", "trace", self.trace, LIKELIHOOD_TRACES)
        _choice("eval.likelihood", "backend", self.backend, LIKELIHOOD_BACKENDS)
        if not (isinstance(self.eps, float) and 0.0 < self.eps < 1.0):
            raise ValueError(f"config.eval.likelihood.eps must be in (0, 1) (1e-5: the paper's protocol), "
                             f"got {self.eps!r}")
        _positive("eval.likelihood", num_probes=self.num_probes)
        for name in ("rtol", "atol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"config.eval.likelihood.{name} must be > 0, got {getattr(self, name)!r}")

    def options(self) -> Dict[str, Any]:
        """get_likelihood_fn's keyword arguments."""
        method = self.method or ("RK45" if self.backend == "scipy" else "dopri5")
        return {**self.to_dict(), "method": method}


# issue 11: regular SamplingSpec fields that are not sampler options
CONDITIONING_FIELDS = ("label", "guidance", "classifier")
CONDITIONING_TYPES = {"label": int, "guidance": float, "classifier": str}


@dataclass(frozen=True)
class InpaintSpec(Section):
    """issue 11: --mode inpaint / colorize on held-out data (score_sde.conditioning.inpaint / colorize)."""
    method: str = "smc"                     # smc (the exact-in-the-limit default) | pc (score_sde_pytorch's)
    particles: int = 16                     # smc particles per image
    steps: Optional[int] = None             # reverse steps; None: the SDE's num_scales
    mask: str = "half"                      # half | box | random (score_sde.conditioning.make_mask)
    mask_fraction: float = 0.5              # box: area restored; random: fraction observed
    num_images: int = 16

    def _check(self) -> None:
        _choice("inpaint", "method", self.method, ("smc", "pc"))
        _choice("inpaint", "mask", self.mask, ("half", "box", "random"))
        _positive("inpaint", particles=self.particles, num_images=self.num_images)
        if self.steps is not None:
            _positive("inpaint", steps=self.steps)
        if not 0.0 < self.mask_fraction < 1.0:
            raise ValueError(f"config.inpaint.mask_fraction must lie in (0, 1), got {self.mask_fraction!r}")


@dataclass(frozen=True)
class ClassifierSpec(Section):
    """issue 11: the noise-conditional classifier of --mode train_classifier (score_sde/models/classifier.py)."""
    arch: str = "auto"                      # auto (mlp for toys, wideresnet for images) | mlp | wideresnet
    depth: int = 10                         # wideresnet: 6k + 4 (28 in the paper)
    widen_factor: int = 2                   # wideresnet (10 in the paper)
    hidden: int = 256                       # mlp: width of its two hidden layers
    lr: float = 1e-3
    batch_size: int = 128
    n_iters: int = 2000
    log_freq: int = 100
    eps: float = 1e-5                       # smallest training time

    def _check(self) -> None:
        _choice("classifier", "arch", self.arch, ("auto", "mlp", "wideresnet"))
        _positive("classifier", depth=self.depth, widen_factor=self.widen_factor, hidden=self.hidden,
                  batch_size=self.batch_size, n_iters=self.n_iters, log_freq=self.log_freq)
        if (self.depth - 4) % 6 or self.depth < 10:
            raise ValueError(f"config.classifier.depth={self.depth} must be 6k + 4 >= 10 (10, 16, 22, 28)")
        if not self.lr > 0 or not 0 < self.eps < 1:
            raise ValueError(f"config.classifier.lr must be > 0 and eps in (0, 1), got {self.lr!r}, {self.eps!r}")


@dataclass(frozen=True)
class EvalSpec(Section):
    begin_ckpt: Optional[int] = None        # training steps; both None: the newest checkpoint only
    end_ckpt: Optional[int] = None
    batch_size: int = 1024
    enable_loss: bool = True
    enable_bpd: bool = False
    enable_sampling: bool = False
    num_samples: int = 50000
    bpd_dataset: str = "test"
    bpd_trace: Optional[str] = None         # deprecated alias of eval.likelihood.trace
    bpd_num_batches: int = 0                # 0: the whole split
    reference_split: str = "test"           # samples are compared with this split (SW2, FID)
    num_reference: int = 10000
    enable_fid: bool = False
    inception_path: Optional[str] = None
    import_ckpt: Optional[str] = None       # a score_sde_pytorch checkpoint to evaluate
    progress: bool = True                   # rank-0 progress bars over checkpoints, batches, samples
    # issue 12: likelihood protocol, DDPM variational bound, repeated bits/dim passes
    likelihood: LikelihoodSpec = field(default_factory=LikelihoodSpec)
    enable_vlb: bool = False                # DDPM bound next to the ODE bits/dim (discrete VP models)
    vlb_variance: Optional[str] = None      # None: learned with model.learned_variance, else beta (Ho et al.)
    bpd_num_repeats: int = 1                # passes over the bits/dim data (the paper averages 5)

    # issue 14: the FID protocol (reference statistics computed once per data set; IS and KID next to FID)
    fid_stats: Optional[str] = None         # reference Inception features (.npz, cifar10_stats.npz layout):
                                            # read when present, else computed once and written there
    enable_is: bool = False                 # Inception Score of the samples (needs eval.inception_path)
    enable_kid: bool = False                # Kernel Inception Distance to the reference
    fid_rounding: str = "round"             # samples -> uint8 before Inception: round | floor (score_sde_pytorch)
    # session 4 (issue 12): K dequantization draws per item combined into the importance-weighted bound
    # -log (1/K sum_j p(k + u_j)) (likelihood.importance_weighted_nll); 1: the plain uniform bound
    bpd_dequant_samples: int = 1
    # session 5 (issue 12): how the ODE's density becomes a code length of discrete data
    # (score_sde.dequantization): uniform (score_sde_pytorch's protocol) or truncated_normal (Zheng et al.
    # 2023: the forward noise at dequantization_sigma, cut to the bin; for models trained undequantized)
    dequantization: str = "uniform"
    dequantization_sigma: Optional[float] = None   # model-space sigma; None: a quarter of the bin width

    def _check(self) -> None:
        _positive("eval", batch_size=self.batch_size, num_samples=self.num_samples,
                  bpd_num_repeats=self.bpd_num_repeats, bpd_dequant_samples=self.bpd_dequant_samples)
        if self.bpd_dequant_samples > 1 and self.likelihood.trace != "exact" and self.likelihood.nodes is None:
            raise ValueError("config.eval.bpd_dequant_samples > 1 needs a low-noise trace: the joint ODE's "
                             "Hutchinson noise biases the importance-weighted bound; set "
                             "eval.likelihood.trace='exact' or eval.likelihood.nodes (e.g. 32 with num_probes=8)")
        _bools("eval", self, "enable_is", "enable_kid")
        _choice("eval", "dequantization", self.dequantization, DEQUANTIZERS)
        if self.dequantization_sigma is not None:      # read by truncated_normal only
            if isinstance(self.dequantization_sigma, bool) or not (
                    isinstance(self.dequantization_sigma, (int, float)) and self.dequantization_sigma > 0):
                raise ValueError(f"config.eval.dequantization_sigma must be a positive float (model-space noise, "
                                 f"e.g. 0.05 for 17-level digits), got {self.dequantization_sigma!r}")
        _choice("eval", "fid_rounding", self.fid_rounding, ("round", "floor"))
        if self.fid_stats is not None and not str(self.fid_stats).endswith(".npz"):
            raise ValueError(f"config.eval.fid_stats={self.fid_stats!r} must be an .npz path (or None)")
        _choice("eval", "bpd_dataset", self.bpd_dataset, SPLITS + ("eval",))
        self._alias_bpd_trace()
        if self.vlb_variance is not None:
            _choice("eval", "vlb_variance", self.vlb_variance, VLB_VARIANCES)
        _bools("eval", self, "enable_vlb")
        _choice("eval", "reference_split", self.reference_split, SPLITS)
        if isinstance(self.num_reference, bool) or not isinstance(self.num_reference, int) or self.num_reference < 2:
            raise ValueError(f"eval.num_reference={self.num_reference!r} must be an integer >= 2 "
                             f"(FID needs a covariance)")
        if not isinstance(self.bpd_num_batches, int) or self.bpd_num_batches < 0:
            raise ValueError(f"config.eval.bpd_num_batches must be an integer >= 0, got {self.bpd_num_batches!r}")
        for name in ("begin_ckpt", "end_ckpt"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"config.eval.{name} must be a training step >= 0 or None, got {v!r}")
        _bools("eval", self, "enable_loss", "enable_bpd", "enable_sampling", "enable_fid", "progress")

    def _alias_bpd_trace(self) -> None:
        """eval.bpd_trace (old configs) sets eval.likelihood.trace, then reads None."""
        if self.bpd_trace is None:
            return
        _choice("eval", "bpd_trace", self.bpd_trace, LIKELIHOOD_TRACES)
        default = LikelihoodSpec.trace
        if self.likelihood.trace not in (default, self.bpd_trace):
            raise ValueError(f"config.eval.bpd_trace={self.bpd_trace!r} contradicts config.eval.likelihood.trace="
                             f"{self.likelihood.trace!r}; set only eval.likelihood.trace")
        object.__setattr__(self, "likelihood", dataclasses.replace(self.likelihood, trace=self.bpd_trace))
        object.__setattr__(self, "bpd_trace", None)

    @property
    def steps_range(self) -> Optional[Tuple[int, Optional[int]]]:
        """(begin, end) in training steps, or None when no range is given (evaluate the newest)."""
        if self.begin_ckpt is None and self.end_ckpt is None:
            return None
        return (self.begin_ckpt or 0, self.end_ckpt)


_SECTIONS = {"data": DataSpec, "model": ModelSpec, "training": TrainingSpec, "optim": OptimSpec,
             "sampling": SamplingSpec, "eval": EvalSpec,
             "inpaint": InpaintSpec, "classifier": ClassifierSpec}  # issue 11


@dataclass(frozen=True)
class Spec(Section):
    """The whole experiment: top-level seed/device plus one frozen section per config section."""
    seed: int = 42
    device: str = "auto"                    # auto | cpu | cuda
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    inpaint: InpaintSpec = field(default_factory=InpaintSpec)           # issue 11
    classifier: ClassifierSpec = field(default_factory=ClassifierSpec)  # issue 11

    def _check(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"config.seed must be an integer, got {self.seed!r}")
        if self.device not in DEVICES:
            raise ValueError(f"config.device={self.device!r}; choose one of {DEVICES}")
        check_likelihood_fields(self)  # issue 12

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.data.shape

    @property
    def prediction(self) -> str:
        """What the network predicts: model.prediction, else eps for VP/subVP and score for VE."""
        return self.model.prediction or ("score" if self.training.sde == "vesde" else "eps")

    def replace(self, **sections: Any) -> "Spec":
        """A copy with whole sections or sections' fields replaced: replace(data={"centered": True})."""
        changes = {}
        for name, value in sections.items():
            current = getattr(self, name)
            changes[name] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return {"seed": self.seed, "device": self.device,
                **{name: getattr(self, name).to_dict() for name in _SECTIONS}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_json_default, sort_keys=True)

    @classmethod
    def from_config(cls, config: Any, sampling_overrides: Optional[Mapping[str, Any]] = None,
                    overrides: Optional[Mapping[str, str]] = None) -> "Spec":
        """The spec of a ConfigDict / nested dict / JSON string (a checkpoint's "config").

        sampling_overrides (values) and overrides ({"section.field": command-line text}) are what the
        user set explicitly: they win; "None" means the default; a sampling option the chosen sampler
        does not take is an error (resolve_sampling)."""
        if isinstance(config, Spec):
            config = config.to_dict()
        if isinstance(config, (str, bytes)):
            config = json.loads(config)
        _check_top_level(config)
        top = {k: _read(config, k) for k in ("seed", "device") if _read(config, k) is not None}
        raws = {name: _section_items(config, name) for name in _SECTIONS}
        explicit = dict(sampling_overrides or {})
        for path, text in (overrides or {}).items():
            section, _, name = path.partition(".")
            if not name:
                top[section] = parse_field("", section, text)
                if top[section] is None:
                    del top[section]
            elif section == "sampling" and name.startswith("optimize."):
                raws["sampling"].setdefault("optimize", {})[name[len("optimize."):]] = \
                    parse_field("sampling", name, text)
            elif section == "sampling":
                explicit[name] = parse_option(name, text)
            else:
                target, *inner, leaf = path.split(".")
                node = raws[target]
                for part in inner:  # a nested section (e.g. eval.likelihood.rtol)
                    node = node.setdefault(part, {})
                node[leaf] = parse_field(section, name, text)
        sections: Dict[str, Any] = {}
        for name, klass in _SECTIONS.items():
            raw = raws[name]
            if name == "sampling":
                sections[name] = resolve_sampling(raw, explicit, raw.get("progress"))
            elif name == "model":
                known = {f.name for f in dataclasses.fields(ModelSpec)} - {"arch"}
                fields = _build(ModelSpec, name, {k: v for k, v in raw.items() if k in known}, build=False)
                sections[name] = ModelSpec(**fields, arch={k: v for k, v in raw.items() if k not in known})
            else:
                sections[name] = _build(klass, name, raw)
        return cls(**top, **sections)


def _check_top_level(config: Any) -> None:
    """An unknown top-level key or section is an error naming the valid ones (sections check their
    own fields in `_build`; model architecture fields go to `ModelSpec.arch`, read by the model)."""
    keys = config.keys() if hasattr(config, "keys") else ()
    valid = ("seed", "device", *_SECTIONS)
    unknown = sorted(str(k) for k in keys if str(k) not in valid)
    if unknown:
        raise ValueError(f"config has unknown top-level key(s) {unknown}; valid keys: {sorted(valid)}")


# ----------------------------------------------------------------------------------------------
# Issue 12: the training objective and the DDPM bound across sections
# ----------------------------------------------------------------------------------------------
def check_likelihood_fields(spec: "Spec") -> None:
    """Combinations of the objective / bound fields that cannot work: one-line errors with the fix."""
    tr, discrete_vp = spec.training, not spec.training.continuous and spec.training.sde == "vpsde"
    weighting = tr.weighting or ("likelihood" if tr.likelihood_weighting else "eps")
    if tr.likelihood_weighting and weighting != "likelihood":
        raise ValueError(f"config.training.likelihood_weighting=True contradicts training.weighting={tr.weighting!r}; "
                         f"set only one")
    if not tr.continuous and (weighting == "likelihood" or tr.time_sampling != "uniform"):
        raise ValueError(f"training.weighting={weighting!r} / training.time_sampling={tr.time_sampling!r} need "
                         f"continuous time; set training.continuous=True (or weighting eps and uniform time)")
    if spec.model.learned_variance and not discrete_vp:
        raise ValueError("model.learned_variance trains reverse variances of the discrete VP chain; set "
                         "training.sde='vpsde' and training.continuous=False, or model.learned_variance=False")
    if spec.eval.enable_vlb and not discrete_vp:
        raise ValueError("eval.enable_vlb computes the DDPM bound of a discrete VP model; set "
                         "training.sde='vpsde' and training.continuous=False, or eval.enable_vlb=False")
    if spec.eval.vlb_variance == "learned" and not spec.model.learned_variance:
        raise ValueError("eval.vlb_variance='learned' needs a network with learned variances; set "
                         "model.learned_variance=True or eval.vlb_variance='beta'")
    if spec.model.preconditioning == "edm":
        check_preconditioning(spec)
    if spec.eval.dequantization != "uniform" and not spec.data.is_discrete:
        raise ValueError(f"eval.dequantization={spec.eval.dequantization!r} dequantizes discrete data, and "
                         f"{spec.data.dataset!r} has no data.num_levels; set eval.dequantization='uniform'")


def check_preconditioning(spec: "Spec") -> None:
    """EDM's preconditioning (issue 12, p4edm): what the wrapped network F must be for D to be right."""
    m = spec.model
    if not spec.training.continuous:
        raise ValueError("model.preconditioning='edm' needs continuous time (sigma between the discrete levels); "
                         "set training.continuous=True or model.preconditioning='none'")
    if m.prediction is not None:
        raise ValueError(f"model.preconditioning='edm' makes the network predict EDM's F, not "
                         f"model.prediction={m.prediction!r}; unset model.prediction")
    if m.get("scale_by_sigma", False):
        raise ValueError("model.scale_by_sigma divides the output by the noise label, which EDM's c_out "
                         "replaces; set model.scale_by_sigma=False with model.preconditioning='edm'")
    if not spec.data.is_toy and not spec.data.centered:
        raise ValueError("model.preconditioning='edm' assumes zero-mean data (the networks shift uncentered "
                         "inputs by 2x - 1); set data.centered=True")


def step_options(spec: "Spec") -> Dict[str, Any]:
    """losses.get_step_fn's objective keyword arguments (kind, weighting, time sampling, hybrid loss)."""
    tr, data = spec.training, spec.data
    out: Dict[str, Any] = dict(kind=tr.loss_kind, continuous=tr.continuous, reduce_mean=tr.reduce_mean,
                               likelihood_weighting=tr.likelihood_weighting, prediction=spec.model.prediction,
                               weighting=tr.weighting, time_sampling=tr.time_sampling,
                               sigma_data=float(spec.model.sigma_data), p_mean=float(tr.lognormal_mean),
                               p_std=float(tr.lognormal_std))
    if spec.model.preconditioning == "edm" and tr.weighting is None and not tr.likelihood_weighting:
        out["weighting"] = "edm"  # EDM's lambda(sigma): F's target at unit weight (issue 12, p4edm)
    if spec.model.learned_variance:
        out.update(learned_variance=True, vlb_weight=tr.hybrid_lambda, **data.quantization)
    return out


def _field_hint(path: str) -> Any:
    """The type hint of the spec field at a dotted path ("eval.batch_size", "seed"), or None."""
    klass: Any = Spec
    for i, part in enumerate(path.split(".")):
        if not (isinstance(klass, type) and issubclass(klass, Section)):
            return None
        names = {f.name for f in dataclasses.fields(klass)} - {"arch", "options", "others"}
        if part not in names:
            return None
        klass = typing.get_type_hints(klass)[part]
    return klass


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Section)


def is_spec_field(path: str) -> bool:
    """True for dotted paths of spec fields ("seed", "eval.batch_size", nested sections' fields) and
    for sampling.<any sampler option>, sampling.method and sampling.progress."""
    section, _, name = path.partition(".")
    if section == "sampling" and name and not name.startswith("optimize."):
        return name in sampler_option_types() or name in ("method", "progress") + CONDITIONING_FIELDS
    hint = _field_hint(path)
    return hint is not None and not _is_section(hint)


def parse_field(section: str, name: str, text: str) -> Any:
    """Command-line text for the (non-sampling) spec field `section.name` -> a value of its type;
    'None' -> None (the default)."""
    path = ".".join(p for p in (section, name) if p)
    base = _base_type(_field_hint(path))
    if text.strip() == "None":
        return None
    if base is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--config.{path} takes True or False, got {text!r}")
        return text.lower() in ("true", "1")
    try:
        return base(text) if base in (int, float, str) else text
    except ValueError:
        raise ValueError(f"--config.{path}={text!r} is not {_KIND[base]}") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, types.MappingProxyType)):
        return list(value) if isinstance(value, tuple) else dict(value)
    if isinstance(value, float) and math.isinf(value):
        return str(value)
    return str(value)


def _read(config: Any, name: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(name)
    return config.get(name, None) if hasattr(config, "get") else getattr(config, name, None)


def _section_items(config: Any, name: str) -> Dict[str, Any]:
    """A config section as a plain dict (every field read once, here)."""
    section = _read(config, name)
    if section is None:
        return {}
    if not isinstance(section, Mapping) and not hasattr(section, "keys"):  # an attribute object
        section = vars(section)
    return {str(k): _plain(section[k] if not isinstance(section, Mapping) else section.get(k))
            for k in list(section.keys())}


def _plain(value: Any) -> Any:
    """Lists -> tuples; nested config sections -> plain dicts."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "get") and not isinstance(value, Section)):
        return {str(k): _plain(value[k]) for k in list(value.keys())}
    return value


def _build(klass: type, section: str, raw: Dict[str, Any], build: bool = True) -> Any:
    """klass(**raw) with None meaning "the default", unknown fields an error, values coerced to the types
    (build=False: the coerced keyword arguments)."""
    fields = {f.name: f for f in dataclasses.fields(klass)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"config.{section} has unknown field(s) {unknown}; valid fields: {sorted(fields)}")
    hints = typing.get_type_hints(klass)
    values = {k: _build(hints[k], f"{section}.{k}", v) if _is_section(hints[k]) and isinstance(v, Mapping)
              else _coerce(section, k, v, hints[k]) for k, v in raw.items() if v is not None}
    return klass(**values) if build else values


def _coerce(section: str, name: str, value: Any, hint: Any) -> Any:
    """int/float/str fields accept values of the obvious kind (1 for 1.0, numpy ints); bools stay strict."""
    base = _base_type(hint)
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and not isinstance(value, bool) and hasattr(value, "__index__"):
        return int(value)
    if base is str and not isinstance(value, str):
        raise ValueError(f"config.{section}.{name} must be a string, got {value!r}")
    return value


def _base_type(hint: Any) -> Any:
    """int for Optional[int] / 'Optional[int]'; the type of the annotation otherwise."""
    if isinstance(hint, str):
        for name, t in (("bool", bool), ("int", int), ("float", float), ("str", str)):
            if hint.replace("Optional[", "").rstrip("]") == name:
                return t
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return _base_type(args[0]) if args else hint


# ----------------------------------------------------------------------------------------------
# Sampler options: derived from the registry, never listed by hand
# ----------------------------------------------------------------------------------------------
def _sampler_params(method: str):
    from .. import sampling
    if method not in sampling.SAMPLERS:
        raise ValueError(f"config.sampling.method={method!r} is not a sampler; choose one of "
                         f"{sorted(sampling.SAMPLERS)}")
    params = inspect.signature(sampling.SAMPLERS[method]).parameters.values()
    return [p for p in params if p.kind is p.KEYWORD_ONLY and p.name not in RUNTIME_OPTIONS]


def sampler_option_names(method: str) -> Tuple[str, ...]:
    """The options `method` takes (its factory's keyword-only arguments, runtime ones excluded)."""
    return tuple(p.name for p in _sampler_params(method))


def sampler_defaults(method: str) -> Dict[str, Any]:
    """`method`'s own default of every option (what a report records for options left unset)."""
    return {p.name: p.default for p in _sampler_params(method) if p.default is not inspect.Parameter.empty}


def sampler_option_types() -> Dict[str, type]:
    """Every option of every registered sampler -> its value type (bool, int, float or str).

    The type is the annotation's (Optional[...] unwrapped), else the default's; these are the
    config.sampling fields settable from the command line."""
    from .. import sampling
    out: Dict[str, type] = {}
    for method in sorted(sampling.SAMPLERS):
        for p in _sampler_params(method):
            t = _base_type(p.annotation) if p.annotation is not inspect.Parameter.empty else None
            if t not in (bool, int, float, str):
                t = type(p.default) if isinstance(p.default, (bool, int, float, str)) else str
            out.setdefault(p.name, t)
    return out


_KIND = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}


def parse_option(name: str, text: str) -> Any:
    """A command-line string for sampling field `name` -> its value ('None': the sampler's default)."""
    types_ = {**sampler_option_types(), "method": str, "progress": bool, **CONDITIONING_TYPES}
    if name not in types_:
        raise ValueError(f"unknown sampling option {name!r}; the samplers take {sorted(types_)}")
    if text.strip() == "None":
        return None
    t = types_[name]
    if t is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--config.sampling.{name} takes True or False, got {text!r}")
        return text.lower() in ("true", "1")
    try:
        return t(text)
    except ValueError:
        raise ValueError(f"--config.sampling.{name}={text!r} is not {_KIND[t]}") from None


def check_sampler_options(method: str, options: Mapping[str, Any]) -> None:
    """An option `method` does not take is an error naming the sampler and its options."""
    valid = sampler_option_names(method)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"sampler {method!r} does not take option(s) {unknown}; its options are {list(valid)} "
                         f"(set a field to None to use the sampler's default)")


def resolve_sampling(file: Mapping[str, Any], explicit: Mapping[str, Any], progress: Any = None) -> SamplingSpec:
    """The sampler and its options from the config file's sampling section and explicit overrides.

    The file's options that its own method takes belong to that method: they are dropped when an
    override switches the method. Its other options (e.g. pc's predictor in a ddim config) apply to
    any sampler that takes them and are ignored otherwise. Explicit options win; None means "the
    sampler's default"; an explicit option the chosen sampler does not take is an error."""
    all_options = set(sampler_option_types())
    file_method = str(file.get("method") or "pc")
    method = str(explicit.get("method") or file_method)
    if explicit.get("progress") is not None:
        progress = explicit["progress"]
    file = dict(file)
    optimize = file.pop("optimize", None) or {}
    conditioning = {k: explicit[k] if k in explicit else file.get(k) for k in CONDITIONING_FIELDS}
    stray = sorted(set(file) - all_options - {"method", "progress"} - set(CONDITIONING_FIELDS))
    if stray:
        raise ValueError(f"config.sampling has field(s) {stray} that no sampler takes; sampler options are "
                         f"{sorted(all_options)}")
    valid = set(sampler_option_names(method))
    own = set(sampler_option_names(file_method)) if method != file_method else set()
    options = {k: v for k, v in file.items() if k in valid and k not in own and v is not None}
    others = {k: v for k, v in file.items() if k in all_options - valid - own and v is not None}
    given = {k: v for k, v in explicit.items() if k not in ("method", "progress") + CONDITIONING_FIELDS}
    check_sampler_options(method, given)
    options.update({k: v for k, v in given.items() if v is not None})
    for k in [k for k, v in given.items() if v is None]:
        options.pop(k, None)
    conditioning = {k: _coerce("sampling", k, v, CONDITIONING_TYPES[k]) for k, v in conditioning.items()
                    if v is not None}
    return SamplingSpec(method=method, options=options, progress=bool(progress or False), others=others,
                        optimize=optimize if isinstance(optimize, Section) else dict(optimize), **conditioning)


def as_spec(config: Any) -> Spec:
    """A Spec as is; anything else (ConfigDict, dict, JSON) through Spec.from_config."""
    return config if isinstance(config, Spec) else Spec.from_config(config)
